"""ResNet-12 and DropBlock against independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmeta
from jaxmeta import models

_TINY = dict(widths=(2, 3, 4, 5))


def _shape_count(tree):
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


@pytest.mark.parametrize('input_shape', [(84, 84, 3), (32, 32, 3)])
def test_output_and_embedding_shapes(input_shape):
  model = jaxmeta.resnet12(5, input_shape)
  params = jax.eval_shape(model.init, jax.random.key(0))
  x = jax.ShapeDtypeStruct((7, *input_shape), jnp.float32)
  key = jax.random.key(1)
  assert jax.eval_shape(model.apply, params, x).shape == (7, 5)
  assert jax.eval_shape(
    lambda p, x: model.apply(p, x, key=key), params, x
  ).shape == (7, 5)
  assert jax.eval_shape(models.resnet12_embed, params, x).shape == (7, 640)


def _embedding_parameters(widths, channels=3):
  """Hand count: per block three 3x3 convs, a 1x1 shortcut, four batch norms."""
  total, c_in = 0, channels
  for c in widths:
    total += 9 * c_in * c + 2 * 9 * c * c + c_in * c + 4 * 2 * c
    c_in = c
  return total


def test_parameter_count():
  model = jaxmeta.resnet12(5, (84, 84, 3))
  params = jax.eval_shape(model.init, jax.random.key(0))
  body = {k: v for k, v in params.items() if k != 'head'}
  # 12.4M: the figure quoted for MetaOptNet's ResNet-12 (the embedding).
  assert _shape_count(body) == _embedding_parameters((64, 160, 320, 640))
  assert _shape_count(body) == 12_424_320
  assert _shape_count(params['head']) == 640 * 5 + 5


def test_parameter_count_matches_pytorch_layers():
  torch = pytest.importorskip('torch')
  nn = torch.nn
  layers, c_in = [], 3
  for c in (64, 160, 320, 640):  # MetaOptNet's BasicBlock and downsample.
    layers += [
      nn.Conv2d(c_in, c, 3, padding=1, bias=False),
      nn.BatchNorm2d(c),
      nn.Conv2d(c, c, 3, padding=1, bias=False),
      nn.BatchNorm2d(c),
      nn.Conv2d(c, c, 3, padding=1, bias=False),
      nn.BatchNorm2d(c),
      nn.Conv2d(c_in, c, 1, bias=False),
      nn.BatchNorm2d(c),
    ]
    c_in = c
  torch_count = sum(p.numel() for p in nn.ModuleList(layers).parameters())
  assert torch_count == 12_424_320


def _torch_forward(params, x):
  """The same network written with PyTorch's functional ops, float64."""
  torch = pytest.importorskip('torch')
  f = torch.nn.functional
  t = lambda a: torch.from_numpy(np.asarray(a, np.float64))
  conv = lambda h, w: f.conv2d(
    h, t(np.transpose(w, (3, 2, 0, 1))), padding=w.shape[0] // 2
  )
  bn = lambda h, q: f.batch_norm(
    h,
    None,
    None,
    weight=t(q['scale']),
    bias=t(q['offset']),
    training=True,
    eps=1e-5,
  )
  h = t(np.transpose(x, (0, 3, 1, 2)))
  num_blocks = sum(1 for k in params if k.startswith('block'))
  for i in range(num_blocks):
    p = params[f'block{i}']
    out = f.leaky_relu(bn(conv(h, p['conv0']), p['bn0']), 0.1)
    out = f.leaky_relu(bn(conv(out, p['conv1']), p['bn1']), 0.1)
    out = bn(conv(out, p['conv2']), p['bn2'])
    out = out + bn(conv(h, p['shortcut']), p['shortcut_bn'])
    h = f.max_pool2d(f.leaky_relu(out, 0.1), 2)
  embedding = h.mean(dim=(2, 3))
  return (embedding @ t(params['head']['w']) + t(params['head']['b'])).numpy()


