"""Per-batch losses with the signature the algorithms expect.

A loss function is `loss_fn(params, x, y) -> (loss, metrics)`: a scalar loss
on one batch of one task and a dict of scalar metrics. Build one from a
model's `apply` with `classification_loss` or `regression_loss`.
"""

from typing import Callable

import jax.numpy as jnp
import optax

from jaxmeta.types import Array, Params

LossFn = Callable[[Params, Array, Array], tuple[Array, dict[str, Array]]]


def classification_loss(apply_fn: Callable[[Params, Array], Array]) -> LossFn:
  """Softmax cross-entropy on integer labels, with accuracy as a metric.

  Args:
    apply_fn: `apply(params, x) -> logits [batch, classes]` (log-softmax
      outputs work too: the softmax of log-probabilities is unchanged).

  Returns:
    `loss_fn(params, x [batch, ...], y [batch] int) -> (mean loss,
    {'loss', 'accuracy'})`.
  """
  def loss_fn(params: Params, x: Array, y: Array):
    logits = apply_fn(params, x)  # [batch, classes]
    loss = jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits, y))
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))
    return loss, {'loss': loss, 'accuracy': accuracy}
  return loss_fn


def regression_loss(apply_fn: Callable[[Params, Array], Array]) -> LossFn:
  """Mean squared error, with 'mse' as a metric.

  Args:
    apply_fn: `apply(params, x) -> predictions`, same shape as `y`.

  Returns:
    `loss_fn(params, x, y) -> (mse, {'loss', 'mse'})`.
  """
  def loss_fn(params: Params, x: Array, y: Array):
    pred = apply_fn(params, x)
    mse = jnp.mean(jnp.square(pred - y))
    return mse, {'loss': mse, 'mse': mse}
  return loss_fn

