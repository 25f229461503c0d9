"""Models as pure functions: `init(key) -> params` and `apply(params, x) -> y`.

Why plain functions rather than flax modules: meta-learning differentiates
*through* parameter updates, so the parameters must be an explicit input of
every forward pass, the object `jax.grad` differentiates and the inner loop
rewrites. With plain functions the parameters are an ordinary dict pytree that
`jax.grad`, `jax.vmap`, optax and orbax all handle directly; there is no
variable collection to thread through and no mutable batch-norm state (our
batch norm always uses batch statistics, see `conv4`). Later algorithms extend
this without a rewrite: Meta-SGD adds a learning-rate pytree of the same
structure, ANIL splits the dict into `body` and `head`, MAML++ passes a step
index to select per-step batch-norm parameters.

Every model is a `Model(init, apply)` pair, the same shape as optax's
`GradientTransformation`. `apply` is written for one batch of inputs of one
task; callers vmap it over tasks.
"""

import numbers
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jaxmeta.types import Array, Params, PRNGKey

CONV_IMPLS = ('auto', 'xla', 'patches', 'patches_cf', 'patches_cf_2pass')

# name -> `builder(num_outputs, input_shape, **options) -> Model`, filled by
# `register_backbone`; the experiment harness builds backbones by name.
BACKBONES: dict[str, Callable[..., 'Model']] = {}


def register_backbone(name: str):
  """Decorator: `@register_backbone('conv4')` adds a builder to `BACKBONES`.

  A builder takes the number of outputs (the ways, or 1 for regression), the
  shape of one input without the batch axis, and its own keyword options.
  """
  def add(builder):
    if name in BACKBONES and BACKBONES[name] is not builder:
      raise ValueError(f'Backbone {name!r} is already registered.')
    BACKBONES[name] = builder
    return builder
  return add


class Model(NamedTuple):
  """A model as a pair of pure functions.

  Attributes:
    init: `init(key) -> params`, a dict pytree of float32 arrays.
    apply: `apply(params, x) -> outputs` for one batch `x` of one task.
  """
  init: Callable[[PRNGKey], Params]
  apply: Callable[[Params, Array], Array]


def _glorot_dense(key: PRNGKey, fan_in: int, fan_out: int) -> Params:
  w = jax.nn.initializers.glorot_uniform()(key, (fan_in, fan_out), jnp.float32)
  return {'w': w, 'b': jnp.zeros((fan_out,), jnp.float32)}


def mlp(layer_sizes: Sequence[int],
        log_softmax_output: bool = False) -> Model:
  """A fully connected ReLU network.

  Args:
    layer_sizes: widths from input to output, e.g. `(784, 400, 10)` for the
      MLP of the original design document or `(1, 40, 40, 1)` for sinusoids.
    log_softmax_output: if True, the output is a log-softmax (log
      probabilities), otherwise raw outputs (logits or regression values).

  Returns:
    A `Model`; `apply(params, x)` flattens `x` of shape `[batch, ...]` to
    `[batch, layer_sizes[0]]` and returns `[batch, layer_sizes[-1]]`.
  """
  layer_sizes = tuple(int(s) for s in layer_sizes)
  if len(layer_sizes) < 2 or min(layer_sizes) < 1:
    raise ValueError(f'mlp needs >= 2 positive layer sizes, got {layer_sizes}.')

  def init(key: PRNGKey) -> Params:
    keys = jax.random.split(key, len(layer_sizes) - 1)
    return {f'dense{i}': _glorot_dense(k, n_in, n_out)
            for i, (k, n_in, n_out) in enumerate(
                zip(keys, layer_sizes[:-1], layer_sizes[1:]))}

  def apply(params: Params, x: Array) -> Array:
    h = x.reshape(x.shape[0], -1)  # [batch, layer_sizes[0]]
    num_layers = len(layer_sizes) - 1
    for i in range(num_layers):
      layer = params[f'dense{i}']
      h = h @ layer['w'] + layer['b']
      if i < num_layers - 1:
        h = jax.nn.relu(h)
    return jax.nn.log_softmax(h) if log_softmax_output else h

  return Model(init, apply)