# The CPU's default conv implementation in the quick tier; the others compute
# the same function (test_models.py) and are slow.
@pytest.mark.parametrize(
  'conv_impl',
  [
    impl
    if impl == models.resolve_conv_impl('auto')
    else pytest.param(impl, marks=pytest.mark.slow)
    for impl in models.CONV_IMPLS[1:]
  ],
)
def test_forward_matches_pytorch(conv_impl):
  model = jaxmeta.resnet12(3, (16, 16, 3), conv_impl=conv_impl, **_TINY)
  with jax.enable_x64(True):
    params = jax.tree.map(
      lambda a: np.asarray(a, np.float64), model.init(jax.random.key(0))
    )
    x = np.random.default_rng(0).normal(size=(6, 16, 16, 3))
    np.testing.assert_allclose(
      jax.jit(model.apply)(params, x),
      _torch_forward(params, x),
      rtol=1e-9,
      atol=1e-9,
    )


def test_dropblock_only_with_a_key():
  model = jaxmeta.resnet12(
    3, (16, 16, 3), drop_rate=0.3, dropblock_size=2, **_TINY
  )
  params = model.init(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (6, 16, 16, 3))
  apply = jax.jit(model.apply)
  evaluation = apply(params, x)
  np.testing.assert_array_equal(evaluation, apply(params, x))
  with_key = lambda k: apply(params, x, key=jax.random.key(k))
  np.testing.assert_array_equal(with_key(2), with_key(2))
  assert not np.allclose(with_key(2), evaluation)
  assert not np.allclose(with_key(2), with_key(3))
  off = jaxmeta.resnet12(3, (16, 16, 3), drop_rate=0.0, **_TINY)
  np.testing.assert_array_equal(
    jax.jit(off.apply)(params, x, key=jax.random.key(2)), evaluation
  )


def _keep_probabilities(h, w, block, drop_rate):
  """`[h, w]`: P(no drawn centre's block covers the position), eq. (1)."""
  gamma = drop_rate * h * w / (block**2 * (h - block + 1) * (w - block + 1))
  covering = lambda r, n: min(r, n - block) - max(0, r - block + 1) + 1
  return np.array(
    [
      [(1 - gamma) ** (covering(r, h) * covering(s, w)) for s in range(w)]
      for r in range(h)
    ]
  )


@pytest.mark.parametrize('size,block', [(10, 5), (5, 5), (12, 3)])
def test_dropblock_drops_the_rate_in_whole_blocks(size, block):
  x = jnp.ones((256, size, size, 64))  # 16384 maps
  out = np.asarray(models.dropblock(x, jax.random.key(0), 0.1, block))
  zero = out == 0
  expected = 1 - _keep_probabilities(size, size, block, 0.1).mean()
  assert 0.09 < expected <= 0.1  # Overlapping blocks drop a little less.
  np.testing.assert_allclose(zero.mean(), expected, atol=0.01)
  # Every zero lies in a fully zeroed block x block square of the map.
  covered = np.zeros_like(zero)
  for i in range(size - block + 1):
    for j in range(size - block + 1):
      full = zero[:, i : i + block, j : j + block, :].all(axis=(1, 2))
      covered[:, i : i + block, j : j + block, :] |= full[:, None, None, :]
  assert zero.any()
  np.testing.assert_array_equal(covered, zero)
  # The kept activations are rescaled by count / count_ones: mean exactly 1.
  kept = out[~zero]
  np.testing.assert_allclose(kept, zero.size / kept.size, rtol=1e-6)
  np.testing.assert_allclose(out.mean(), 1.0, rtol=1e-5)


def test_dropblock_expectation_and_layouts_agree():
  """E[out] = x * P(kept) / mean P(kept): the mean activation of a map is
  kept; positions near the border, covered by fewer blocks, are dropped less
  often and so come out larger on average (Ghiasi et al.'s rescaling)."""
  x = jax.random.normal(jax.random.key(0), (2, 10, 10, 4))
  keys = jax.random.split(jax.random.key(1), 4000)
  outs = jax.vmap(lambda k: models.dropblock(x, k, 0.2, 3))(keys)
  keep = _keep_probabilities(10, 10, 3, 0.2)
  expected = x * (keep / keep.mean())[None, :, :, None]
  np.testing.assert_allclose(outs.mean(axis=0), expected, atol=0.1)
  cf = models.dropblock(
    jnp.transpose(x, (3, 0, 1, 2)), keys[0], 0.2, 3, channels_first=True
  )
  np.testing.assert_array_equal(jnp.transpose(cf, (1, 2, 3, 0)), outs[0])


