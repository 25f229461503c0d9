"""Per-batch losses with the signature the algorithms expect.

A loss function is `loss_fn(params, x, y, key=None, step=None) -> (loss,
metrics)`: a scalar loss on one batch of one task and a dict of scalar
metrics; `step`, the inner-step index, is handed to the model's `apply` for
per-step parameters (MAML++). Build one
from a model's `apply` with `classification_loss` or `regression_loss`.

`key` feeds the model's randomness during meta-training (dropout, DropBlock):
with a key the loss calls `apply(params, x, key=key)`, without one
`apply(params, x)`, so a model whose `apply` takes no key works as long as
no key is passed, and evaluation (no key) is deterministic.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmeta.types import Array, Params, PRNGKey

LossFn = Callable[..., tuple[Array, dict[str, Array]]]


def check_batch(x: Array, y: Array, what: str = 'batch') -> None:
  """Raises ValueError unless `x` and `y` hold the same number of examples.

  Shapes are static, so this runs at trace time, also under `jit`/`vmap`.

  Args:
    x: inputs `[batch, ...]`.
    y: targets `[batch, ...]`.
    what: what the pair is, for the message ('support', 'query', ...).
  """
  if jnp.ndim(x) < 1 or jnp.ndim(y) < 1 or jnp.shape(x)[0] != jnp.shape(y)[0]:
    raise ValueError(
      f'The {what} inputs and targets must have the same leading (example) '
      f'dimension, got inputs {jnp.shape(x)} and targets {jnp.shape(y)}: '
      f'give one target per {what} example.'
    )


def _call(
  apply_fn: Callable[..., Array],
  params: Params,
  x: Array,
  key: PRNGKey | None,
  step: Array | None = None,
) -> Array:
  """`apply_fn(params, x)`, with `key=` and `step=` only when given."""
  kwargs = {}
  if key is not None:
    kwargs['key'] = key
  if step is not None:
    kwargs['step'] = step
  return apply_fn(params, x, **kwargs)


def classification_loss(apply_fn: Callable[..., Array]) -> LossFn:
  """Softmax cross-entropy on integer labels, with accuracy as a metric.

  Args:
    apply_fn: `apply(params, x[, key=key]) -> logits [batch, classes]`
      (log-softmax outputs work too: the softmax of log-probabilities is
      unchanged).

  Returns:
    `loss_fn(params, x [batch, ...], y [batch] int, key=None, step=None) ->
    (mean loss, {'loss', 'accuracy'})`; `key` and `step` are handed to
    `apply_fn` when not None.

  Labels must lie in `[0, classes)`, `classes` the number of logits. Their
  number and dtype are checked when the loss is traced (ValueError). Their
  values are checked then too when they are concrete (not traced, e.g. an
  eager call). Under `jit`/`vmap`/`grad` they are traced values that cannot
  be checked in Python, so a batch holding any out-of-range label gives a
  NaN loss, NaN accuracy and NaN gradients on purpose: left alone, a label
  `>= classes` would give a NaN loss with finite gradients, and a negative
  one would silently index from the end, and training would go on with
  wrong targets. A NaN meta-loss stops a training loop that guards against
  non-finite losses; in MAML a bad support label makes the adapted weights,
  hence the query loss, NaN too.
  """

  def loss_fn(
    params: Params,
    x: Array,
    y: Array,
    key: PRNGKey | None = None,
    step: Array | None = None,
  ):
    check_batch(x, y)
    if jnp.ndim(y) != 1 or not jnp.issubdtype(jnp.result_type(y), jnp.integer):
      raise ValueError(
        'classification_loss needs integer class labels of shape [batch], '
        f'got {jnp.result_type(y)} {jnp.shape(y)}.'
      )
    logits = _call(apply_fn, params, x, key, step)  # [batch, classes]
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

  return loss_fn


def regression_loss(apply_fn: Callable[..., Array]) -> LossFn:
  """Mean squared error, with 'mse' as a metric.

  Args:
    apply_fn: `apply(params, x[, key=key]) -> predictions`, same shape as `y`.

  Returns:
    `loss_fn(params, x, y, key=None, step=None) -> (mse, {'loss', 'mse'})`;
    `key` and `step` are handed to `apply_fn` when not None.
  """

  def loss_fn(
    params: Params,
    x: Array,
    y: Array,
    key: PRNGKey | None = None,
    step: Array | None = None,
  ):
    check_batch(x, y)
    pred = _call(apply_fn, params, x, key, step)
    mse = jnp.mean(jnp.square(pred - y))
    return mse, {'loss': mse, 'mse': mse}

  return loss_fn
