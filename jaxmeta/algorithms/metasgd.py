"""Meta-SGD (Li et al. 2017): a learned inner learning rate per parameter."""

from typing import Callable

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import adapted_query_loss
from jaxmeta.algorithms.base import check_inner_lr
from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import gradient_task_update
from jaxmeta.algorithms.base import learned_inner_learner
from jaxmeta.algorithms.base import learned_sgd
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import model_losses
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
  """Meta-SGD (Li, Zhou, Chen & Li 2017): MAML whose inner step is `theta' =
  theta - alpha * grad L_s(theta)`, the rates `alpha` (shaped like `theta`,
  from `inner_lr`, the same at every step) learned with the initialisation.

  Args:
    model: the `Model`.
    make_loss: `make_loss(apply) -> loss_fn`.
    inner_lr: the initial value of every learned rate.
    num_inner_steps: inner steps during meta-training.
    first_order: drop the second-order terms (the rates still get their
      gradient, through the last update).

  Returns:
    A `MetaLearner` named 'meta_sgd' over `{'model': theta, 'inner': {'lr':
    alpha}}`.

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

  meta_loss = adapted_query_loss(
    loss_fn,
    support_loss,
    num_inner_steps,
    optimizer,
    first_order,
    params_of=lambda meta: meta['model'],
  )
  return learned_inner_learner(
    'meta_sgd',
    model,
    init,
    loss_fn,
    support_loss,
    optimizer,
    gradient_task_update(meta_loss),
  )
