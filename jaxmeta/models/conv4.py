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
from jaxmeta.models.layers import conv2d_3x3_same
from jaxmeta.models.layers import conv2d_3x3_same_cf
from jaxmeta.models.layers import max_pool_2x2
from jaxmeta.models.layers import resolve_conv_impl
from jaxmeta.types import Array, Params, PRNGKey


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

  `num_blocks` x [3x3 conv, `num_filters` filters, batch norm, ReLU, 2x2
  max-pool], flatten, linear head with `num_classes` outputs (logits), as in
  Finn et al. 2017.

  With `batch_norm='transductive'` (the default), batch norm normalises with
  the statistics of the batch being processed, as in MAML's reference
  implementation: there are no running averages. During adaptation the
  statistics are the support set's; the loss on the query set normalises
  with the query set's statistics. At test time this is transductive: a
  query image's prediction depends on the other query images of its task
  (all `ways * queries` of them are scored together), as in the published
  MAML numbers. The other modes ('support', 'running', 'tasknorm'; see
  `jaxmeta.models.norms`) score each image independently of the others.

  The ReLU is applied after the max-pool: the two commute (ReLU is monotone),
  ties included (`max_pool_2x2` passes a tie's gradient to the first element
  of the window; PyTorch's pool of the ReLU does too, and where the maximum
  is <= 0 both pass no gradient), and the ReLU and its derivative then touch
  a quarter of the elements.

  The conv layers have no bias, unlike the reference Conv-4 and PyTorch's
  `nn.Conv2d`: batch norm subtracts the batch mean right after, which cancels
  any bias exactly (`(h + b) - mean(h + b) = h - mean(h)`, the variance is
  unchanged), so the function is the same and a bias would be a parameter
  whose gradient is exactly zero.

  Args:
    num_classes: width of the head (the number of ways).
    input_shape: `(height, width, channels)` of one image.
    num_filters: filters of every conv layer (64 for Omniglot, 32 for 84x84).
    num_blocks: number of conv blocks.
    conv_impl: one of `CONV_IMPLS`; see `resolve_conv_impl`. All give the
      same function of the same parameters (HWIO kernels, NHWC inputs).
    batch_norm: one of `jaxmeta.models.norms.MODES`. 'running' adds the
      running statistics (`params['batch_stats']`, one entry per block
      `conv{i}`), 'tasknorm' the blend parameters `alpha_scale` and
      `alpha_offset` to each block.

  Returns:
    A `Model`; `apply(params, x, *, key=None, step=None)` maps `[batch, H, W,
    C]` to logits `[batch, num_classes]` (`key` and `step` are accepted and
    ignored); `embed` gives the flattened features of the last block,
    `feature_dim = (H // 2**num_blocks) * (W // 2**num_blocks) *
    num_filters`.
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
  spatial_h, spatial_w = height, width
  for _ in range(num_blocks):
    spatial_h, spatial_w = spatial_h // 2, spatial_w // 2
  if spatial_h < 1 or spatial_w < 1:
    raise ValueError(
      f'Input {input_shape} is too small for {num_blocks} '
      'blocks of 2x2 max-pooling.'
    )
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
        'scale': jnp.ones((num_filters,), jnp.float32),
        'offset': jnp.zeros((num_filters,), jnp.float32),
      }
      if batch_norm == 'tasknorm':
        params[f'conv{i}'].update(norms.init_task_norm())
      c_in = num_filters
    params['head'] = _glorot_dense(keys[-1], feature_dim, num_classes)
    if batch_norm == 'running':
      params[norms.STATISTICS] = norms.init_statistics(
        {f'conv{i}': num_filters for i in range(num_blocks)}
      )
    return params

  def forward(
    params: Params,
    x: Array,
    normaliser: norms.Normaliser,
    *,
    key: PRNGKey | None = None,
    step: Array | None = None,
  ) -> Array:
    del key, step  # Deterministic, no per-step parameters.
    check_images(x, (height, width, channels), 'conv4')
    if impl in ('patches_cf', 'patches_cf_2pass'):
      two_pass = impl == 'patches_cf_2pass'
      h = jnp.transpose(x, (3, 0, 1, 2))  # [C, batch, H, W]
      for i in range(num_blocks):
        p = params[f'conv{i}']
        h = conv2d_3x3_same_cf(
          h, p['w'], two_pass
        )  # No bias: see the docstring.
        h = normaliser(f'conv{i}', h, p, 0)
        h = jax.nn.relu(max_pool_2x2(h, spatial_axes=(2, 3)))
      h = jnp.transpose(h, (1, 2, 3, 0))  # NHWC: the head's feature order
    else:
      h = x  # [batch, H, W, C]
      for i in range(num_blocks):
        p = params[f'conv{i}']
        h = conv2d_3x3_same(h, p['w'], impl)  # No bias: see the docstring.
        h = normaliser(f'conv{i}', h, p, -1)
        h = jax.nn.relu(max_pool_2x2(h))
    return h.reshape(h.shape[0], -1)  # [batch, feature_dim]

  return norms.model_from_forward(init, forward, feature_dim, batch_norm)
