"""The conventional baseline of Finn et al. 2017: one model trained on the
pooled data of all tasks, fine-tuned per task at evaluation."""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxmeta.algorithms.base import _adaptation
from jaxmeta.algorithms.base import _check_inner_lr
from jaxmeta.algorithms.base import _check_num_steps
from jaxmeta.algorithms.base import _loss
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.types import Params, PRNGKey


def pretrain(
  init_fn: Callable[[PRNGKey], Params],
  loss_fn: LossFn,
  inner_lr: float,
  num_inner_steps: int = 0,
) -> MetaLearner:
  """The conventional baseline: train one model on all tasks jointly.

  `task_update` is the plain gradient of the loss on the task's support and
  query sets together, at the current parameters (no adaptation): averaged
  over a meta-batch it is minibatch training on the pooled data of all tasks.
  `adapt`/`evaluate` fine-tune with SGD at `inner_lr`, so the pretrained model
  is scored exactly as the meta-learned ones are (Finn et al. 2017, Figure 2:
  "pretrained, step=0.01").

  Args:
    init_fn: `init(key) -> params` of the model.
    loss_fn: `loss_fn(params, x, y) -> (loss, metrics)`.
    inner_lr: learning rate of the fine-tuning steps at evaluation.
    num_inner_steps: unused in training (must still be >= 0); kept for a
      uniform signature.

  Returns:
    A `MetaLearner` named 'pretrain'.
  """
  _check_num_steps(num_inner_steps)
  _check_inner_lr(inner_lr)
  adapt, evaluate = _adaptation(loss_fn, optax.sgd(inner_lr))

  def task_update(params, task, key=None, global_step=None):
    del global_step  # No schedule.
    check_batch(task.support_x, task.support_y, 'support')
    check_batch(task.query_x, task.query_y, 'query')
    x = jnp.concatenate([task.support_x, task.query_x])
    y = jnp.concatenate([task.support_y, task.query_y])
    grad, metrics = jax.grad(_loss, argnums=1, has_aux=True)(
      loss_fn, params, x, y, key
    )
    return grad, metrics

  return MetaLearner('pretrain', init_fn, adapt, task_update, evaluate)
