"""R2-D2 (Bertinetto, Henriques, Torr & Vedaldi 2019): a ridge-regression
head solved in closed form on each task, differentiated through."""

from typing import Callable

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import head_apply
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import require_embed
from jaxmeta.algorithms.base import split_task_key
from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.models import norms
from jaxmeta.models.base import Model
from jaxmeta.models.base import split_head
from jaxmeta.types import Array


def ridge_weights(
  features: Array, labels: Array, num_classes: int, ridge: Array
) -> Array:
  """The ridge regression of one-hot labels on features, Woodbury form.

  `W = X^T (X X^T + ridge * I)^-1 Y`, which equals `(X^T X + ridge *
  I)^-1 X^T Y` but solves a `[support_size, support_size]` system instead
  of a `[d, d]` one (few examples, many features).

  Args:
    features: `X`, `[support_size, d]`.
    labels: `[support_size]` int in `[0, num_classes)`.
    num_classes: a static bound on the classes.
    ridge: `lambda > 0`, a scalar.

  Returns:
    `W`, `[d, num_classes]`; the column of a class without support examples
    is zero.
  """
  targets = jax.nn.one_hot(labels, num_classes, dtype=features.dtype)
  gram = features @ features.T
  eye = jnp.eye(features.shape[0], dtype=features.dtype)
  dual = jax.scipy.linalg.solve(gram + ridge * eye, targets, assume_a='pos')
  return features.T @ dual


def r2d2(
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float | None = None,
  num_inner_steps: int = 0,
  *,
  init_ridge: float = 1.0,
  init_scale: float = 1.0,
) -> MetaLearner:
  """R2-D2 (Bertinetto et al. 2019), the ridge-regression base learner.

  Each task fits a linear head to its support embeddings (`model.embed`) by
  ridge regression onto one-hot labels (`ridge_weights`); a query's logits
  are `scale * f(x) @ W`. The body, the ridge `lambda` and the `scale` are
  meta-learned through the closed-form solution (the paper's Section 3.2).
  `lambda` and `scale` are learned as logarithms, so they stay positive.
  The paper's scalar bias `beta` is left out: one number added to every
  class's logit leaves the softmax unchanged, so it would get no gradient.
  Nothing depends on the number of ways (`any_ways`). Support and query
  images are embedded as separate batches, as in `protonet`.

  Args:
    model: a `Model` with `embed`.
    make_loss: `make_loss(apply) -> loss_fn` (classification), applied to
      the logits.
    inner_lr: unused (no inner loop); accepted for the uniform signature.
    num_inner_steps: unused, must be >= 0.
    init_ridge: the initial `lambda` (> 0).
    init_scale: the initial `scale` (> 0).

  Returns:
    A `MetaLearner` named 'r2d2' whose meta-parameters are `{'model': body,
    'ridge': {'log_lambda': [], 'log_scale': []}}`; `adapt` returns
    `{'body', 'weights': [d, classes], 'counts': [classes], 'scale'}`, and
    `evaluate`'s `*_by_step` repeat the one result (no steps).

  References:
    Bertinetto, Henriques, Torr & Vedaldi 2019, "Meta-learning with
    differentiable closed-form solvers", Sections 3.1-3.2.
  """
  del inner_lr
  require_embed(model, 'r2d2')
  check_num_steps(num_inner_steps)
  if not (init_ridge > 0 and init_scale > 0):
    raise ValueError(
      f'init_ridge and init_scale must be > 0, got {init_ridge!r} and '
      f'{init_scale!r}.'
    )
  loss_fn = make_loss(head_apply(lambda _, logits: logits))
  support_embed = norms.self_normalised(model).embed

  def init(key):
    body, _ = split_head(model.init(key))
    ridge = {
      'log_lambda': jnp.log(jnp.float32(init_ridge)),
      'log_scale': jnp.log(jnp.float32(init_scale)),
    }
    return {'model': body, 'ridge': ridge}

  def adapt(meta, support_x, support_y, num_steps=0, key=None):
    del num_steps
    check_batch(support_x, support_y, 'support')
    features = support_embed(meta['model'], support_x, key=key)
    num_classes = support_x.shape[0]
    ridge = jnp.exp(meta['ridge']['log_lambda'])
    return {
      'body': meta['model'],
      'weights': ridge_weights(features, support_y, num_classes, ridge),
      'counts': jnp.bincount(support_y, length=num_classes),
      'scale': jnp.exp(meta['ridge']['log_scale']),
    }

  def predict(adapted, x, key=None):
    logits = adapted['scale'] * model.embed(adapted['body'], x, key=key)
    logits = logits @ adapted['weights']
    # A class without support examples is never predicted.
    return jnp.where(adapted['counts'][None, :] > 0, logits, -jnp.inf)

  def logits(meta, task, key=None):
    support_key, query_key = split_task_key(key)
    adapted = adapt(meta, task.support_x, task.support_y, key=support_key)
    return predict(adapted, task.query_x, key=query_key)

  def task_update(meta, task, key=None, global_step=None):
    del global_step  # No schedule.
    check_batch(task.query_x, task.query_y, 'query')
    return jax.grad(
      lambda m: loss_fn(None, logits(m, task, key), task.query_y),
      has_aux=True,
    )(meta)

  def evaluate(meta, task, num_steps):
    _, metrics = loss_fn(None, logits(meta, task), task.query_y)
    out = {}
    for k, v in metrics.items():
      out[k] = v
      out[f'{k}_by_step'] = jnp.full((num_steps + 1,), v)
    return out

  return MetaLearner(
    'r2d2',
    init,
    adapt,
    task_update,
    evaluate,
    predict=lambda adapted, x: predict(adapted, x),
    model=model,
  )
