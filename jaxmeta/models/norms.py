"""Batch-norm modes: which images' statistics normalise which images.

A backbone's body is `forward(params, x, normaliser, *, key=None,
step=None)`, calling `normaliser(name, h, p, channel_axis)` at each
batch-norm layer; the mode (`MODES`) picks the normaliser. 'transductive':
every batch normalises itself (MAML's reference code). 'support': queries
use the support set's statistics (`given_support`). 'running': running
averages of the query sets' statistics in meta-training (`STATISTICS`).
'tasknorm': TaskNorm-I (Bronskill et al. 2020). In every mode the support
set normalises itself (`self_normalised`), named by the function applied to
it, never by its array.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from jaxmeta.models.base import Model
from jaxmeta.models.base import linear_head
from jaxmeta.models.layers import batch_norm
from jaxmeta.models.layers import moments
from jaxmeta.models.layers import normalise
from jaxmeta.models.layers import task_norm
from jaxmeta.types import Array, Params, PRNGKey

MODES = ('transductive', 'support', 'running', 'tasknorm')

# The entry of a 'running' model's parameters that holds the running
# statistics, `{layer_name: {'mean': [C], 'var': [C]}}`; the train state keeps
# them apart, out of the optimiser (`split_model_state`).
STATISTICS = 'batch_stats'


def split_model_state(params: Params) -> tuple[Params, Params]:
  """Moves every `STATISTICS` entry of the nested dicts of `params` to the
  model state, at the same path (`merge_model_state` is the inverse).

  Args:
    params: parameters as a model's (or learner's) `init` returns them.

  Returns:
    `(trainable, model_state)`, `model_state` `{}` without statistics.
  """
  if not isinstance(params, dict):
    return params, {}
  trainable, state = {}, {}
  for name, value in params.items():
    if name == STATISTICS:
      state[name] = value
      continue
    trainable[name], inner = split_model_state(value)
    if inner:
      state[name] = inner
  return trainable, state


def merge_model_state(trainable: Params, model_state: Params) -> Params:
  """The parameters the learner's functions take: `trainable` with the
  `model_state` of `split_model_state` put back at its paths."""
  if not model_state:
    return trainable
  merged = dict(trainable)
  for name, value in model_state.items():
    if name == STATISTICS:
      merged[name] = value
    else:
      merged[name] = merge_model_state(trainable[name], value)
  return merged


# Names of the learned TaskNorm-I blend parameters in a layer's parameters:
# `alpha = sigmoid(alpha_scale * context_size + alpha_offset)`.
TASKNORM_LEAVES = ('alpha_scale', 'alpha_offset')

Normaliser = Callable[[str, Array, Params, int], Array]


def check_mode(mode: str) -> str:
  """Returns `mode` if it is one of `MODES`, else raises ValueError."""
  if mode not in MODES:
    raise ValueError(
      f'Unknown batch_norm mode {mode!r}; choose one of {MODES}.'
    )
  return mode


def _batch_axis(h: Array, channel_axis: int) -> int:
  # NHWC activations hold the examples on axis 0; channels-first ones,
  # `[C, batch, H, W]`, on axis 1.
  return 1 if channel_axis % h.ndim == 0 else 0


def transductive(name: str, h: Array, p: Params, channel_axis: int) -> Array:
  """The normaliser of a batch by its own statistics (`batch_norm`)."""
  del name
  return batch_norm(h, p['scale'], p['offset'], channel_axis=channel_axis)


def self_task_norm(name: str, h: Array, p: Params, channel_axis: int) -> Array:
  """TaskNorm-I of a batch that is its own context (the support set)."""
  mean, var = moments(h, channel_axis)
  size = h.shape[_batch_axis(h, channel_axis)]
  context = {name: {'mean': mean, 'var': var}}
  return with_context(context, size)(name, h, p, channel_axis)


def with_statistics(statistics: Params) -> Normaliser:
  """The normaliser by given statistics `{name: {'mean': [C], 'var': [C]}}`."""

  def normaliser(name, h, p, channel_axis):
    s = statistics[name]
    return normalise(
      h,
      s['mean'],
      s['var'],
      p['scale'],
      p['offset'],
      channel_axis=channel_axis,
    )

  return normaliser


def with_context(statistics: Params, context_size: int) -> Normaliser:
  """The TaskNorm-I normaliser by a context's statistics."""

  def normaliser(name, h, p, channel_axis):
    s = statistics[name]
    return task_norm(
      h,
      s['mean'],
      s['var'],
      context_size,
      p['scale'],
      p['offset'],
      p['alpha_scale'],
      p['alpha_offset'],
      channel_axis=channel_axis,
      batch_axis=_batch_axis(h, channel_axis),
    )

  return normaliser


def _collecting(
  found: dict[str, Params], inner: Normaliser, unbiased: bool = False
) -> Normaliser:
  """`inner`, recording each layer's batch moments of its input in `found`
  (a plain dict, filled while the forward pass is traced)."""

  def normaliser(name, h, p, channel_axis):
    mean, var = moments(h, channel_axis)
    if unbiased:
      n = h.size // h.shape[channel_axis]
      var = var * (n / max(n - 1, 1))
    found[name] = {'mean': mean, 'var': var}
    return inner(name, h, p, channel_axis)

  return normaliser


def _forward_statistics(
  model: Model, params: Params, x: Array, unbiased: bool = False, **options
) -> Params:
  """The moments each batch-norm layer sees in a self-normalised pass."""
  found = {}
  normaliser = _collecting(found, _self_normaliser(model.batch_norm), unbiased)
  model.forward(params, x, normaliser, **options)
  return found


