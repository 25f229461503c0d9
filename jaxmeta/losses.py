"""Per-batch losses with the signature the algorithms expect.

A loss function is `loss_fn(params, x, y, key=None) -> (loss, metrics)`: a
scalar loss on one batch of one task and a dict of scalar metrics. Build one
from a model's `apply` with `classification_loss` or `regression_loss`.

`key` feeds the model's randomness during meta-training (dropout, DropBlock):
with a key the loss calls `apply(params, x, key=key)`, without one
`apply(params, x)`, so a model whose `apply` takes no key works as long as
no key is passed, and evaluation (no key) is deterministic.
"""

from typing import Callable

import jax.numpy as jnp
import optax

from jaxmeta.types import Array, Params, PRNGKey

LossFn = Callable[..., tuple[Array, dict[str, Array]]]


def _call(apply_fn: Callable[..., Array], params: Params, x: Array,
          key: PRNGKey | None) -> Array:
  """`apply_fn(params, x)`, with `key=key` only when a key is given."""
  if key is None:
    return apply_fn(params, x)
  return apply_fn(params, x, key=key)


def classification_loss(apply_fn: Callable[..., Array]) -> LossFn:
  """Softmax cross-entropy on integer labels, with accuracy as a metric.

  Args:
    apply_fn: `apply(params, x[, key=key]) -> logits [batch, classes]`
      (log-softmax outputs work too: the softmax of log-probabilities is
      unchanged).

  Returns:
    `loss_fn(params, x [batch, ...], y [batch] int, key=None) -> (mean loss,
    {'loss', 'accuracy'})`; `key` is handed to `apply_fn` when not None.
  """
  def loss_fn(params: Params, x: Array, y: Array,
              key: PRNGKey | None = None):
    logits = _call(apply_fn, params, x, key)  # [batch, classes]
    loss = jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits, y))
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))
    return loss, {'loss': loss, 'accuracy': accuracy}
  return loss_fn


def regression_loss(apply_fn: Callable[..., Array]) -> LossFn:
  """Mean squared error, with 'mse' as a metric.

  Args:
    apply_fn: `apply(params, x[, key=key]) -> predictions`, same shape as `y`.

  Returns:
    `loss_fn(params, x, y, key=None) -> (mse, {'loss', 'mse'})`; `key` is
    handed to `apply_fn` when not None.
  """
  def loss_fn(params: Params, x: Array, y: Array,
              key: PRNGKey | None = None):
    pred = _call(apply_fn, params, x, key)
    mse = jnp.mean(jnp.square(pred - y))
    return mse, {'loss': mse, 'mse': mse}
  return loss_fn

