"""Batch-norm modes: which images' statistics normalise which images.

A backbone with batch norm is written once as `forward(params, x, normaliser,
*, key=None, step=None) -> embeddings`, calling `normaliser(name, h, p,
channel_axis)` at each batch-norm layer (`name` the layer's, `p` its
parameters, `h` its input). The mode picks the normaliser:

* 'transductive': every batch normalises itself with its own statistics (as
  in MAML's and Reptile's reference code, and their published numbers). A
  query image's prediction then depends on the other queries scored with it.
* 'support': a batch normalises itself, and `given_support(model, support_x)`
  normalises any images with the statistics of the support set (at each
  inner step, under that step's parameters). Each query is scored
  independently of the others.
* 'running': every image but the support set is normalised with running
  averages of the statistics the query sets had in meta-training (kept in
  the train state's `model_state`, entry `STATISTICS`, updated by the
  meta-step; see `jaxmeta.algorithms.normalised_learner`), where every batch
  normalises itself.
* 'tasknorm': TaskNorm-I (Bronskill et al. 2020): the support set's
  statistics blended with each image's own instance-norm statistics, with a
  learned blend per layer.

In every mode the support set normalises itself (`self_normalised(model)`).
The algorithms apply that form to support images and the model to every
other image: the support set is named by the function applied to it, never
recognised by its array, so copies, casts and `jax.checkpoint` keep it.
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
# statistics, `{layer_name: {'mean': [C], 'var': [C]}}`. A model's `init` and
# its forward passes see them in the parameters (at the top, or under
# `'model'` for Meta-SGD and MAML++); the train state keeps them apart, as
# `MetaTrainState.model_state` (`split_model_state`), out of the outer
# optimiser, and the meta-step's running average alone changes them.
STATISTICS = 'batch_stats'


def split_model_state(params: Params) -> tuple[Params, Params]:
  """Splits the running statistics out of a model's parameters.

  Every `STATISTICS` entry of the nested dicts of `params` goes to the model
  state, at the same path; the rest are the trainable parameters.
  `merge_model_state` is the inverse.

  Args:
    params: parameters as a model's (or learner's) `init` returns them.

  Returns:
    `(trainable, model_state)`: `model_state` is `{}` for a model without
    running statistics, else e.g. `{STATISTICS: {layer: {'mean', 'var'}}}`
    or `{'model': {STATISTICS: ...}}` (Meta-SGD, MAML++).
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


def _self_normaliser(mode: str) -> Normaliser:
  """How a batch normalises itself in meta-training, for `mode`."""
  return self_task_norm if mode == 'tasknorm' else transductive


def model_from_forward(
  init: Callable[[PRNGKey], Params],
  forward: Callable[..., Array],
  feature_dim: int,
  mode: str = 'transductive',
) -> Model:
  """The `Model` of a backbone body `forward` and a linear head, in `mode`.

  `apply(params, x)` of the model returned normalises as the mode does a
  batch on its own: 'transductive' and 'support' with the batch's statistics
  (see `given_support` for the queries), 'tasknorm' with TaskNorm-I taking
  the batch as its context, 'running' with the running statistics
  `params[STATISTICS]` (see `self_normalised` for the support set).

  Args:
    init: `init(key) -> params`, holding `STATISTICS` in 'running' mode and
      the `TASKNORM_LEAVES` of every batch-norm layer in 'tasknorm' mode.
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

  def apply(params, x, *, key=None, step=None):
    return linear_head(params['head'], embed(params, x, key=key, step=step))

  return Model(init, apply, embed, feature_dim, forward, mode)


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

  In 'support' mode every batch-norm layer normalises its input with the
  moments of the support set's activations at that layer (computed by a
  forward pass of `support_x` under the same parameters, hence at every inner
  step those of the step's parameters); in 'tasknorm' mode those moments are
  TaskNorm-I's context. 'transductive' and 'running': `model` unchanged. The
  support set itself goes through `self_normalised(model)`, which gives it
  the same values in 'support' and 'tasknorm' modes in one pass.

  Under `jax.vmap` over the images (scoring queries one at a time), the
  support pass does not depend on the mapped image and is computed once.

  Args:
    model: a model of `model_from_forward`.
    support_x: `[support_size, ...]`, the task's support images.

  Returns:
    A `Model` (the same fields, another `apply` and `embed`).
  """
  if model.batch_norm == 'transductive':
    return model
  _require_forward(model, f'batch_norm={model.batch_norm!r}')
  if model.batch_norm == 'running':
    return model

  def embed(params, x, *, key=None, step=None):
    found = {}
    model.forward(
      params,
      support_x,
      _collecting(found, _self_normaliser(model.batch_norm)),
      key=key,
      step=step,
    )
    if model.batch_norm == 'support':
      normaliser = with_statistics(found)
    else:
      normaliser = with_context(found, support_x.shape[0])
    return model.forward(params, x, normaliser, key=key, step=step)

  return _from_embed(model, embed)


def self_normalised(model: Model) -> Model:
  """The model that normalises every batch by itself, as meta-training does.

  With the batch's own statistics ('tasknorm': TaskNorm-I with the batch as
  its context), never the running ones. It is how every mode normalises a
  support set, and every batch of 'running' mode's meta-training. A
  'transductive' model is returned unchanged.
  """
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
  """The batch moments every batch-norm layer sees in a forward pass of `x`.

  The pass normalises as `self_normalised(model)` does.

  Args:
    model: a model with `forward`.
    params: its parameters.
    x: a batch `[batch, ...]`.
    step: the inner step, for models with per-step parameters.
    unbiased: scale the variances by `n / (n - 1)`, `n` the elements per
      channel (PyTorch's running variance does).

  Returns:
    `{layer_name: {'mean': [C], 'var': [C]}}`.
  """
  _require_forward(model, 'batch_statistics')
  found = {}
  model.forward(
    params,
    x,
    _collecting(found, _self_normaliser(model.batch_norm), unbiased),
    step=step,
  )
  return found


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


def init_task_norm() -> Params:
  """A layer's TaskNorm-I blend parameters at initialisation (0 and 0,
  `alpha = 0.5`, as in the reference code)."""
  return {k: jnp.zeros((), jnp.float32) for k in TASKNORM_LEAVES}


def running_average(
  running: Params, batch: Params, momentum: float | Array
) -> Params:
  """`(1 - momentum) * running + momentum * batch`, leaf by leaf."""
  return jax.tree.map(
    lambda r, b: (1 - momentum) * r + momentum * b, running, batch
  )
