"""Layers shared by the backbones: convolutions, batch norm, pooling."""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxmeta.types import Array, Params, PRNGKey

CONV_IMPLS = ('auto', 'xla', 'patches', 'patches_cf', 'patches_cf_2pass')


def _glorot_dense(key: PRNGKey, fan_in: int, fan_out: int) -> Params:
  w = jax.nn.initializers.glorot_uniform()(key, (fan_in, fan_out), jnp.float32)
  return {'w': w, 'b': jnp.zeros((fan_out,), jnp.float32)}


def resolve_conv_impl(conv_impl: str = 'auto') -> str:
  """The implementation of `conv_impl` (one of `CONV_IMPLS`) on the default
  backend: 'auto' is the fastest measured (benchmarks/README.md),
  'patches_cf_2pass' on CPUs, 'patches_cf' on GPUs, 'xla' on TPUs; all
  compute the same function.
  """
  if conv_impl not in CONV_IMPLS:
    raise ValueError(
      f'Unknown conv_impl {conv_impl!r}; choose one of {CONV_IMPLS}.'
    )
  if conv_impl != 'auto':
    return conv_impl
  backend = jax.default_backend()
  if backend == 'tpu':
    return 'xla'
  if backend == 'cpu':
    return 'patches_cf_2pass'
  return 'patches_cf'


def pooled_size(input_shape, num_pools: int) -> tuple[int, int]:
  """`(height, width)` of images `input_shape = (height, width, channels)`
  after `num_pools` 2x2 max-pools; a ValueError if nothing is left."""
  height, width = (
    int(input_shape[0]) >> num_pools,
    int(input_shape[1]) >> num_pools,
  )
  if height < 1 or width < 1:
    raise ValueError(
      f'Input {input_shape} is too small for {num_pools} '
      'blocks of 2x2 max-pooling.'
    )
  return height, width


class ConvLayout(NamedTuple):
  """The activation layout of a resolved conv impl and its convolutions."""

  channels_first: bool  # `[C, batch, H, W]`, else NHWC.
  channel_axis: int
  spatial_axes: tuple[int, int]
  conv3x3: Callable[[Array, Array], Array]  # (h, HWIO kernel) -> h
  conv1x1: Callable[[Array, Array], Array]


def conv_layout(impl: str) -> ConvLayout:
  """The `ConvLayout` of `impl`, a result of `resolve_conv_impl`."""
  if impl in ('patches_cf', 'patches_cf_2pass'):
    two_pass = impl == 'patches_cf_2pass'
    return ConvLayout(
      True,
      0,
      (2, 3),
      lambda h, w: conv2d_3x3_same_cf(h, w, two_pass),
      lambda h, w: jnp.tensordot(w[0, 0], h, axes=(0, 0)),
    )
  return ConvLayout(
    False,
    -1,
    (1, 2),
    lambda h, w: conv2d_3x3_same(h, w, impl),
    lambda h, w: h @ w[0, 0],
  )


def conv2d_3x3_same(x: Array, kernel: Array, impl: str) -> Array:
  """3x3 convolution, stride 1, 'SAME' padding, NHWC.

  Args:
    x: `[batch, height, width, in_channels]`.
    kernel: `[3, 3, in_channels, out_channels]` (HWIO).
    impl: 'xla' (`lax.conv_general_dilated`) or 'patches' (the nine shifted
      copies concatenated on channels, then one matmul).

  Returns:
    `[batch, height, width, out_channels]`.
  """
  if impl == 'xla':
    return jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(1, 1),
      padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )
  if impl != 'patches':
    raise ValueError(f'Unknown conv impl {impl!r}.')
  kh, kw, c_in, c_out = kernel.shape
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  # Channel order (i, j, c) matches kernel.reshape(kh * kw * c_in, c_out).
  patches = jnp.concatenate(
    [xp[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)],
    axis=-1,
  )  # [batch, h, w, kh * kw * c_in]
  return patches @ kernel.reshape(kh * kw * c_in, c_out)