@pytest.mark.slow
def test_maml_meta_gradient_matches_finite_differences():
  """Second-order MAML through ResNet-12, float64, 2-way 1-shot 16x16x3."""
  model = jaxmeta.resnet12(2, (16, 16, 3), **_TINY)
  loss_fn = jaxmeta.classification_loss(model.apply)
  learner = jaxmeta.maml(
    model, jaxmeta.classification_loss, inner_lr=0.1, num_inner_steps=1
  )
  with jax.enable_x64(True):
    params = jax.tree.map(
      lambda a: jnp.asarray(a, jnp.float64), model.init(jax.random.key(0))
    )
    rng = np.random.default_rng(0)
    task = jaxmeta.Task(
      rng.uniform(size=(2, 16, 16, 3)),
      np.arange(2),
      rng.uniform(size=(4, 16, 16, 3)),
      np.repeat(np.arange(2), 2),
    )
    meta_loss = jax.jit(
      lambda p: loss_fn(
        learner.adapt(p, task.support_x, task.support_y, 1),
        task.query_x,
        task.query_y,
      )[0]
    )
    grad, _ = jax.jit(learner.task_update)(params, task)
    leaves, treedef = jax.tree.flatten(params)
    eps = 1e-6
    for seed in range(3):
      keys = jax.random.split(jax.random.key(10 + seed), len(leaves))
      direction = jax.tree.unflatten(
        treedef,
        [
          jax.random.normal(k, v.shape, jnp.float64)
          for k, v in zip(keys, leaves)
        ],
      )
      shifted = lambda s: jax.tree.map(
        lambda p, d: p + s * d, params, direction
      )
      finite = (meta_loss(shifted(eps)) - meta_loss(shifted(-eps))) / (2 * eps)
      analytic = sum(
        jnp.vdot(g, d)
        for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction))
      )
      np.testing.assert_allclose(analytic, finite, rtol=1e-6)


@pytest.mark.slow
def test_meta_gradient_with_dropblock_keys():
  model = jaxmeta.resnet12(
    2, (16, 16, 3), drop_rate=0.3, dropblock_size=2, **_TINY
  )
  learner = jaxmeta.maml(
    model,
    jaxmeta.classification_loss,
    inner_lr=0.1,
    num_inner_steps=1,
  )
  params = learner.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  tasks = jaxmeta.Task(
    jnp.asarray(rng.uniform(size=(2, 2, 16, 16, 3)), jnp.float32),
    jnp.tile(jnp.arange(2), (2, 1)),
    jnp.asarray(rng.uniform(size=(2, 4, 16, 16, 3)), jnp.float32),
    jnp.tile(jnp.repeat(jnp.arange(2), 2), (2, 1)),
  )
  meta_grad = jax.jit(
    lambda k: jaxmeta.meta_gradient(learner, params, tasks, key=k)[0]['block0'][
      'conv0'
    ]
  )
  keyless = jax.jit(
    lambda: jaxmeta.meta_gradient(learner, params, tasks)[0]['block0']['conv0']
  )()
  g1, g1_again, g2 = (meta_grad(jax.random.key(k)) for k in (1, 1, 2))
  np.testing.assert_array_equal(g1, g1_again)
  assert not np.allclose(g1, g2)
  assert not np.allclose(g1, keyless)


def test_registered_and_import_paths():
  assert models.BACKBONES['resnet12'] is jaxmeta.resnet12
  assert models.BACKBONES['conv4'] is models.conv4 is jaxmeta.conv4
  assert models.conv4(5).apply is not None  # the builder, not its module
  for name in (
    'CONV_IMPLS',
    'batch_norm',
    'resolve_conv_impl',
    'Model',
    'register_backbone',
    'mlp',
    'mlp_backbone',
    'max_pool_2x2',
    'conv2d_3x3_same',
    'conv2d_3x3_same_cf',
    'dropblock',
    'resnet12_embed',
  ):
    assert hasattr(models, name), name
