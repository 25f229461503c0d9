"""Reptile (Nichol et al. 2018): `task_update` returns the pseudo-gradient
`meta_params - adapted_params`. Averaged over tasks and handed to
`optax.sgd(eps)` it is exactly the paper's rule `theta <- theta + eps *
mean(phi_i - theta)`; handed to any other optax optimiser (Adam, a schedule)
it is Reptile with that outer optimiser.
"""

from typing import Callable

import jax
import jax.numpy as jnp
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

  Adapts `num_inner_steps` steps on the task's support set (full batch) and
  returns the pseudo-gradient `theta - phi` (`phi` the adapted weights). The
  meta-step averages it over tasks; with `optax.sgd(eps)` as the outer
  optimiser the update is `theta + eps * mean_i(phi_i - theta)`, the paper's
  batched rule (Algorithm 2); any optax optimiser can take it instead.

  The query set plays no part in the update. With `query_metrics` (default)
  `task_update` also scores the query set with the adapted weights, for
  monitoring: one more forward pass over the query set, which is most of the
  cost of a short inner loop (a 75-image query set against 5 support images
  in 5-way 1-shot). Without it, it reports the support metrics `support_<m>`
  of the last inner step (computed anyway) and does only the work of the
  update. Nichol et al. train on
  minibatches of a task; here every inner step sees the whole support set
  (give Reptile more shots for training to match their `--train-shots`).

  Args:
    model: the `Model`.
    make_loss: `make_loss(apply) -> loss_fn`, e.g.
      `jaxmeta.classification_loss`.
    inner_lr: inner learning rate (for the default SGD inner optimiser).
    num_inner_steps: inner steps `k` per task during meta-training.
    inner_optimizer: optional optax optimiser for the inner loop, e.g.
      `optax.adam(1e-3, b1=0.)` as in the paper's Omniglot runs; default
      `optax.sgd(inner_lr)`.
    query_metrics: if True, `task_update`'s metrics are the query metrics of
      the adapted weights; if False, the support metrics of the last inner
      step (`num_inner_steps` must then be >= 1).

  Returns:
    A `MetaLearner`.

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
    inner_key, query_key = split_task_key(key)
    adapted, trace = inner_loop(
      loss_fn,
      params,
      task.support_x,
      task.support_y,
      num_inner_steps,
      inner_optimizer,
      key=inner_key,
      support_loss=support_loss,
    )
    pseudo_grad = jax.tree.map(jnp.subtract, params, adapted)
    if query_metrics:
      check_batch(task.query_x, task.query_y, 'query')
      _, metrics = loss_fn(adapted, task.query_x, task.query_y, key=query_key)
    else:
      metrics = {k: v[-1] for k, v in trace.items()}
    return pseudo_grad, metrics

  return learner_of_model('reptile', model, adapt, task_update, evaluate)
