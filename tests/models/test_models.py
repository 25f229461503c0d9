"""Models: shapes, batch norm on batch statistics, convolution variants."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmeta
from jaxmeta import models

# Every implementation; 'xla' first (the reference).
IMPLS = ('xla', 'patches', 'patches_cf', 'patches_cf_2pass')


def test_mlp_of_the_design_document_outputs_log_probabilities():
  model = jaxmeta.mlp((784, 400, 10), log_softmax_output=True)
  params = model.init(jax.random.key(0))
  assert params['dense0']['w'].shape == (784, 400)
  assert params['dense1']['w'].shape == (400, 10)
  x = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1))
  out = model.apply(params, x)
  assert out.shape == (6, 10)
  np.testing.assert_allclose(jnp.exp(out).sum(-1), np.ones(6), rtol=1e-5)


def test_mlp_matches_numpy_forward():
  model = jaxmeta.mlp((3, 4, 2))
  params = model.init(jax.random.key(0))
  x = np.random.RandomState(0).randn(5, 3).astype(np.float32)
  p = jax.tree.map(np.asarray, params)
  h = np.maximum(x @ p['dense0']['w'] + p['dense0']['b'], 0)
  expected = h @ p['dense1']['w'] + p['dense1']['b']
  np.testing.assert_allclose(
    model.apply(params, x), expected, rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize(
  'input_shape,filters,ways', [((28, 28, 1), 64, 5), ((84, 84, 3), 32, 20)]
)
def test_conv4_shapes(input_shape, filters, ways):
  model = jaxmeta.conv4(ways, input_shape, num_filters=filters)
  # Shapes only: traced, not compiled or run.
  params = jax.eval_shape(model.init, jax.random.key(0))
  spatial = input_shape[0] // 16  # Four VALID 2x2 pools: 28 -> 1, 84 -> 5.
  assert params['head']['w'].shape == (spatial * spatial * filters, ways)
  x = jnp.zeros((3,) + input_shape)
  assert jax.eval_shape(model.apply, params, x).shape == (3, ways)


def _numpy_conv3x3_same(x, w):
  """Direct loop over kernel taps: an independent reference."""
  b, h, wd, _ = x.shape
  out = np.zeros((b, h, wd, w.shape[-1]), np.float64)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  for i in range(3):
    for j in range(3):
      out += np.einsum(
        'bhwc,cf->bhwf', xp[:, i : i + h, j : j + wd, :], w[i, j]
      )
  return out


@pytest.mark.parametrize('impl', ['xla', 'patches'])
def test_conv_impls_match_direct_convolution(impl):
  rng = np.random.RandomState(0)
  x = rng.randn(2, 7, 6, 3).astype(np.float32)
  w = rng.randn(3, 3, 3, 4).astype(np.float32)
  np.testing.assert_allclose(
    models.conv2d_3x3_same(x, w, impl),
    _numpy_conv3x3_same(x, w),
    rtol=1e-4,
    atol=1e-4,
  )


def test_channels_first_conv_matches_direct_convolution():
  rng = np.random.RandomState(0)
  x = rng.randn(2, 7, 6, 3).astype(np.float32)  # NHWC
  w = rng.randn(3, 3, 3, 4).astype(np.float32)
  out = models.conv2d_3x3_same_cf(np.transpose(x, (3, 0, 1, 2)), w)
  np.testing.assert_allclose(
    np.transpose(out, (1, 2, 3, 0)),
    _numpy_conv3x3_same(x, w),
    rtol=1e-4,
    atol=1e-4,
  )


def test_batch_norm_channel_axis():
  x = jax.random.normal(jax.random.key(0), (3, 5, 4, 2)) * 3.0 + 1.0  # NHWC
  scale, offset = jnp.array([2.0, 0.5]), jnp.array([0.1, -1.0])
  nhwc = models.batch_norm(x, scale, offset)
  cf = models.batch_norm(
    jnp.transpose(x, (3, 0, 1, 2)), scale, offset, channel_axis=0
  )
  np.testing.assert_allclose(
    np.transpose(cf, (1, 2, 3, 0)), nhwc, rtol=1e-5, atol=1e-5
  )
  xn = np.asarray(x, np.float64)
  mean, var = xn.mean(axis=(0, 1, 2)), xn.var(axis=(0, 1, 2))
  np.testing.assert_allclose(
    nhwc,
    (xn - mean) / np.sqrt(var + 1e-5) * scale + offset,
    rtol=1e-5,
    atol=1e-5,
  )


@pytest.mark.parametrize('channel_axis', [-1, 0])
def test_batch_norm_gradients_match_the_textbook_backward(channel_axis):
  # float64, so that the comparison is exact to rounding. First order
  # against the closed-form backward pass (Ioffe & Szegedy 2015) in NumPy;
  # second order (a meta-gradient differentiates the gradient again)
  # against autodiff of the textbook formula with `jnp.var`.
  rng = np.random.RandomState(0)
  x = rng.randn(3, 4, 5, 2) * 3.0 + 1.0  # NHWC
  g = rng.randn(3, 4, 5, 2)
  scale, offset = np.array([2.0, -0.5]), np.array([0.1, -1.0])
  to_layout = lambda a: (
    a if channel_axis == -1 else np.transpose(a, (3, 0, 1, 2))
  )
  xl, gl = to_layout(x), to_layout(g)

  def textbook(x, scale, offset):
    axes = tuple(a for a in range(4) if a != channel_axis % 4)
    shape = [1] * 4
    shape[channel_axis] = 2
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.var(x, axis=axes, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale.reshape(
      shape
    ) + offset.reshape(shape)

  ours = lambda x, s, o: models.batch_norm(x, s, o, channel_axis=channel_axis)
  loss = lambda bn: lambda x, s, o: jnp.sum(bn(x, s, o) * gl)
  with jax.enable_x64(True):
    grads = jax.grad(loss(ours), argnums=(0, 1, 2))(
      jnp.asarray(xl), jnp.asarray(scale), jnp.asarray(offset)
    )
    # Closed form, in NHWC.
    n = x.shape[0] * x.shape[1] * x.shape[2]
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    inv = 1.0 / np.sqrt(var + 1e-5)
    xhat = (x - mean) * inv
    dscale = np.sum(g * xhat, axis=(0, 1, 2))
    doffset = np.sum(g, axis=(0, 1, 2))
    dx = scale * inv / n * (n * g - doffset - xhat * dscale)
    np.testing.assert_allclose(grads[0], to_layout(dx), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads[1], dscale, rtol=1e-10)
    np.testing.assert_allclose(grads[2], doffset, rtol=1e-10)

    def grad_norm(bn):
      def f(x, s, o):
        return sum(
          jnp.sum(jnp.square(t))
          for t in jax.grad(loss(bn), argnums=(0, 1, 2))(x, s, o)
        )

      return f

    args = (jnp.asarray(xl), jnp.asarray(scale), jnp.asarray(offset))
    second = jax.grad(grad_norm(ours), argnums=(0, 1, 2))(*args)
    expected = jax.grad(grad_norm(textbook), argnums=(0, 1, 2))(*args)
    for got, want in zip(second, expected):
      np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_conv_impls_give_the_same_maml_gradient():
  x = jax.random.uniform(jax.random.key(1), (2, 10, 28, 28, 1))
  y = jnp.tile(jnp.arange(5).repeat(2), (2, 1))
  tasks = jaxmeta.Task(x[:, :5], y[:, ::2], x[:, 5:], y[:, ::2])
  grads = {}
  for impl in IMPLS:
    model = jaxmeta.conv4(5, num_filters=8, conv_impl=impl)
    learner = jaxmeta.maml(model, jaxmeta.classification_loss, 0.4, 2)
    params = model.init(jax.random.key(0))
    grads[impl], _ = jax.jit(jaxmeta.meta_gradient, static_argnums=0)(
      learner, params, tasks
    )
  for impl in IMPLS[1:]:
    chex.assert_trees_all_close(grads['xla'], grads[impl], rtol=2e-3, atol=1e-5)


@pytest.mark.slow
def test_conv_impls_give_the_same_maml_gradient_in_float64():
  # Float32 near-ties of max-pool windows and ReLUs move float32 gradients
  # by ~1e-4 between implementations; in float64 they must agree exactly
  # (up to rounding), second-order terms through two inner steps included.
  with jax.enable_x64(True):
    x = jax.random.uniform(jax.random.key(1), (2, 10, 12, 12, 2), jnp.float64)
    y = jnp.tile(jnp.arange(5).repeat(2), (2, 1))
    tasks = jaxmeta.Task(x[:, :5], y[:, ::2], x[:, 5:], y[:, ::2])
    grads = {}
    for impl in IMPLS:
      model = jaxmeta.conv4(
        5, (12, 12, 2), num_filters=6, num_blocks=2, conv_impl=impl
      )
      learner = jaxmeta.maml(model, jaxmeta.classification_loss, 0.4, 2)
      params = jax.tree.map(
        lambda a: a.astype(jnp.float64), model.init(jax.random.key(0))
      )
      grads[impl], _ = jaxmeta.meta_gradient(learner, params, tasks)
  for impl in IMPLS[1:]:
    chex.assert_trees_all_close(
      grads[impl], grads['xla'], rtol=1e-9, atol=1e-12
    )


@pytest.mark.slow
@pytest.mark.parametrize('input_shape', [(28, 28, 1), (21, 19, 3)])
def test_conv4_impls_are_the_same_function_of_the_same_parameters(input_shape):
  x = jax.random.uniform(jax.random.key(1), (6,) + input_shape)
  out = {}
  for impl in IMPLS:
    model = jaxmeta.conv4(5, input_shape, num_filters=8, conv_impl=impl)
    out[impl] = model.apply(model.init(jax.random.key(0)), x)
  for impl in IMPLS[1:]:
    np.testing.assert_allclose(
      out[impl], out['xla'], rtol=1e-4, atol=1e-4, err_msg=impl
    )


def test_resolve_conv_impl():
  assert jaxmeta.resolve_conv_impl('xla') == 'xla'
  assert jaxmeta.resolve_conv_impl('patches_cf') == 'patches_cf'
  expected = {'tpu': 'xla', 'cpu': 'patches_cf_2pass'}.get(
    jax.default_backend(), 'patches_cf'
  )
  assert jaxmeta.resolve_conv_impl('auto') == expected
  with pytest.raises(ValueError, match='Unknown conv_impl'):
    jaxmeta.resolve_conv_impl('winograd')


def test_batch_norm_uses_the_statistics_of_the_batch():
  model = jaxmeta.conv4(5, num_filters=8)
  params = model.init(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (10, 28, 28, 1))
  apply = jax.jit(model.apply)  # Op by op, the first calls take seconds.
  # Batch statistics make every block invariant to a positive rescaling of
  # its input (up to eps); running averages or no normalisation would not be.
  np.testing.assert_allclose(
    apply(params, 10.0 * x), apply(params, x), rtol=1e-3, atol=1e-3
  )
  # And an image's output depends on the rest of its batch (transductive).
  alone = apply(params, x[:1])
  together = apply(params, x)[:1]
  assert not np.allclose(alone, together, atol=1e-3)


def test_max_pool_floors_odd_sizes():
  x = jnp.arange(2 * 7 * 7 * 1, dtype=jnp.float32).reshape(2, 7, 7, 1)
  out = models.max_pool_2x2(x)
  assert out.shape == (2, 3, 3, 1)
  np.testing.assert_array_equal(
    out[0, :, :, 0], np.asarray(x)[0, 1:6:2, 1:6:2, 0]
  )


def test_max_pool_matches_numpy_on_any_spatial_axes():
  x = np.random.RandomState(0).randn(3, 2, 7, 6).astype(np.float32)
  ref = x[:, :, :6, :6].reshape(3, 2, 3, 2, 3, 2).max(axis=(3, 5))
  np.testing.assert_array_equal(
    models.max_pool_2x2(x, spatial_axes=(2, 3)), ref
  )
  np.testing.assert_array_equal(
    models.max_pool_2x2(np.transpose(x, (1, 2, 3, 0))),
    np.transpose(ref, (1, 2, 3, 0)),
  )
  with pytest.raises(ValueError, match='adjacent'):
    models.max_pool_2x2(x, spatial_axes=(1, 3))


def test_unknown_conv_impl_is_rejected():
  with pytest.raises(ValueError, match='conv_impl'):
    jaxmeta.conv4(5, conv_impl='cudnn')


@pytest.mark.slow
@pytest.mark.parametrize('impl', ['xla', 'patches_cf'])
def test_second_order_maml_gradient_through_max_pool_is_finite_in_float64(impl):
  # Regression: a jnp.max-over-window pool divides by the count of elements
  # equal to the max; XLA's re-rounded recomputation made that 0/0 here.
  with jax.enable_x64(True):
    model = jaxmeta.conv4(5, num_filters=64, conv_impl=impl)
    params = jax.tree.map(
      lambda a: a.astype(jnp.float64), model.init(jax.random.key(0))
    )
    x = jax.random.normal(jax.random.PRNGKey(1), (80, 28, 28, 1), jnp.float64)
    y = jnp.tile(jnp.arange(5), 16)
    learner = jaxmeta.maml(model, jaxmeta.classification_loss, 0.4, 1)
    grad, _ = learner.task_update(
      params, jaxmeta.Task(x[:5], y[:5], x[5:], y[5:])
    )
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grad))


def test_max_pool_gradient_selects_the_maximum():
  x = jnp.array([[1.0, 3.0], [2.0, 0.0]]).reshape(1, 2, 2, 1)
  g = jax.grad(lambda v: models.max_pool_2x2(v).sum())(x)
  np.testing.assert_array_equal(g.reshape(2, 2), [[0.0, 1.0], [0.0, 0.0]])


@pytest.mark.parametrize(
  'window, winner',
  [
    ([[2.0, 2.0], [2.0, 2.0]], (0, 0)),
    ([[1.0, 2.0], [2.0, 2.0]], (0, 1)),
    ([[1.0, 0.0], [2.0, 2.0]], (1, 0)),
    ([[-1.0, 0.0], [-3.0, 0.0]], (0, 1)),
  ],
)
def test_max_pool_tie_gives_the_whole_gradient_to_the_first_maximum(
  window, winner
):
  # PyTorch's max_pool2d does the same: the first maximum, row-major.
  x = jnp.array(window).reshape(1, 2, 2, 1)
  expected = np.zeros((2, 2), np.float32)
  expected[winner] = 1.0
  g = jax.grad(lambda v: models.max_pool_2x2(v).sum())(x)
  np.testing.assert_array_equal(g.reshape(2, 2), expected)
  # Second order: the selection is locally linear, its Hessian is zero.
  hvp = jax.grad(
    lambda v: jnp.vdot(
      jax.grad(lambda u: (models.max_pool_2x2(u) ** 2).sum())(v),
      jnp.ones_like(v),
    )
  )(x)
  expected_hvp = 2.0 * expected
  np.testing.assert_array_equal(hvp.reshape(2, 2), expected_hvp)


@pytest.mark.parametrize('nan_at', [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_max_pool_propagates_nan_from_any_position(nan_at):
  window = np.array([[1.0, 2.0], [3.0, 0.0]], np.float32)
  window[nan_at] = np.nan
  x = np.stack([window, np.ones((2, 2), np.float32)]).reshape(1, 4, 2, 1)
  out = np.asarray(models.max_pool_2x2(x)).ravel()
  assert np.isnan(out[0]) and out[1] == 1.0


def _numpy_conv4_block_output(x, w, b, scale, offset):
  """One Conv-4 block in NumPy float64, pooling the ReLU (the usual order)."""
  n, h, wd, _ = x.shape
  y = _numpy_conv3x3_same(x, w) + b
  mean = y.mean(axis=(0, 1, 2))
  var = y.var(axis=(0, 1, 2))
  y = (y - mean) / np.sqrt(var + 1e-5) * scale + offset
  y = np.maximum(y, 0.0)
  return y.reshape(n, h // 2, 2, wd // 2, 2, -1).max(axis=(2, 4))


def test_conv4_has_no_conv_bias_which_batch_norm_would_cancel():
  # The NumPy reference of `test_conv4_block_pools_the_relu_like_numpy` adds
  # a bias, and still agrees: batch norm cancels it.
  params = jaxmeta.conv4(5, num_filters=8).init(jax.random.key(0))
  for i in range(4):
    assert set(params[f'conv{i}']) == {'w', 'scale', 'offset'}


@pytest.mark.parametrize('impl', IMPLS)
def test_conv4_block_pools_the_relu_like_numpy(impl):
  # The model applies the ReLU after the pool; the two orders must agree,
  # negative batch-norm scales included (the pool must not be moved past
  # the batch norm).
  rng = np.random.RandomState(0)
  x = rng.rand(3, 6, 6, 2)
  w = rng.randn(3, 3, 2, 4)
  b, offset = rng.randn(4), rng.randn(4)
  scale = np.array([1.5, -0.7, 0.3, -2.0])
  model = jaxmeta.conv4(
    2, input_shape=(6, 6, 2), num_filters=4, num_blocks=1, conv_impl=impl
  )
  head_w = rng.randn(3 * 3 * 4, 2)
  params = {
    'conv0': {'w': w, 'scale': scale, 'offset': offset},
    'head': {'w': head_w, 'b': np.zeros(2)},
  }
  with jax.enable_x64(True):
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    out = model.apply(params, jnp.asarray(x, jnp.float64))
  features = _numpy_conv4_block_output(x, w, b, scale, offset)
  np.testing.assert_allclose(
    out, features.reshape(3, -1) @ head_w, rtol=1e-10, atol=1e-10
  )


@pytest.mark.parametrize('field', ['num_classes', 'num_filters', 'num_blocks'])
@pytest.mark.parametrize('value', [0, -1])
def test_conv4_refuses_non_positive_sizes_by_name(field, value):
  kwargs = dict(num_classes=5, num_filters=4, num_blocks=2)
  kwargs[field] = value
  with pytest.raises(ValueError, match=f'{field} to be an int >= 1'):
    jaxmeta.conv4(**kwargs)


@pytest.mark.parametrize(
  'build, shape',
  [
    (lambda: jaxmeta.conv4(5), (3, 32, 32, 1)),
    (lambda: jaxmeta.conv4(5), (3, 28, 28, 3)),
    (lambda: jaxmeta.resnet12(5, (16, 16, 3), widths=(4,)), (3, 16, 16, 1)),
  ],
)
def test_images_of_the_wrong_shape_name_the_models_input_shape(build, shape):
  model = build()
  params = model.init(jax.random.key(0))
  learner = jaxmeta.maml(model, jaxmeta.classification_loss, 0.4, 1)
  x = jnp.zeros(shape)
  y = jnp.zeros((3,), jnp.int32)
  with pytest.raises(ValueError, match=r'was built for images of shape'):
    model.apply(params, x)
  with pytest.raises(ValueError, match=r'input_shape='):
    learner.task_update(params, jaxmeta.Task(x, y, x, y))
  with pytest.raises(ValueError, match=r'was built for images of shape'):
    learner.predict(params, x)


def test_inputs_of_the_wrong_size_name_the_mlps_input_size():
  model = jaxmeta.mlp((4, 8, 2))
  params = model.init(jax.random.key(0))
  with pytest.raises(ValueError, match=r'built for inputs of 4 values'):
    model.apply(params, jnp.zeros((3, 5)))
