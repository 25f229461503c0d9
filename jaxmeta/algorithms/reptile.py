"""Reptile (Nichol et al. 2018): the pseudo-gradient `theta - phi`."""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxmeta.algorithms.base import check_inner_lr
from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import gradient_adaptation
from jaxmeta.algorithms.base import learner_of_model
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import model_losses
from jaxmeta.algorithms.base import task_inner_loop
from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.models.base import Model


def reptile(
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float,
  num_inner_steps: int,
  *,
  inner_optimizer: optax.GradientTransformation | None = None,
  query_metrics: bool = True,
) -> MetaLearner:
  """Reptile (Nichol, Achiam & Schulman 2018).

  `task_update` adapts `num_inner_steps` full-batch steps on the support set
  and returns `theta - phi` (`phi` the adapted weights): with `optax.sgd(eps)`
  outside, the paper's batched rule `theta + eps * mean_i(phi_i - theta)`
  (Algorithm 2). The query set is only scored, for monitoring. Nichol et al.
  train on minibatches of a task: give more training shots to match.

  Args:
    model: the `Model`.
    make_loss: `make_loss(apply) -> loss_fn`.
    inner_lr: inner learning rate (of the default SGD inner optimiser).
    num_inner_steps: inner steps `k` per task during meta-training.
    inner_optimizer: optional optax inner optimiser, e.g. `optax.adam(1e-3,
      b1=0.)` as in the paper's Omniglot runs; default `optax.sgd(inner_lr)`.
    query_metrics: if True, the metrics are the adapted weights' query
      metrics (one more forward pass); if False, the last inner step's
      support metrics `support_<m>` (`num_inner_steps` must be >= 1).

  Returns:
    A `MetaLearner` named 'reptile'.

  References:
    Nichol et al. 2018, "On First-Order Meta-Learning Algorithms",
    Algorithms 1 and 2.
  """
  num_inner_steps = check_num_steps(num_inner_steps)
  if inner_optimizer is None:
    check_inner_lr(inner_lr)
    inner_optimizer = optax.sgd(inner_lr)
  loss_fn, support_loss = model_losses(make_loss, model)
  adapt, evaluate = gradient_adaptation(loss_fn, inner_optimizer, support_loss)

  if not query_metrics and num_inner_steps < 1:
    raise ValueError(
      'reptile(query_metrics=False) reports the last inner '
      "step's support metrics: num_inner_steps must be >= 1, "
      f'got {num_inner_steps}.'
    )

  def task_update(params, task, key=None, global_step=None):
    del global_step  # No schedule.
    adapted, trace, query_key = task_inner_loop(
      loss_fn, support_loss, params, task, num_inner_steps, inner_optimizer, key
    )
    pseudo_grad = jax.tree.map(jnp.subtract, params, adapted)
    if query_metrics:
      check_batch(task.query_x, task.query_y, 'query')
      _, metrics = loss_fn(adapted, task.query_x, task.query_y, key=query_key)
    else:
      metrics = {k: v[-1] for k, v in trace.items()}
    return pseudo_grad, metrics

  return learner_of_model('reptile', model, adapt, task_update, evaluate)