def resolve_conv_impl(conv_impl: str = 'auto') -> str:
  """Returns the convolution implementation to use on the default backend.

  Measured on the Omniglot 5-way 1-shot second-order MAML step of Conv-4
  (`benchmarks/cpu`): on a 2-core CPU, XLA's native convolution is the
  slowest by far (its gradients and the second-order terms run as slow
  generic convolutions: 4.1 s per step at meta-batch 4), NHWC patches take
  410 ms and channels-first patches 335 ms. On an H200 (jax 0.11.2, TF32
  matmuls, meta-batch 32, the three timed interleaved in one process):
  channels-first patches 9.4 ms, NHWC patches 11.3 ms, XLA's convolution
  18.5 ms (vmapped per-task weights become grouped cuDNN convolutions that
  run as generic, FFT and layout-transposing kernels). Building the nine
  shifted copies in two passes ('patches_cf_2pass': three column shifts,
  then three row shifts of those) took the CPU step from 432 to 360 ms
  (medians, interleaved; after the max-pool change); on an H200 it is
  slower, 10.0 against 8.6 ms for 'patches_cf' (interleaved, this release's
  model). So 'patches_cf_2pass' on CPUs, 'patches_cf' on GPUs. TPUs
  run native convolutions on the MXU, so 'xla' there. All compute the same
  function (tested).

  Args:
    conv_impl: one of `CONV_IMPLS`.

  Returns:
    'xla', 'patches', 'patches_cf' or 'patches_cf_2pass'.
  """
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f'Unknown conv_impl {conv_impl!r}; choose one of '
                     f'{CONV_IMPLS}.')
  if conv_impl != 'auto':
    return conv_impl
  backend = jax.default_backend()
  if backend == 'tpu':
    return 'xla'
  if backend == 'cpu':
    return 'patches_cf_2pass'
  return 'patches_cf'


def conv2d_3x3_same(x: Array, kernel: Array, impl: str) -> Array:
  """3x3 convolution, stride 1, 'SAME' padding, NHWC.

  Args:
    x: `[batch, height, width, in_channels]`.
    kernel: `[3, 3, in_channels, out_channels]` (HWIO).
    impl: 'xla' (lax.conv_general_dilated) or 'patches' (the nine shifted
      copies of the padded input concatenated on channels, then one matmul).

  Returns:
    `[batch, height, width, out_channels]`.
  """
  if impl == 'xla':
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding='SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  if impl != 'patches':
    raise ValueError(f'Unknown conv impl {impl!r}.')
  kh, kw, c_in, c_out = kernel.shape
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  # Channel order (i, j, c) matches kernel.reshape(kh * kw * c_in, c_out).
  patches = jnp.concatenate(
      [xp[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)],
      axis=-1)  # [batch, h, w, kh * kw * c_in]
  return patches @ kernel.reshape(kh * kw * c_in, c_out)


