"""Meta-SGD (Li et al. 2017): a learned inner learning rate per parameter."""

from typing import Callable

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import check_inner_lr
from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import gradient_adaptation
from jaxmeta.algorithms.base import inner_loop
from jaxmeta.algorithms.base import learned_sgd
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import model_losses
from jaxmeta.algorithms.base import split_task_key
from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.models.base import Model


def meta_sgd(
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float,
  num_inner_steps: int,
  *,
  first_order: bool = False,
) -> MetaLearner:
  """Meta-SGD (Li, Zhou, Chen & Li 2017).

  MAML whose inner step is `theta' = theta - alpha * grad L_s(theta)` with
  `alpha` a vector of the parameters' shape (an elementwise product), learned
  by the outer loop with the initialisation. The meta-parameters are
  `{'model': theta, 'inner': {'lr': alpha}}`, `alpha` starting at `inner_lr`
  everywhere; with every rate equal to `a` the update is MAML's with inner
  learning rate `a`. The same rates are used at every step (the paper takes
  one step).

  Args:
    model: the `Model`.
    make_loss: `make_loss(apply) -> loss_fn`, e.g.
      `jaxmeta.classification_loss`.
    inner_lr: the initial value of every learned rate.
    num_inner_steps: inner steps during meta-training.
    first_order: drop the second-order terms (the rates still get their
      gradient, through the last update).

  Returns:
    A `MetaLearner` named 'meta_sgd'.

  References:
    Li et al. 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot
    Learning", Section 3 and Algorithm 2.
  """
  num_inner_steps = check_num_steps(num_inner_steps)
  check_inner_lr(inner_lr)
  loss_fn, support_loss = model_losses(make_loss, model)

  def init(key):
    params = model.init(key)
    rates = jax.tree.map(lambda v: jnp.full_like(v, inner_lr), params)
    return {'model': params, 'inner': {'lr': rates}}

  def optimizer(meta):
    return learned_sgd(lambda i: meta['inner']['lr'])

  def adaptation(meta):  # `(adapt, evaluate)` of the model's parameters.
    return gradient_adaptation(loss_fn, optimizer(meta), support_loss)

  def adapt(meta, support_x, support_y, num_steps):
    return adaptation(meta)[0](meta['model'], support_x, support_y, num_steps)

  def meta_loss(meta, task, key):
    check_batch(task.query_x, task.query_y, 'query')
    inner_key, query_key = split_task_key(key)
    adapted, _ = inner_loop(
      loss_fn,
      meta['model'],
      task.support_x,
      task.support_y,
      num_inner_steps,
      optimizer(meta),
      first_order=first_order,
      key=inner_key,
      support_loss=support_loss,
    )
    return loss_fn(adapted, task.query_x, task.query_y, key=query_key)

  def task_update(meta, task, key=None, global_step=None):
    del global_step  # No schedule.
    return jax.grad(meta_loss, has_aux=True)(meta, task, key)

  def evaluate(meta, task, num_steps):
    return adaptation(meta)[1](meta['model'], task, num_steps)

  return MetaLearner(
    'meta_sgd',
    init,
    adapt,
    task_update,
    evaluate,
    predict=model.apply,
    model=model,
  )
