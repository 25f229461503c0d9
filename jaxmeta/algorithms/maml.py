"""MAML (Finn et al. 2017) and first-order MAML."""

from typing import Callable

import optax

from jaxmeta.algorithms.base import adapted_query_loss
from jaxmeta.algorithms.base import check_inner_lr
from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import gradient_adaptation
from jaxmeta.algorithms.base import gradient_task_update
from jaxmeta.algorithms.base import learner_of_model
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import model_losses
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

  The meta-objective is the query loss `L_q(theta')` after `num_inner_steps`
  steps `theta' = theta - a * grad L_s`; `jax.grad` differentiates through
  the inner loop, so the second-order terms are exact. `first_order=True`
  drops them: `grad L_q(theta')`.

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
    Deep Networks", Algorithm 2 and Section 5.2.
  """
  num_inner_steps = check_num_steps(num_inner_steps)
  check_inner_lr(inner_lr)
  loss_fn, support_loss = model_losses(make_loss, model)
  optimizer = optax.sgd(inner_lr)
  adapt, evaluate = gradient_adaptation(loss_fn, optimizer, support_loss)
  meta_loss = adapted_query_loss(
    loss_fn, support_loss, num_inner_steps, lambda _: optimizer, first_order
  )
  name = 'fomaml' if first_order else 'maml'
  task_update = gradient_task_update(meta_loss)
  return learner_of_model(name, model, adapt, task_update, evaluate)


def fomaml(
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float,
  num_inner_steps: int,
) -> MetaLearner:
  """First-order MAML: `maml(..., first_order=True)`."""
  return maml(model, make_loss, inner_lr, num_inner_steps, first_order=True)