def conv2d_3x3_same_cf(x: Array, kernel: Array,
                       two_pass: bool = False) -> Array:
  """3x3 convolution, stride 1, 'SAME' padding, channels-first `[C, B, H, W]`.

  The nine shifted copies of the padded input are stacked on the leading
  (channel) axis, and one matmul `[c_out, 9 c_in] @ [9 c_in, B H W]` does the
  rest. With channels leading, building the copies moves whole contiguous
  rows, and every matmul of the backward pass (filter gradient: contraction
  over the minor `B H W` axis of both operands) needs no transposed copy;
  XLA:CPU runs this layout 1.2x faster than NHWC patches (see
  `resolve_conv_impl`).

  With `two_pass`, the copies are built in two passes: the three column
  shifts of the padded input, `[3 c_in, B, H + 2, W]`, then the three row
  shifts of that. Same patches, same matmul; but the derivative of the copy
  (the sum of nine shifted gradients, col2im) becomes two sums of three,
  which XLA:CPU runs much faster than one nine-input fusion of pads.

  Args:
    x: `[in_channels, batch, height, width]`.
    kernel: `[3, 3, in_channels, out_channels]` (HWIO, as everywhere).
    two_pass: build the shifted copies in two passes (see above).

  Returns:
    `[out_channels, batch, height, width]`.
  """
  kh, kw, c_in, c_out = kernel.shape
  _, b, h, w = x.shape
  xp = jnp.pad(x, ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
  # Row order (i, j, c) matches kernel.reshape(kh * kw * c_in, c_out).
  if two_pass:
    columns = jnp.concatenate([xp[:, :, :, j:j + w] for j in range(kw)],
                              axis=0)  # [kw * c_in, batch, h + 2, w]
    patches = jnp.concatenate([columns[:, :, i:i + h, :] for i in range(kh)],
                              axis=0)  # [kh * kw * c_in, batch, h, w]
  else:
    patches = jnp.concatenate(
        [xp[:, :, i:i + h, j:j + w] for i in range(kh) for j in range(kw)],
        axis=0)  # [kh * kw * c_in, batch, h, w]
  out = kernel.reshape(kh * kw * c_in, c_out).T @ patches.reshape(
      kh * kw * c_in, b * h * w)
  return out.reshape(c_out, b, h, w)


def batch_norm(x: Array, scale: Array, offset: Array,
               eps: float = 1e-5, channel_axis: int = -1) -> Array:
  """Normalises with the statistics of the batch `x` itself.

  Two-pass statistics: the mean, then the mean square of `x - mean`. The
  centred input is computed once and serves the variance and the output,
  so that the derivative reduces over it twice and keeps no other
  activation-sized residual (`jnp.var` computed the mean again and made the
  CPU MAML step 1.06-1.13x slower).

  Args:
    x: activations, NHWC (`channel_axis=-1`) or `[C, B, H, W]`
      (`channel_axis=0`).
    scale: `[C]`.
    offset: `[C]`.
    eps: added to the variance.
    channel_axis: the axis of `x` that holds the channels.

  Returns:
    `x` normalised per channel over every other axis, then scaled and offset.
  """
  channel_axis = channel_axis % x.ndim
  axes = tuple(a for a in range(x.ndim) if a != channel_axis)
  shape = [1] * x.ndim
  shape[channel_axis] = x.shape[channel_axis]
  mean = jnp.mean(x, axis=axes, keepdims=True)
  centred = x - mean
  var = jnp.mean(jnp.square(centred), axis=axes, keepdims=True)
  return (centred * (jax.lax.rsqrt(var + eps) * scale.reshape(shape))
          + offset.reshape(shape))


def max_pool_2x2(x: Array, spatial_axes: tuple[int, int] = (1, 2)) -> Array:
  """2x2 max-pool, stride 2, 'VALID' (odd sizes are floored: 7 -> 3).

  The four sub-grids of each 2x2 window come from a reshape that splits each
  spatial axis into (size // 2, 2) (contiguous slices, unlike strided ones),
  and are reduced pairwise by selection: `where(a >= b or a is NaN, a, b)`.
  On a tie the earlier element of the window (row-major) wins and receives
  the whole gradient, and a NaN anywhere in the window is the result, both
  as in PyTorch's `max_pool2d`. Why not the alternatives:
  `jnp.max` over the window divides by the number of elements equal to the
  maximum in its derivative, and in MAML's second-order pass XLA may
  recompute the window in a fusion that rounds differently, find no equal
  element and return 0/0 = NaN (seen in float64 on Conv-4); `jnp.maximum`
  splits a tie's gradient in halves, through compare/select/divide chains
  that made the pool's backward pass the costliest elementwise fusion of the
  CPU MAML step. A selection differentiates to the same selection at every
  order, with no division. Ties are common: binary Omniglot strokes give
  identical patches, hence identical activations.

  Args:
    x: activations with two adjacent spatial axes `spatial_axes`: (1, 2) for
      NHWC, (2, 3) for `[C, B, H, W]`.
    spatial_axes: the (height, width) axes, adjacent.

  Returns:
    `x` with both spatial sizes halved (floored).
  """
  ah, aw = spatial_axes
  if aw != ah + 1:
    raise ValueError(f'spatial_axes must be adjacent, got {spatial_axes}.')
  h2, w2 = x.shape[ah] // 2, x.shape[aw] // 2
  x = jax.lax.slice_in_dim(x, 0, 2 * h2, axis=ah)
  x = jax.lax.slice_in_dim(x, 0, 2 * w2, axis=aw)
  x = x.reshape(x.shape[:ah] + (h2, 2, w2, 2) + x.shape[aw + 1:])
  pick = lambda i, j: jax.lax.index_in_dim(
      jax.lax.index_in_dim(x, j, axis=ah + 3, keepdims=False),
      i, axis=ah + 1, keepdims=False)
  first_max = lambda a, b: jax.lax.select((a >= b) | jnp.isnan(a), a, b)
  return first_max(first_max(pick(0, 0), pick(0, 1)),
                   first_max(pick(1, 0), pick(1, 1)))


@register_backbone('conv4')
def conv4(num_classes: int,
          input_shape: Sequence[int] = (28, 28, 1),
          num_filters: int = 64,
          num_blocks: int = 4,
          conv_impl: str = 'auto') -> Model:
  """Conv-4, the standard few-shot backbone (Vinyals et al. 2016; Finn et al.

  2017): `num_blocks` x [3x3 conv, `num_filters` filters, batch norm, ReLU,
  2x2 max-pool], flatten, linear head with `num_classes` outputs (logits).

  Batch norm always normalises with the statistics of the batch being
  processed, as in MAML's reference implementation: there are no running
  averages. During adaptation the statistics are the support set's; the loss
  on the query set normalises with the query set's statistics. At test time
  this is transductive: a query image's prediction depends on the other query
  images of its task (all `ways * queries` of them are scored together), as in
  the published MAML numbers. Score queries one by one and accuracy changes.

  The ReLU is applied after the max-pool: the two commute (ReLU is monotone),
  ties included (`max_pool_2x2` passes a tie's gradient to the first element
  of the window; PyTorch's pool of the ReLU does too, and where the maximum
  is <= 0 both pass no gradient), and the ReLU and its derivative then touch
  a quarter of the elements.

  Each conv layer has a bias `b` in its parameters, as in the reference
  Conv-4 and PyTorch's `nn.Conv2d`, but `apply` does not add it: batch norm
  subtracts the batch mean right after, which cancels any bias exactly
  (`(h + b) - mean(h + b) = h - mean(h)`, the variance is unchanged). So the
  function is the same, and the gradient of `b` is exactly zero instead of
  rounding noise around zero. Adding it anyway cost a full pass over every
  activation for its gradient (the CPU MAML step 1.07-1.11x slower).

  Args:
    num_classes: width of the head (the number of ways).
    input_shape: `(height, width, channels)` of one image.
    num_filters: filters of every conv layer (64 for Omniglot, 32 for 84x84).
    num_blocks: number of conv blocks.
    conv_impl: one of `CONV_IMPLS`; see `resolve_conv_impl`. All give the
      same function of the same parameters (HWIO kernels, NHWC inputs).

  Returns:
    A `Model`; `apply(params, x)` maps `[batch, H, W, C]` to logits
    `[batch, num_classes]`.
  """
  for name, value in (('num_classes', num_classes),
                      ('num_filters', num_filters), ('num_blocks', num_blocks)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (
        value < 1):
      raise ValueError(f'conv4 needs {name} to be an int >= 1, got {value!r}.')
  if len(input_shape) != 3 or min(int(s) for s in input_shape) < 1:
    raise ValueError('conv4 needs input_shape = (height, width, channels) '
                     f'of positive sizes, got {tuple(input_shape)}.')
  height, width, channels = (int(s) for s in input_shape)
  impl = resolve_conv_impl(conv_impl)
  spatial_h, spatial_w = height, width
  for _ in range(num_blocks):
    spatial_h, spatial_w = spatial_h // 2, spatial_w // 2
  if spatial_h < 1 or spatial_w < 1:
    raise ValueError(f'Input {input_shape} is too small for {num_blocks} '
                     'blocks of 2x2 max-pooling.')
  feature_dim = spatial_h * spatial_w * num_filters

  def init(key: PRNGKey) -> Params:
    keys = jax.random.split(key, num_blocks + 1)
    params = {}
    c_in = channels
    for i in range(num_blocks):
      params[f'conv{i}'] = {
          'w': jax.nn.initializers.glorot_uniform()(
              keys[i], (3, 3, c_in, num_filters), jnp.float32),
          'b': jnp.zeros((num_filters,), jnp.float32),
          'scale': jnp.ones((num_filters,), jnp.float32),
          'offset': jnp.zeros((num_filters,), jnp.float32),
      }
      c_in = num_filters
    params['head'] = _glorot_dense(keys[-1], feature_dim, num_classes)
    return params

  def apply(params: Params, x: Array) -> Array:
    if impl in ('patches_cf', 'patches_cf_2pass'):
      two_pass = impl == 'patches_cf_2pass'
      h = jnp.transpose(x, (3, 0, 1, 2))  # [C, batch, H, W]
      for i in range(num_blocks):
        p = params[f'conv{i}']
        h = conv2d_3x3_same_cf(h, p['w'], two_pass)  # No bias: see above.
        h = batch_norm(h, p['scale'], p['offset'], channel_axis=0)
        h = jax.nn.relu(max_pool_2x2(h, spatial_axes=(2, 3)))
      h = jnp.transpose(h, (1, 2, 3, 0))  # NHWC: the head's feature order
    else:
      h = x  # [batch, H, W, C]
      for i in range(num_blocks):
        p = params[f'conv{i}']
        h = conv2d_3x3_same(h, p['w'], impl)  # No bias: see above.
        h = batch_norm(h, p['scale'], p['offset'])
        h = jax.nn.relu(max_pool_2x2(h))
    h = h.reshape(h.shape[0], -1)  # [batch, feature_dim]
    return h @ params['head']['w'] + params['head']['b']

  return Model(init, apply)


@register_backbone('mlp')
def mlp_backbone(num_outputs: int, input_shape: Sequence[int],
                 hidden: Sequence[int] = (40, 40)) -> Model:
  """`mlp` with the backbone signature: flattened input, `hidden`, outputs.

  Args:
    num_outputs: width of the output layer.
    input_shape: shape of one input (flattened to its size).
    hidden: widths of the hidden ReLU layers.

  Returns:
    `mlp((prod(input_shape), *hidden, num_outputs))`.
  """
  size = 1
  for s in input_shape:
    size *= int(s)
  return mlp((size, *hidden, num_outputs))
