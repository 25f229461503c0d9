"""Per-batch losses with the signature the algorithms expect.

A loss function is `loss_fn(params, x, y, key=None, step=None) -> (loss,
metrics)` on one batch of one task, built from a model's `apply` by
`classification_loss` or `regression_loss`, which hands `key` and `step` to
`apply` as they are.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmeta.types import Array

LossFn = Callable[..., tuple[Array, dict[str, Array]]]


def check_batch(x: Array, y: Array, what: str = 'batch') -> None:
  """Raises ValueError (at trace time) unless `x [batch, ...]` and `y [batch,
  ...]` hold as many examples; `what` names the pair in the message.
  """
  if jnp.ndim(x) < 1 or jnp.ndim(y) < 1 or jnp.shape(x)[0] != jnp.shape(y)[0]:
    raise ValueError(
      f'The {what} inputs and targets must have the same leading (example) '
      f'dimension, got inputs {jnp.shape(x)} and targets {jnp.shape(y)}: '
      f'give one target per {what} example.'
    )


def _per_batch_loss(
  apply_fn: Callable[..., Array],
  score: Callable[[Array, Array], tuple[Array, dict[str, Array]]],
) -> LossFn:
  """The `LossFn` of `score(outputs, y) -> (loss, metrics)`."""

  def loss_fn(params, x, y, key=None, step=None):
    check_batch(x, y)
    return score(apply_fn(params, x, key=key, step=step), y)

  return loss_fn


def classification_loss(apply_fn: Callable[..., Array]) -> LossFn:
  """Softmax cross-entropy on integer labels, with accuracy as a metric.

  Labels out of `[0, classes)` raise ValueError where they are concrete;
  traced ones make the loss, accuracy and gradients NaN, so that a loop
  guarding against non-finite losses stops.

  Args:
    apply_fn: `apply(params, x, *, key=None, step=None) -> logits [batch,
      classes]` (or log-softmax outputs).

  Returns:
    `loss_fn(params, x [batch, ...], y [batch] int, key=None, step=None)
    -> (mean loss, {'loss', 'accuracy'})`.
  """

  def score(logits, y):  # logits: [batch, classes]
    if jnp.ndim(y) != 1 or not jnp.issubdtype(jnp.result_type(y), jnp.integer):
      raise ValueError(
        'classification_loss needs integer class labels of shape [batch], '
        f'got {jnp.result_type(y)} {jnp.shape(y)}.'
      )
    num_classes = logits.shape[-1]
    if not isinstance(y, jax.core.Tracer):
      bad = np.asarray(y)
      bad = bad[(bad < 0) | (bad >= num_classes)]
      if bad.size:
        raise ValueError(
          f'Labels must lie in [0, {num_classes}) for {num_classes} logits, '
          f'got {sorted(set(bad.tolist()))[:5]}: relabel the classes of a '
          'task 0..ways-1, or give the model as many outputs as ways.'
        )
    in_range = jnp.all((y >= 0) & (y < num_classes))
    nan_unless_valid = jnp.where(in_range, 1.0, jnp.nan).astype(logits.dtype)
    loss = nan_unless_valid * jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, y)
    )
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))
    accuracy = jnp.where(in_range, accuracy, jnp.nan)
    return loss, {'loss': loss, 'accuracy': accuracy}

  return _per_batch_loss(apply_fn, score)


def regression_loss(apply_fn: Callable[..., Array]) -> LossFn:
  """Mean squared error, with 'mse' as a metric.

  Args:
    apply_fn: `apply(params, x, *, key=None, step=None) -> predictions`
      shaped like `y`.

  Returns:
    `loss_fn(params, x, y, key=None, step=None) -> (mse, {'loss', 'mse'})`.
  """

  def score(pred, y):
    mse = jnp.mean(jnp.square(pred - y))
    return mse, {'loss': mse, 'mse': mse}

  return _per_batch_loss(apply_fn, score)