def conv2d_3x3_same_cf(
  x: Array, kernel: Array, two_pass: bool = False
) -> Array:
  """3x3 convolution, stride 1, 'SAME' padding, channels-first `[C, B, H, W]`.

  The nine shifted copies of the padded input are stacked on the channel
  axis, then one matmul `[c_out, 9 c_in] @ [9 c_in, B H W]`. With
  `two_pass`, the copies are the three row shifts of the three column shifts,
  whose derivative XLA:CPU runs faster (benchmarks/README.md).

  Args:
    x: `[in_channels, batch, height, width]`.
    kernel: `[3, 3, in_channels, out_channels]` (HWIO).
    two_pass: build the shifted copies in two passes.

  Returns:
    `[out_channels, batch, height, width]`.
  """
  kh, kw, c_in, c_out = kernel.shape
  _, b, h, w = x.shape
  xp = jnp.pad(x, ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
  # Row order (i, j, c) matches kernel.reshape(kh * kw * c_in, c_out).
  if two_pass:
    columns = jnp.concatenate(
      [xp[:, :, :, j : j + w] for j in range(kw)], axis=0
    )  # [kw * c_in, batch, h + 2, w]
    patches = jnp.concatenate(
      [columns[:, :, i : i + h, :] for i in range(kh)], axis=0
    )  # [kh * kw * c_in, batch, h, w]
  else:
    patches = jnp.concatenate(
      [xp[:, :, i : i + h, j : j + w] for i in range(kh) for j in range(kw)],
      axis=0,
    )  # [kh * kw * c_in, batch, h, w]
  out = kernel.reshape(kh * kw * c_in, c_out).T @ patches.reshape(
    kh * kw * c_in, b * h * w
  )
  return out.reshape(c_out, b, h, w)


def _moments(x: Array, axes: tuple[int, ...]) -> tuple[Array, Array, Array]:
  """Two-pass `(mean, x - mean, biased variance)` over `axes` (kept)."""
  mean = jnp.mean(x, axis=axes, keepdims=True)
  centred = x - mean
  return mean, centred, jnp.mean(jnp.square(centred), axis=axes, keepdims=True)


def _per_channel(x: Array, channel_axis: int) -> tuple[tuple[int, ...], list]:
  """`(every axis but the channels', the shape a [C] vector broadcasts as)`."""
  channel_axis = channel_axis % x.ndim
  shape = [1] * x.ndim
  shape[channel_axis] = x.shape[channel_axis]
  return tuple(a for a in range(x.ndim) if a != channel_axis), shape


def batch_norm(
  x: Array,
  scale: Array,
  offset: Array,
  eps: float = 1e-5,
  channel_axis: int = -1,
) -> Array:
  """Normalises `x` per channel with its own statistics (the centred input
  serves the variance and the output: no other activation-sized residual).

  Args:
    x: activations, NHWC (`channel_axis=-1`) or `[C, B, H, W]`
      (`channel_axis=0`).
    scale: `[C]`.
    offset: `[C]`.
    eps: added to the variance.
    channel_axis: the axis of `x` that holds the channels.

  Returns:
    An array shaped like `x`.
  """
  axes, shape = _per_channel(x, channel_axis)
  _, centred, var = _moments(x, axes)
  return centred * (
    jax.lax.rsqrt(var + eps) * scale.reshape(shape)
  ) + offset.reshape(shape)


def moments(x: Array, channel_axis: int = -1) -> tuple[Array, Array]:
  """Per-channel `(mean [C], biased variance [C])` of `x` over every other
  axis, two-pass as in `batch_norm`."""
  mean, _, var = _moments(x, _per_channel(x, channel_axis)[0])
  return mean.reshape(-1), var.reshape(-1)


def normalise(
  x: Array,
  mean: Array,
  var: Array,
  scale: Array,
  offset: Array,
  eps: float = 1e-5,
  channel_axis: int = -1,
) -> Array:
  """`(x - mean) / sqrt(var + eps) * scale + offset`, per channel.

  Args:
    x: activations, channels on `channel_axis`.
    mean: `[C]`, or broadcastable against `x`.
    var: like `mean`.
    scale: `[C]`.
    offset: `[C]`.
    eps: added to the variance.
    channel_axis: the axis of `x` that holds the channels.

  Returns:
    An array shaped like `x`.
  """
  _, shape = _per_channel(x, channel_axis)
  per_channel = lambda v: v.reshape(shape) if v.ndim == 1 else v
  return (x - per_channel(mean)) * (
    jax.lax.rsqrt(per_channel(var) + eps) * scale.reshape(shape)
  ) + offset.reshape(shape)


def task_norm(
  x: Array,
  context_mean: Array,
  context_var: Array,
  context_size: Array | int,
  scale: Array,
  offset: Array,
  alpha_scale: Array,
  alpha_offset: Array,
  eps: float = 1e-5,
  channel_axis: int = -1,
  batch_axis: int = 0,
) -> Array:
  """TaskNorm-I (Bronskill et al. 2020, eq. 5-7): batch norm by the context's
  moments blended with each example's own (over its spatial axes).

  `alpha = sigmoid(alpha_scale * context_size + alpha_offset)`, `mu = alpha
  mu_C + (1 - alpha) mu_I`, `sigma^2 = alpha (sigma_C^2 + (mu_C - mu)^2) +
  (1 - alpha) (sigma_I^2 + (mu_I - mu)^2)`.

  Args:
    x: activations, channels on `channel_axis`, examples on `batch_axis`.
    context_mean: `[C]`, the context's per-channel mean.
    context_var: `[C]`, its biased variance.
    context_size: the number of context examples.
    scale: `[C]`.
    offset: `[C]`.
    alpha_scale: scalar, learned.
    alpha_offset: scalar, learned.
    eps: added to the variance.
    channel_axis: the axis of `x` that holds the channels.
    batch_axis: the axis of `x` that holds the examples.

  Returns:
    An array shaped like `x`; an example's output depends on the context and
    on itself only.
  """
  _, shape = _per_channel(x, channel_axis)
  mu_c, var_c = context_mean.reshape(shape), context_var.reshape(shape)
  # Each example's moments over its spatial axes.
  example_axes = (channel_axis % x.ndim, batch_axis % x.ndim)
  spatial = tuple(a for a in range(x.ndim) if a not in example_axes)
  mu_i, _, var_i = _moments(x, spatial)
  alpha = jax.nn.sigmoid(alpha_scale * context_size + alpha_offset)
  mean = alpha * mu_c + (1 - alpha) * mu_i
  var = alpha * (var_c + jnp.square(mu_c - mean)) + (1 - alpha) * (
    var_i + jnp.square(mu_i - mean)
  )
  return normalise(x, mean, var, scale, offset, eps, channel_axis)


def max_pool_2x2(x: Array, spatial_axes: tuple[int, int] = (1, 2)) -> Array:
  """2x2 max-pool, stride 2, 'VALID' (odd sizes are floored: 7 -> 3).

  The window's four sub-grids are reduced pairwise by selection, `where(a >=
  b or a is NaN, a, b)`: as in PyTorch, a tie's first element gets the whole
  gradient and NaN wins, and every derivative order is a selection (the
  derivative of `jnp.max` divides by the count of maxima, which can be 0 in
  MAML's second-order pass; ties are common on binary Omniglot strokes).

  Args:
    x: activations with two adjacent spatial axes.
    spatial_axes: the (height, width) axes: (1, 2) for NHWC, (2, 3) for
      `[C, B, H, W]`.

  Returns:
    `x` with both spatial sizes halved (floored).
  """
  ah, aw = spatial_axes
  if aw != ah + 1:
    raise ValueError(f'spatial_axes must be adjacent, got {spatial_axes}.')
  h2, w2 = x.shape[ah] // 2, x.shape[aw] // 2
  x = jax.lax.slice_in_dim(x, 0, 2 * h2, axis=ah)
  x = jax.lax.slice_in_dim(x, 0, 2 * w2, axis=aw)
  x = x.reshape(x.shape[:ah] + (h2, 2, w2, 2) + x.shape[aw + 1 :])
  pick = lambda i, j: jax.lax.index_in_dim(
    jax.lax.index_in_dim(x, j, axis=ah + 3, keepdims=False),
    i,
    axis=ah + 1,
    keepdims=False,
  )
  first_max = lambda a, b: jax.lax.select((a >= b) | jnp.isnan(a), a, b)
  return first_max(
    first_max(pick(0, 0), pick(0, 1)), first_max(pick(1, 0), pick(1, 1))
  )


def dropblock(
  x: Array,
  key: PRNGKey,
  drop_rate: float,
  block_size: int,
  channels_first: bool = False,
) -> Array:
  """DropBlock (Ghiasi, Lin & Le 2018, Algorithm 1): drops square regions.

  Every channel of every example gets its own mask. Block centres are drawn
  where a whole block fits with probability `gamma = drop_rate / (bh * bw) *
  (h * w) / ((h - bh + 1) * (w - bw + 1))` (eq. 1, the block clipped to the
  map), each zeroes its block, and the rest is rescaled by `count(mask) /
  count_ones(mask)`; `block_size = 1` is dropout. The mask is drawn in NHWC
  order, so both layouts drop the same activations for the same key.

  Args:
    x: activations, `[batch, H, W, C]`, or `[C, batch, H, W]` with
      `channels_first`.
    key: PRNG key of the masks.
    drop_rate: the fraction of activations to drop, `1 - keep_prob`.
    block_size: side of the square blocks.
    channels_first: the layout of `x`.

  Returns:
    `x` with the dropped blocks zeroed and the rest rescaled.
  """
  if channels_first:
    c, b, h, w = x.shape
  else:
    b, h, w, c = x.shape
  bh, bw = min(block_size, h), min(block_size, w)
  gamma = min(1.0, drop_rate * h * w / (bh * bw * (h - bh + 1) * (w - bw + 1)))
  centres = jax.random.bernoulli(key, gamma, (b, h - bh + 1, w - bw + 1, c))
  # A position is dropped if a drawn centre's block covers it: a max over
  # the block-shaped window of the centres, padded to the map's size.
  padded = jnp.pad(
    centres.astype(x.dtype),
    ((0, 0), (bh - 1, bh - 1), (bw - 1, bw - 1), (0, 0)),
  )
  dropped = jax.lax.reduce_window(
    padded,
    jnp.zeros((), x.dtype),
    jax.lax.max,
    (1, bh, bw, 1),
    (1, 1, 1, 1),
    'VALID',
  )
  kept = 1 - dropped  # [batch, H, W, C]
  kept = kept * (kept.size / jnp.maximum(jnp.sum(kept), 1))
  if channels_first:
    kept = jnp.transpose(kept, (3, 0, 1, 2))
  return x * kept
