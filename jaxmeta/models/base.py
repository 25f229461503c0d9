"""`Model`, the pure functions every backbone returns, the registry of
backbones by name, and the pieces that let a method treat a model as a body
(images to embeddings) and a head (embeddings to logits)."""

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
  """Decorator: `@register_backbone('conv4')` adds a builder to `BACKBONES`.

  A builder takes the number of outputs (the ways, or 1 for regression), the
  shape of one input without the batch axis, and its own keyword options.
  The model's `apply(params, x, *, key=None, step=None)` must accept a key
  and a step: the training program passes a key in meta-training (dropout,
  DropBlock) and none at evaluation; a deterministic model ignores it, and a
  model without per-step parameters ignores the step.
  """

  def add(builder):
    if name in BACKBONES and BACKBONES[name] is not builder:
      raise ValueError(f'Backbone {name!r} is already registered.')
    BACKBONES[name] = builder
    return builder

  return add


class Model(NamedTuple):
  """A model as pure functions.

  The parameters are a dict whose entry `'head'` is the linear head
  `{'w': [feature_dim, outputs], 'b': [outputs]}`; every other entry belongs
  to the body. `apply` is `linear_head(params['head'], embed(params, x))`.

  Attributes:
    init: `init(key) -> params`, a dict pytree of float32 arrays.
    apply: `apply(params, x, *, key=None, step=None) -> outputs` for one
      batch `x` of one task. `key` feeds the model's randomness in training
      (dropout, DropBlock); with None the model is deterministic
      (evaluation). `step` is the inner-loop step index, read by models with
      per-step parameters (`per_step_batch_norm`) and ignored by the others.
      Every caller in jaxmeta passes both (None when there is none).
    embed: `embed(params, x, *, key=None, step=None) -> [batch,
      feature_dim]`, the body: everything but the head (whose entry it does
      not read). None for a model without a body/head split.
    feature_dim: the width of `embed`'s output, or None.
    forward: `forward(params, x, normaliser, *, key=None, step=None) ->
      [batch, feature_dim]`, the body with its batch-norm layers left to
      `normaliser(name, h, layer_params, channel_axis)`: the hook through
      which `jaxmeta.models.norms` gives the batch-norm modes. None for a
      model without batch norm (or without the hook).
    batch_norm: the batch-norm mode `apply` and `embed` follow, one of
      `jaxmeta.models.norms.MODES`.
  """

  init: Callable[[PRNGKey], Params]
  apply: Callable[..., Array]
  embed: Callable[..., Array] | None = None
  feature_dim: int | None = None
  forward: Callable[..., Array] | None = None
  batch_norm: str = 'transductive'


def check_images(x: Array, input_shape: tuple[int, ...], model: str) -> None:
  """Raises ValueError unless `x` is a batch `[batch, *input_shape]`.

  Shapes are static, so this runs when the model is traced, and names the
  shape the model was built for rather than an XLA shape error deep inside.

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


def with_linear_head(
  init: Callable[[PRNGKey], Params],
  embed: Callable[..., Array],
  feature_dim: int,
) -> Model:
  """The `Model` whose `apply` is `embed` followed by the linear head
  `params['head']`."""

  def apply(params, x, *, key=None, step=None):
    return linear_head(params['head'], embed(params, x, key=key, step=step))

  return Model(init, apply, embed, feature_dim)


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
  """Scaled cosine similarity of each embedding with each class weight.

  The classifier of Baseline++ (Chen et al. 2019, Section 3.2):
  `logits[i, c] = scale * <f_i, w_c> / (|f_i| |w_c|)`.

  Args:
    head: `{'w': [d, n]}`, one weight vector per class (a column).
    features: `[batch, d]`.
    scale: the temperature (Chen et al. use 2, or 10 for more than 200
      classes).
    eps: added to the norms; keeps a zero vector's logits finite.

  Returns:
    `[batch, n]`.
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
  model's values, and `apply(..., step=i)` uses the set of step `min(i,
  num_steps - 1)`: inner step `i` of the adaptation uses set `i`; steps past
  the last set (evaluation with more steps than training) reuse the last
  one, and `step=None` means the last one. With `weights`, the batch-norm
  scales and offsets (`BATCH_NORM_LEAVES`) are selected; with `statistics`,
  the running statistics of a 'running' model (the entry
  `jaxmeta.models.norms.STATISTICS`).

  Args:
    model: a `Model` whose batch-norm parameters are named as in
      `BATCH_NORM_LEAVES`.
    num_steps: the number of sets, >= 1 (the training inner steps).
    weights: per-step batch-norm weights and biases (BNWB).
    statistics: per-step running statistics (BNRS).

  Returns:
    A `Model` with the same `feature_dim`; its `forward` (if the model has
    one) selects the step's set too.
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

  def apply(params, x, *, key=None, step=None):
    return model.apply(select(params, step), x, key=key, step=step)

  embed = None
  if model.embed is not None:

    def embed(params, x, *, key=None, step=None):
      return model.embed(select(params, step), x, key=key, step=step)

  forward = None
  if model.forward is not None:

    def forward(params, x, normaliser, *, key=None, step=None):
      return model.forward(
        select(params, step), x, normaliser, key=key, step=step
      )

  return model._replace(init=init, apply=apply, embed=embed, forward=forward)
