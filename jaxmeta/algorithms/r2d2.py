"""R2-D2 (Bertinetto, Henriques, Torr & Vedaldi 2019): a ridge-regression
head solved in closed form on each task, differentiated through."""

from typing import Callable

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import closed_form_learner
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import require_embed
from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.models import norms
from jaxmeta.models.base import Model
from jaxmeta.models.base import split_head
from jaxmeta.types import Array


def ridge_weights(
  features: Array, labels: Array, num_classes: int, ridge: Array
) -> Array:
  """`W = X^T (X X^T + ridge * I)^-1 Y` `[d, num_classes]`, the ridge regression
  of one-hot labels `Y` on features `X` in Woodbury form (a `[support_size]`
  system, not a `[d]` one); an absent class's column is zero.

  Args:
    features: `X`, `[support_size, d]`.
    labels: `[support_size]` int in `[0, num_classes)`.
    num_classes: a static bound on the classes.
    ridge: `lambda > 0`, a scalar.

  Returns:
    `W`, `[d, num_classes]`.
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

  Each task fits a linear head to its support embeddings by ridge regression
  onto one-hot labels (`ridge_weights`); a query's logits are `scale * f(x)
  @ W`. The body, `lambda` and `scale` (learned as logarithms) are
  meta-learned through the closed form (Section 3.2). The paper's bias
  `beta`, added to every logit, would get no gradient and is left out.

  Args:
    model, make_loss, inner_lr, num_inner_steps: as for `protonet`.
    init_ridge: the initial `lambda` (> 0).
    init_scale: the initial `scale` (> 0).

  Returns:
    A `MetaLearner` named 'r2d2' whose meta-parameters are `{'model': body,
    'ridge': {'log_lambda': [], 'log_scale': []}}`; `adapt` returns `{'body',
    'weights': [d, classes], 'counts': [classes], 'scale'}`.

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

  return closed_form_learner('r2d2', model, make_loss, init, adapt, predict)
