"""Per-batch losses with the signature the algorithms expect.

A loss function is `loss_fn(params, x, y, key=None, step=None) -> (loss,
metrics)`: a scalar loss on one batch of one task and a dict of scalar
metrics. Build one from a model's `apply(params, x, *, key=None, step=None)`
with `classification_loss` or `regression_loss`; `key` (the model's
randomness in meta-training: dropout, DropBlock; None at evaluation) and
`step` (the inner-step index, for per-step parameters as in MAML++) are
handed to it as they are.
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


def classification_loss(apply_fn: Callable[..., Array]) -> LossFn:
  """Softmax cross-entropy on integer labels, with accuracy as a metric.

  Args:
    apply_fn: `apply(params, x, *, key=None, step=None) -> logits [batch,
      classes]` (log-softmax outputs work too: the softmax of
      log-probabilities is unchanged).

  Returns:
    `loss_fn(params, x [batch, ...], y [batch] int, key=None, step=None)
    -> (mean loss, {'loss', 'accuracy'})`.

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
    logits = apply_fn(params, x, key=key, step=step)  # [batch, classes]
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
    apply_fn: `apply(params, x, *, key=None, step=None) -> predictions`,
      the shape of `y`.

  Returns:
    `loss_fn(params, x, y, key=None, step=None) -> (mse, {'loss',
    'mse'})`.
  """

  def loss_fn(
    params: Params,
    x: Array,
    y: Array,
    key: PRNGKey | None = None,
    step: Array | None = None,
  ):
    check_batch(x, y)
    pred = apply_fn(params, x, key=key, step=step)
    mse = jnp.mean(jnp.square(pred - y))
    return mse, {'loss': mse, 'mse': mse}

  return loss_fn