def _self_normaliser(mode: str) -> Normaliser:
  """How a batch normalises itself in meta-training, for `mode`."""
  return self_task_norm if mode == 'tasknorm' else transductive


def model_from_forward(
  init: Callable[[PRNGKey], Params],
  forward: Callable[..., Array],
  feature_dim: int,
  mode: str = 'transductive',
) -> Model:
  """The `Model` of a body `forward` and a linear head in `mode`, whose `apply`
  normalises a batch by itself (by `params[STATISTICS]` in 'running' mode).

  Args:
    init: `init(key) -> params` (with `STATISTICS` in 'running' mode and the
      `TASKNORM_LEAVES` of each layer in 'tasknorm' mode).
    forward: `forward(params, x, normaliser, *, key=None, step=None) ->
      [batch, feature_dim]`.
    feature_dim: the width of the embeddings.
    mode: one of `MODES`.

  Returns:
    A `Model` with `forward` and `batch_norm` set.
  """
  check_mode(mode)

  def embed(params, x, *, key=None, step=None):
    if mode == 'running':
      # Constants for every derivative: the inner loop must not adapt them
      # (its gradient step would move a variance, possibly below zero).
      normaliser = with_statistics(jax.lax.stop_gradient(params[STATISTICS]))
    else:
      normaliser = _self_normaliser(mode)
    return forward(params, x, normaliser, key=key, step=step)

  return _from_embed(Model(init, None, None, feature_dim, forward, mode), embed)


def _require_forward(model: Model, what: str) -> None:
  if model.forward is None:
    raise ValueError(
      f'{what} needs a model built with a batch-norm hook (`Model.forward`, '
      'e.g. conv4 or resnet12); this model has none.'
    )


def _from_embed(model: Model, embed: Callable[..., Array]) -> Model:
  def apply(params, x, *, key=None, step=None):
    return linear_head(params['head'], embed(params, x, key=key, step=step))

  return model._replace(apply=apply, embed=embed)


def given_support(model: Model, support_x: Array) -> Model:
  """The model whose images are normalised by the support set `support_x`.

  'support': each layer uses the moments of the support set's activations
  there (a forward pass of `support_x` under the same parameters);
  'tasknorm': they are TaskNorm-I's context; otherwise `model` unchanged.

  Args:
    model: a model of `model_from_forward`.
    support_x: `[support_size, ...]`, the task's support images.

  Returns:
    A `Model` with another `apply` and `embed`.
  """
  if model.batch_norm == 'transductive':
    return model
  _require_forward(model, f'batch_norm={model.batch_norm!r}')
  if model.batch_norm == 'running':
    return model

  def embed(params, x, *, key=None, step=None):
    found = _forward_statistics(model, params, support_x, key=key, step=step)
    if model.batch_norm == 'support':
      normaliser = with_statistics(found)
    else:
      normaliser = with_context(found, support_x.shape[0])
    return model.forward(params, x, normaliser, key=key, step=step)

  return _from_embed(model, embed)


def self_normalised(model: Model) -> Model:
  """The model that normalises every batch by itself ('tasknorm': as its
  own context), never with running statistics: how every mode normalises a
  support set, and 'running' mode every batch of meta-training."""
  if model.batch_norm == 'transductive':
    return model
  _require_forward(model, f'batch_norm={model.batch_norm!r}')
  normaliser = _self_normaliser(model.batch_norm)

  def embed(params, x, *, key=None, step=None):
    return model.forward(params, x, normaliser, key=key, step=step)

  return _from_embed(model, embed)


def batch_statistics(
  model: Model,
  params: Params,
  x: Array,
  *,
  step: Array | int | None = None,
  unbiased: bool = False,
) -> Params:
  """The batch moments each batch-norm layer sees in a self-normalised forward
  pass of `x` (as `self_normalised(model)`).

  Args:
    model: a model with `forward`.
    params: its parameters.
    x: a batch `[batch, ...]`.
    step: the inner step, for models with per-step parameters.
    unbiased: scale the variances by `n / (n - 1)` (PyTorch's running ones).

  Returns:
    `{layer_name: {'mean': [C], 'var': [C]}}`.
  """
  _require_forward(model, 'batch_statistics')
  return _forward_statistics(model, params, x, unbiased, step=step)


def init_statistics(channels: dict[str, int]) -> Params:
  """Running statistics of zero mean and unit variance (PyTorch's initial
  values), `{name: {'mean': zeros [C], 'var': ones [C]}}`."""
  return {
    name: {
      'mean': jnp.zeros((c,), jnp.float32),
      'var': jnp.ones((c,), jnp.float32),
    }
    for name, c in channels.items()
  }


def init_batch_norm(channels: int, mode: str) -> Params:
  """A batch-norm layer's `scale` (ones `[C]`) and `offset` (zeros `[C]`),
  and in 'tasknorm' mode its blend parameters at 0 (`alpha = 0.5`, as in
  the reference code)."""
  params = {
    'scale': jnp.ones((channels,), jnp.float32),
    'offset': jnp.zeros((channels,), jnp.float32),
  }
  if mode == 'tasknorm':
    params.update({k: jnp.zeros((), jnp.float32) for k in TASKNORM_LEAVES})
  return params


def running_average(
  running: Params, batch: Params, momentum: float | Array
) -> Params:
  """`(1 - momentum) * running + momentum * batch`, leaf by leaf."""
  return jax.tree.map(
    lambda r, b: (1 - momentum) * r + momentum * b, running, batch
  )
