"""ResNet-12, the residual backbone of TADAM and MetaOptNet."""

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxmeta.models.base import check_images
from jaxmeta.models.base import Model
from jaxmeta.models.base import register_backbone
from jaxmeta.models import norms
from jaxmeta.models.layers import _glorot_dense
from jaxmeta.models.layers import conv_layout
from jaxmeta.models.layers import dropblock
from jaxmeta.models.layers import max_pool_2x2
from jaxmeta.models.layers import pooled_size
from jaxmeta.models.layers import resolve_conv_impl
from jaxmeta.types import Array, Params, PRNGKey

_LEAKY_SLOPE = 0.1  # TADAM and MetaOptNet: LeakyReLU(0.1).


def resnet12_embed(
  params: Params,
  x: Array,
  *,
  key: PRNGKey | None = None,
  drop_rate: float = 0.1,
  dropblock_size: int = 5,
  early_dropout: bool = False,
  conv_impl: str = 'auto',
  normaliser: norms.Normaliser = norms.transductive,
) -> Array:
  """The ResNet-12 embedding (widths read from `params`; see `resnet12`).

  Args:
    params: `resnet12(...).init(key)`; the head is not used.
    x: images `[batch, H, W, C]`.
    key: PRNG key of the DropBlock masks, or None (no DropBlock).
    drop_rate: see `resnet12`.
    dropblock_size: see `resnet12`.
    early_dropout: see `resnet12`.
    conv_impl: see `resnet12`.
    normaliser: the batch-norm layers (`jaxmeta.models.norms`).

  Returns:
    Embeddings `[batch, widths[-1]]`.
  """
  layout = conv_layout(resolve_conv_impl(conv_impl))
  num_blocks = sum(1 for name in params if name.startswith('block'))
  channels_first = layout.channels_first
  h = jnp.transpose(x, (3, 0, 1, 2)) if channels_first else x
  for i in range(num_blocks):
    p = params[f'block{i}']
    out = h

    def norm(h, name, i=i, p=p):
      return normaliser(f'block{i}_{name}', h, p[name], layout.channel_axis)

    for j in range(3):
      out = norm(layout.conv3x3(out, p[f'conv{j}']), f'bn{j}')
      if j < 2:
        out = jax.nn.leaky_relu(out, _LEAKY_SLOPE)
    out = out + norm(layout.conv1x1(h, p['shortcut']), 'shortcut_bn')
    # The leaky ReLU after the pool: both commute (it is increasing), ties
    # included, and it then touches a quarter of the elements.
    h = jax.nn.leaky_relu(max_pool_2x2(out, layout.spatial_axes), _LEAKY_SLOPE)
    last_two = i >= num_blocks - 2
    if key is not None and drop_rate > 0 and (last_two or early_dropout):
      h = dropblock(
        h,
        jax.random.fold_in(key, i),
        drop_rate,
        dropblock_size if last_two else 1,
        channels_first,
      )
  h = jnp.mean(h, axis=layout.spatial_axes)  # [C, batch] or [batch, C]
  return h.T if channels_first else h


@register_backbone('resnet12')
def resnet12(
  num_classes: int,
  input_shape: Sequence[int] = (84, 84, 3),
  *,
  widths: Sequence[int] = (64, 160, 320, 640),
  drop_rate: float = 0.1,
  dropblock_size: int = 5,
  early_dropout: bool = False,
  conv_impl: str = 'auto',
  batch_norm: str = 'transductive',
) -> Model:
  """ResNet-12 (Oreshkin et al. 2018; Lee et al. 2019) with DropBlock.

  `len(widths)` residual blocks of three bias-free 3x3 convolutions with
  batch norm (a leaky ReLU, slope 0.1, after the first two) plus a 1x1
  shortcut with batch norm, then a leaky ReLU and a 2x2 max-pool; global
  average pooling (`resnet12_embed`) and a linear head. Kernels are He-normal
  fan-out (MetaOptNet), the head Glorot-uniform; the standard widths give
  the body's usual 12,424,320 parameters. DropBlock follows the pool of the
  last two blocks at a constant rate (MetaOptNet ramps it up over 40k
  passes), only when `apply` is given a key.

  Args:
    num_classes: width of the head (the number of ways).
    input_shape: `(height, width, channels)` of one image, e.g. (84, 84, 3).
    widths: the blocks' numbers of filters.
    drop_rate: DropBlock's drop rate (`1 - keep_prob`); 0 disables it.
    dropblock_size: side of the dropped blocks (clipped to the map).
    early_dropout: also plain dropout after the earlier blocks (MetaOptNet).
    conv_impl: one of `CONV_IMPLS`; see `resolve_conv_impl`.
    batch_norm: one of `jaxmeta.models.norms.MODES`; the layers are named
      `block{i}_bn{j}` and `block{i}_shortcut_bn`.

  Returns:
    A `Model` mapping `[batch, H, W, C]` to logits `[batch, num_classes]`;
    `embed` gives `[batch, widths[-1]]`, `feature_dim = widths[-1]`.

  References:
    Oreshkin, Rodriguez & Lacoste 2018, "TADAM", Section 3 (ResNet-12).
    Lee et al. 2019, "Meta-Learning with Differentiable Convex Optimization"
    (MetaOptNet), Section 4.2. Ghiasi, Lin & Le 2018, "DropBlock".
  """
  norms.check_mode(batch_norm)
  height, width, channels = (int(s) for s in input_shape)
  widths = tuple(int(c) for c in widths)
  resolve_conv_impl(conv_impl)  # Fails early on an unknown name.
  if not widths or min(widths) < 1:
    raise ValueError(f'resnet12 needs >= 1 positive widths, got {widths}.')
  pooled_size(input_shape, len(widths))
  if not 0 <= drop_rate < 1 or dropblock_size < 1:
    raise ValueError(
      f'drop_rate={drop_rate} must be in [0, 1) and '
      f'dropblock_size={dropblock_size} >= 1.'
    )
  he_normal = jax.nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

  def init(key: PRNGKey) -> Params:
    keys = jax.random.split(key, len(widths) + 1)
    params = {}
    c_in = channels
    for i, c in enumerate(widths):
      k = jax.random.split(keys[i], 4)
      bn = lambda: norms.init_batch_norm(c, batch_norm)
      block = {}
      for j in range(3):
        block[f'conv{j}'] = he_normal(
          k[j], (3, 3, c_in if j == 0 else c, c), jnp.float32
        )
        block[f'bn{j}'] = bn()
      block['shortcut'] = he_normal(k[3], (1, 1, c_in, c), jnp.float32)
      block['shortcut_bn'] = bn()
      params[f'block{i}'] = block
      c_in = c
    params['head'] = _glorot_dense(keys[-1], widths[-1], num_classes)
    if batch_norm == 'running':
      params[norms.STATISTICS] = norms.init_statistics(
        {
          f'block{i}_{name}': c
          for i, c in enumerate(widths)
          for name in ('bn0', 'bn1', 'bn2', 'shortcut_bn')
        }
      )
    return params

  def forward(params, x, normaliser, *, key=None, step=None):
    del step  # No per-step parameters.
    check_images(x, (height, width, channels), 'resnet12')
    return resnet12_embed(
      params,
      x,
      key=key,
      drop_rate=drop_rate,
      dropblock_size=dropblock_size,
      early_dropout=early_dropout,
      conv_impl=conv_impl,
      normaliser=normaliser,
    )

  return norms.model_from_forward(init, forward, widths[-1], batch_norm)
