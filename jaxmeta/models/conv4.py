"""Conv-4, the standard few-shot backbone."""

import numbers
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxmeta.models.base import check_images
from jaxmeta.models.base import Model
from jaxmeta.models.base import register_backbone
from jaxmeta.models import norms
from jaxmeta.models.layers import _glorot_dense
from jaxmeta.models.layers import conv_layout
from jaxmeta.models.layers import max_pool_2x2
from jaxmeta.models.layers import pooled_size
from jaxmeta.models.layers import resolve_conv_impl
from jaxmeta.types import Params, PRNGKey


@register_backbone('conv4')
def conv4(
  num_classes: int,
  input_shape: Sequence[int] = (28, 28, 1),
  num_filters: int = 64,
  num_blocks: int = 4,
  conv_impl: str = 'auto',
  batch_norm: str = 'transductive',
) -> Model:
  """Conv-4, the standard few-shot backbone (Vinyals et al. 2016).

  `num_blocks` x [3x3 conv, batch norm, ReLU, 2x2 max-pool], flatten, linear
  head, as in Finn et al. 2017. The ReLU follows the pool (they commute, ties'
  gradients included) to touch a quarter of the elements; the convolutions
  have no bias, which the batch norm right after would cancel exactly.

  Args:
    num_classes: width of the head (the number of ways).
    input_shape: `(height, width, channels)` of one image.
    num_filters: filters of every conv layer (64 for Omniglot, 32 for 84x84).
    num_blocks: number of conv blocks.
    conv_impl: one of `CONV_IMPLS`; see `resolve_conv_impl`.
    batch_norm: one of `jaxmeta.models.norms.MODES` (default: every batch
      normalises itself, as MAML's reference code); layers named `conv{i}`.

  Returns:
    A `Model` mapping `[batch, H, W, C]` to logits `[batch, num_classes]`;
    `embed` gives the flattened last block, `feature_dim = (H >> num_blocks)
    * (W >> num_blocks) * num_filters`.
  """
  for name, value in (
    ('num_classes', num_classes),
    ('num_filters', num_filters),
    ('num_blocks', num_blocks),
  ):
    if (
      isinstance(value, bool)
      or not isinstance(value, numbers.Integral)
      or (value < 1)
    ):
      raise ValueError(f'conv4 needs {name} to be an int >= 1, got {value!r}.')
  if len(input_shape) != 3 or min(int(s) for s in input_shape) < 1:
    raise ValueError(
      'conv4 needs input_shape = (height, width, channels) '
      f'of positive sizes, got {tuple(input_shape)}.'
    )
  norms.check_mode(batch_norm)
  height, width, channels = (int(s) for s in input_shape)
  impl = resolve_conv_impl(conv_impl)
  spatial_h, spatial_w = pooled_size(input_shape, num_blocks)
  feature_dim = spatial_h * spatial_w * num_filters

  def init(key: PRNGKey) -> Params:
    keys = jax.random.split(key, num_blocks + 1)
    params = {}
    c_in = channels
    for i in range(num_blocks):
      params[f'conv{i}'] = {
        'w': jax.nn.initializers.glorot_uniform()(
          keys[i], (3, 3, c_in, num_filters), jnp.float32
        ),
        **norms.init_batch_norm(num_filters, batch_norm),
      }
      c_in = num_filters
    params['head'] = _glorot_dense(keys[-1], feature_dim, num_classes)
    if batch_norm == 'running':
      params[norms.STATISTICS] = norms.init_statistics(
        {f'conv{i}': num_filters for i in range(num_blocks)}
      )
    return params

  def forward(params, x, normaliser, *, key=None, step=None):
    del key, step  # Deterministic, no per-step parameters.
    check_images(x, (height, width, channels), 'conv4')
    layout = conv_layout(impl)
    h = jnp.transpose(x, (3, 0, 1, 2)) if layout.channels_first else x
    for i in range(num_blocks):
      p = params[f'conv{i}']
      h = layout.conv3x3(h, p['w'])  # No bias: see the docstring.
      h = normaliser(f'conv{i}', h, p, layout.channel_axis)
      h = jax.nn.relu(max_pool_2x2(h, layout.spatial_axes))
    if layout.channels_first:
      h = jnp.transpose(h, (1, 2, 3, 0))  # NHWC: the head's feature order.
    return h.reshape(h.shape[0], -1)  # [batch, feature_dim]

  return norms.model_from_forward(init, forward, feature_dim, batch_norm)
