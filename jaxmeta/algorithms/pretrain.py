"""The conventional baseline of Finn et al. 2017: one model trained on the
pooled data of all tasks, fine-tuned per task at evaluation."""

from typing import Callable

import jax.numpy as jnp
import optax

from jaxmeta.algorithms.base import check_inner_lr
from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import gradient_adaptation
from jaxmeta.algorithms.base import gradient_task_update
from jaxmeta.algorithms.base import learner_of_model
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import model_losses
from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.models.base import Model


def pretrain(
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float,
  num_inner_steps: int = 0,
) -> MetaLearner:
  """The conventional baseline: one model trained on the pooled data of all
  tasks (`task_update`: the gradient on support and query sets together),
  fine-tuned with SGD at `inner_lr` to be scored (Finn et al. 2017, Figure
  2: "pretrained, step=0.01").

  Args:
    model: the `Model`.
    make_loss: `make_loss(apply) -> loss_fn`.
    inner_lr: learning rate of the fine-tuning steps at evaluation.
    num_inner_steps: unused in training (must still be >= 0).

  Returns:
    A `MetaLearner` named 'pretrain'.
  """
  check_num_steps(num_inner_steps)
  check_inner_lr(inner_lr)
  loss_fn, support_loss = model_losses(make_loss, model)
  adapt, evaluate = gradient_adaptation(
    loss_fn, optax.sgd(inner_lr), support_loss
  )

  def pooled_loss(params, task, key):
    check_batch(task.support_x, task.support_y, 'support')
    check_batch(task.query_x, task.query_y, 'query')
    x = jnp.concatenate([task.support_x, task.query_x])
    y = jnp.concatenate([task.support_y, task.query_y])
    return loss_fn(params, x, y, key=key)

  task_update = gradient_task_update(pooled_loss)
  return learner_of_model('pretrain', model, adapt, task_update, evaluate)
