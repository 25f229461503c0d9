"""MAML (Finn et al. 2017) and first-order MAML.

`task_update` returns the gradient of the query loss after adaptation w.r.t.
the initialisation, second-order terms included (or, first order, the query
gradient at the adapted parameters).
"""

from typing import Callable

import jax
import optax

from jaxmeta.algorithms.base import check_inner_lr
from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import gradient_adaptation
from jaxmeta.algorithms.base import inner_loop
from jaxmeta.algorithms.base import learner_of_model
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import model_losses
from jaxmeta.algorithms.base import split_task_key
from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.models.base import Model


def maml(
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float,
  num_inner_steps: int,
  *,
  first_order: bool = False,
) -> MetaLearner:
  """MAML (Finn, Abbeel & Levine 2017) and its first-order approximation.

  For one task with support loss `L_s` and query loss `L_q`, the inner loop
  takes `num_inner_steps` gradient steps `theta' = theta - a * grad L_s` and
  the meta-objective is `L_q(theta'(theta))`. Its gradient, with one inner
  step, is `(I - a * H_s(theta)) grad L_q(theta')` (eq. 1 of the paper and the
  chain rule); `jax.grad` differentiates through the whole inner loop, so the
  second-order terms are exact for any number of steps. With
  `first_order=True` the Hessian terms are dropped: the result is
  `grad L_q(theta')`.

  Args:
    model: the `Model`.
    make_loss: `make_loss(apply) -> loss_fn`, e.g.
      `jaxmeta.classification_loss`.
    inner_lr: inner-loop learning rate `a`, > 0.
    num_inner_steps: inner steps during meta-training, a Python int >= 0.
    first_order: drop the second-order terms (first-order MAML).

  Returns:
    A `MetaLearner` named 'maml' (or 'fomaml').

  References:
    Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of
    Deep Networks", Algorithm 2 and Section 5.2 (first-order approximation).
  """
  num_inner_steps = check_num_steps(num_inner_steps)
  check_inner_lr(inner_lr)
  loss_fn, support_loss = model_losses(make_loss, model)
  optimizer = optax.sgd(inner_lr)
  adapt, evaluate = gradient_adaptation(loss_fn, optimizer, support_loss)

  def meta_loss(params, task, key):
    check_batch(task.query_x, task.query_y, 'query')
    inner_key, query_key = split_task_key(key)
    adapted, _ = inner_loop(
      loss_fn,
      params,
      task.support_x,
      task.support_y,
      num_inner_steps,
      optimizer,
      first_order=first_order,
      key=inner_key,
      support_loss=support_loss,
    )
    return loss_fn(adapted, task.query_x, task.query_y, key=query_key)

  def task_update(params, task, key=None, global_step=None):
    del global_step  # No schedule.
    return jax.grad(meta_loss, has_aux=True)(params, task, key)

  return learner_of_model(
    'fomaml' if first_order else 'maml', model, adapt, task_update, evaluate
  )


def fomaml(
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float,
  num_inner_steps: int,
) -> MetaLearner:
  """First-order MAML: `maml(..., first_order=True)`."""
  return maml(model, make_loss, inner_lr, num_inner_steps, first_order=True)
