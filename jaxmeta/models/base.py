"""`Model`, the registry of backbones, and the body/head split."""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxmeta.types import Array, Params, PRNGKey

# name -> `builder(num_outputs, input_shape, **options) -> Model`, filled by
# `register_backbone`; the experiment harness builds backbones by name.
BACKBONES: dict[str, Callable[..., 'Model']] = {}

# Names of the batch-norm leaves every backbone of `jaxmeta.models` uses; the
# per-step batch-norm transformation selects these.
BATCH_NORM_LEAVES = ('scale', 'offset')


def register_backbone(name: str):
  """Decorator: `@register_backbone('conv4')` adds a builder `builder(
  num_outputs, input_shape, **options) -> Model` to `BACKBONES`.
  """

  def add(builder):
    if name in BACKBONES and BACKBONES[name] is not builder:
      raise ValueError(f'Backbone {name!r} is already registered.')
    BACKBONES[name] = builder
    return builder

  return add


class Model(NamedTuple):
  """A model as pure functions; its parameters are a dict whose entry `'head'`
  is the linear head `{'w': [feature_dim, outputs], 'b': [outputs]}`.

  Attributes:
    init: `init(key) -> params`, a dict pytree of float32 arrays.
    apply: `apply(params, x, *, key=None, step=None) -> outputs` for one
      batch `x` of one task; `key` feeds dropout / DropBlock (None:
      deterministic), `step` selects per-step parameters.
    embed: `embed(params, x, *, key=None, step=None) -> [batch,
      feature_dim]`, the body, or None.
    feature_dim: the width of `embed`'s output, or None.
    forward: `forward(params, x, normaliser, *, key=None, step=None)`, the
      body with its batch norm left to `normaliser` (`norms`), or None.
    batch_norm: the batch-norm mode, one of `jaxmeta.models.norms.MODES`.
  """

  init: Callable[[PRNGKey], Params]
  apply: Callable[..., Array]
  embed: Callable[..., Array] | None = None
  feature_dim: int | None = None
  forward: Callable[..., Array] | None = None
  batch_norm: str = 'transductive'


def check_images(x: Array, input_shape: tuple[int, ...], model: str) -> None:
  """Raises ValueError unless `x` is a batch `[batch, *input_shape]` (at
  trace time, naming the shape the model was built for).

  Args:
    x: the images given to the model.
    input_shape: the shape of one image the model was built for.
    model: the model's name, for the message.
  """
  if tuple(x.shape[1:]) != tuple(input_shape):
    raise ValueError(
      f'{model} was built for images of shape {tuple(input_shape)} (a batch '
      f'[batch, {", ".join(str(s) for s in input_shape)}]), got an array of '
      f'shape {tuple(x.shape)}: resize the images, or build the model with '
      f'input_shape={tuple(x.shape[1:])}.'
    )


def split_head(params: Params) -> tuple[Params, Params]:
  """`params` -> `(body, head)`: the `'head'` entry and everything else."""
  if not isinstance(params, dict) or 'head' not in params:
    raise ValueError(
      "The model's parameters must be a dict with a 'head' entry to be split "
      f'into body and head, got {type(params).__name__} with '
      f'{sorted(params) if isinstance(params, dict) else "no"} keys.'
    )
  body = {k: v for k, v in params.items() if k != 'head'}
  return body, params['head']


def join_head(body: Params, head: Params) -> Params:
  """The inverse of `split_head`."""
  return dict(body, head=head)


def linear_head(head: Params, features: Array) -> Array:
  """`features [batch, d] @ w [d, n] + b [n]` -> logits `[batch, n]`."""
  return features @ head['w'] + head['b']


def init_linear_head(
  key: PRNGKey, feature_dim: int, num_outputs: int
) -> Params:
  """A Glorot-uniform linear head `{'w': [d, n], 'b': [n]}` (zero bias)."""
  w = jax.nn.initializers.glorot_uniform()(
    key, (feature_dim, num_outputs), jnp.float32
  )
  return {'w': w, 'b': jnp.zeros((num_outputs,), jnp.float32)}


def cosine_logits(
  head: Params, features: Array, scale: float, eps: float = 1e-8
) -> Array:
  """Baseline++'s classifier (Chen et al. 2019, Section 3.2).

  Args:
    head: `{'w': [d, n]}`, one weight vector per class (a column).
    features: `[batch, d]`.
    scale: the temperature.
    eps: added to the norms; keeps a zero vector's logits finite.

  Returns:
    `logits [batch, n] = scale * <f_i, w_c> / (|f_i| |w_c|)`.
  """
  w = head['w']
  f = features / (jnp.linalg.norm(features, axis=-1, keepdims=True) + eps)
  w = w / (jnp.linalg.norm(w, axis=0, keepdims=True) + eps)
  return scale * (f @ w)


def per_step_batch_norm(
  model: Model,
  num_steps: int,
  weights: bool = True,
  statistics: bool = False,
) -> Model:
  """Per-step batch norm (Antoniou et al. 2019): weights and biases (BNWB),
  running statistics (BNRS), or both.

  Every selected leaf gets a leading `[num_steps]` axis, initialised to the
  model's values; `apply(..., step=i)` uses set `min(i, num_steps - 1)`
  (`step=None`: the last).

  Args:
    model: a `Model` whose batch-norm parameters are `BATCH_NORM_LEAVES`.
    num_steps: the number of sets, >= 1 (the training inner steps).
    weights: select the `BATCH_NORM_LEAVES` (BNWB).
    statistics: select the running statistics `norms.STATISTICS` (BNRS).

  Returns:
    A `Model` whose `apply`, `embed` and `forward` select the step's set.
  """
  if num_steps < 1:
    raise ValueError(
      f'per_step_batch_norm needs num_steps >= 1, got {num_steps}'
    )

  def is_selected(path) -> bool:
    keys = [getattr(k, 'key', None) for k in path]
    if keys and keys[0] == 'batch_stats':  # norms.STATISTICS
      return statistics
    return weights and keys[-1] in BATCH_NORM_LEAVES

  def init(key):
    return jax.tree_util.tree_map_with_path(
      lambda path, v: (
        jnp.broadcast_to(v, (num_steps,) + v.shape) + 0
        if is_selected(path)
        else v
      ),
      model.init(key),
    )

  def select(params, step):
    index = num_steps - 1 if step is None else jnp.minimum(step, num_steps - 1)
    return jax.tree_util.tree_map_with_path(
      lambda path, v: v[index] if is_selected(path) else v, params
    )

  def per_step(fn):  # `apply`, `embed` or `forward`, on the step's set.
    if fn is None:
      return None

    def with_step(params, *args, key=None, step=None):
      return fn(select(params, step), *args, key=key, step=step)

    return with_step

  return model._replace(
    init=init,
    apply=per_step(model.apply),
    embed=per_step(model.embed),
    forward=per_step(model.forward),
  )
