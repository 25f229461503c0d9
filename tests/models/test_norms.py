"""Batch-norm modes: support statistics, running statistics, TaskNorm-I, and
scoring each image on its own, against NumPy references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmeta
from jaxmeta.algorithms import normalised_learner
from jaxmeta.algorithms import score_alone
from jaxmeta.algorithms import scoring_last_step
from jaxmeta.models import norms
from jaxmeta.types import Task

WAYS = 3
BLOCKS = 2
SIZE = 8  # 8x8 images: 4x4 after one block, 2x2 after two.


def _model(mode, conv_impl='patches'):
  return jaxmeta.conv4(
    WAYS,
    (SIZE, SIZE, 1),
    num_filters=4,
    num_blocks=BLOCKS,
    conv_impl=conv_impl,
    batch_norm=mode,
  )


def _to64(tree):
  return jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), tree)


def _task(key, shots=2, queries=3, dtype=jnp.float32):
  k1, k2 = jax.random.split(key)
  labels = lambda n: jnp.repeat(jnp.arange(WAYS), n)
  return Task(
    jax.random.uniform(k1, (WAYS * shots, SIZE, SIZE, 1), dtype),
    labels(shots),
    jax.random.uniform(k2, (WAYS * queries, SIZE, SIZE, 1), dtype),
    labels(queries),
  )


def _random_params(model, key):
  """The model's parameters with random batch-norm scales and offsets (and
  TaskNorm blends), so that a test sees every one of them."""
  params = model.init(key)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
  out = []
  for (path, v), k in zip(jax.tree_util.tree_leaves_with_path(params), keys):
    name = getattr(path[-1], 'key', None)
    if name in ('scale', 'offset', 'alpha_scale', 'alpha_offset'):
      v = v + 0.5 * jax.random.normal(k, v.shape)
    out.append(v)
  del leaves
  return jax.tree.unflatten(tree, out)


# NumPy float64 references.


def _np_conv(x, w):
  """3x3 'SAME' convolution, NHWC x HWIO."""
  n, h, wd, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((n, h, wd, w.shape[-1]))
  for i in range(3):
    for j in range(3):
      out += xp[:, i : i + h, j : j + wd, :] @ w[i, j]
  return out


def _np_block_end(y):
  y = np.maximum(y, 0.0)
  n, h, wd, c = y.shape
  return y.reshape(n, h // 2, 2, wd // 2, 2, c).max(axis=(2, 4))


def _np_moments(y):
  return y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))


def _np_logits(params, x, normalise):
  """Conv-4 with `normalise(i, y, p) -> y` at block i's batch norm."""
  p = jax.tree.map(np.asarray, params)
  h = np.asarray(x, np.float64)
  for i in range(BLOCKS):
    h = _np_block_end(
      normalise(i, _np_conv(h, p[f'conv{i}']['w']), p[f'conv{i}'])
    )
  return h.reshape(h.shape[0], -1) @ p['head']['w'] + p['head']['b']


def _np_affine(y, mean, var, p):
  return (y - mean) / np.sqrt(var + 1e-5) * p['scale'] + p['offset']


def _np_support_logits(params, support, query):
  found = {}

  def by_itself(i, y, p):
    found[i] = _np_moments(y)
    return _np_affine(y, *found[i], p)

  _np_logits(params, support, by_itself)
  return _np_logits(params, query, lambda i, y, p: _np_affine(y, *found[i], p))


def _np_task_norm(y, context, size, p):
  mu_c, var_c = context
  mu_i = y.mean(axis=(1, 2), keepdims=True)
  var_i = y.var(axis=(1, 2), keepdims=True)
  alpha = 1 / (1 + np.exp(-(p['alpha_scale'] * size + p['alpha_offset'])))
  mu = alpha * mu_c + (1 - alpha) * mu_i
  var = alpha * (var_c + (mu_c - mu) ** 2) + (1 - alpha) * (
    var_i + (mu_i - mu) ** 2
  )
  return _np_affine(y, mu, var, p)


def _np_tasknorm_logits(params, support, query):
  found = {}
  size = support.shape[0]

  def context(i, y, p):
    found[i] = _np_moments(y)
    return _np_task_norm(y, found[i], size, p)

  support_logits = _np_logits(params, support, context)
  query_logits = _np_logits(
    params, query, lambda i, y, p: _np_task_norm(y, found[i], size, p)
  )
  return support_logits, query_logits


def _np_statistics(params, x):
  """Each block's batch moments in a transductive pass, unbiased variance."""
  found = {}

  def by_itself(i, y, p):
    mean, var = _np_moments(y)
    n = y.size // y.shape[-1]
    found[f'conv{i}'] = (mean, var * n / (n - 1))
    return _np_affine(y, mean, var, p)

  _np_logits(params, x, by_itself)
  return found


# The modes against NumPy.


@pytest.mark.parametrize(
  'impl', [pytest.param('patches', marks=pytest.mark.slow), 'patches_cf_2pass']
)
def test_support_mode_normalises_queries_with_the_support_statistics(impl):
  with jax.enable_x64(True):
    model = _model('support', impl)
    params = _to64(_random_params(model, jax.random.key(0)))
    task = _task(jax.random.key(1), dtype=jnp.float64)
    logits = norms.given_support(model, task.support_x).apply(
      params, task.query_x
    )
    np.testing.assert_allclose(
      logits,
      _np_support_logits(params, task.support_x, task.query_x),
      rtol=1e-10,
      atol=1e-10,
    )
    # The support set itself is normalised by itself, as transductively.
    np.testing.assert_allclose(
      norms.given_support(model, task.support_x).apply(params, task.support_x),
      _model('transductive', impl).apply(params, task.support_x),
      rtol=1e-12,
      atol=1e-12,
    )


def test_tasknorm_blends_support_and_instance_moments_like_numpy():
  with jax.enable_x64(True):
    model = _model('tasknorm')
    params = _to64(_random_params(model, jax.random.key(2)))
    task = _task(jax.random.key(3), dtype=jnp.float64)
    support_ref, query_ref = _np_tasknorm_logits(
      params, task.support_x, task.query_x
    )
    on_support = norms.given_support(model, task.support_x)
    np.testing.assert_allclose(
      on_support.apply(params, task.query_x), query_ref, rtol=1e-10, atol=1e-10
    )
    np.testing.assert_allclose(
      on_support.apply(params, task.support_x),
      support_ref,
      rtol=1e-10,
      atol=1e-10,
    )


@pytest.mark.slow
def test_tasknorm_blend_starts_at_one_half_and_has_a_gradient():
  params = _model('tasknorm').init(jax.random.key(0))
  for i in range(BLOCKS):
    assert float(params[f'conv{i}']['alpha_scale']) == 0.0
    assert float(params[f'conv{i}']['alpha_offset']) == 0.0
  task = _task(jax.random.key(1))
  model = norms.given_support(_model('tasknorm'), task.support_x)
  loss = jaxmeta.classification_loss(model.apply)
  grads = jax.grad(lambda p: loss(p, task.query_x, task.query_y)[0])(params)
  assert all(
    float(jnp.abs(grads[f'conv{i}']['alpha_offset'])) > 0 for i in range(BLOCKS)
  )


def test_running_mode_normalises_with_the_running_statistics():
  with jax.enable_x64(True):
    model = _model('running')
    params = _to64(_random_params(model, jax.random.key(4)))
    stats = params['batch_stats']
    for i, name in enumerate(sorted(stats)):
      stats[name] = {
        'mean': jnp.linspace(-0.5, 0.5, 4) + i,
        'var': jnp.linspace(0.5, 2.0, 4) * (i + 1),
      }
    x = _task(jax.random.key(5), dtype=jnp.float64).query_x
    expected = _np_logits(
      params,
      x,
      lambda i, y, p: _np_affine(
        y,
        np.asarray(stats[f'conv{i}']['mean']),
        np.asarray(stats[f'conv{i}']['var']),
        p,
      ),
    )
    np.testing.assert_allclose(
      model.apply(params, x), expected, rtol=1e-10, atol=1e-10
    )
    # Given a support set, other images keep the running statistics.
    on_support = norms.given_support(model, x)
    np.testing.assert_allclose(
      on_support.apply(params, x[:2]), expected[:2], rtol=1e-10, atol=1e-10
    )
    # The support set (adaptation) and meta-training normalise with batch
    # statistics instead.
    np.testing.assert_allclose(
      norms.self_normalised(model).apply(params, x),
      _model('transductive').apply(params, x),
      rtol=1e-12,
      atol=1e-12,
    )


def test_running_statistics_follow_the_momentum_over_meta_steps():
  momentum = 0.3
  model = _model('running')
  maml = lambda m: jaxmeta.make_learner(
    'maml', m, jaxmeta.classification_loss, 0.1, 1
  )
  learner = normalised_learner(maml, model, momentum, num_inner_steps=1)
  optimizer = optax.adam(1e-2)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  np.testing.assert_array_equal(
    state.model_state['batch_stats']['conv0']['mean'], np.zeros(4)
  )
  np.testing.assert_array_equal(
    state.model_state['batch_stats']['conv0']['var'], np.ones(4)
  )
  step = jax.jit(jaxmeta.make_meta_train_step(learner, optimizer))
  expected = {
    k: tuple(np.asarray(v, np.float64) for v in (s['mean'], s['var']))
    for k, s in state.model_state['batch_stats'].items()
  }
  # Compiled once: op by op, the inner step's gradient takes seconds.
  adapt = jax.jit(maml(_model('transductive')).adapt, static_argnums=3)
  for t in range(3):
    tasks = [_task(jax.random.key(10 * t + i)) for i in range(2)]
    batch = jax.tree.map(lambda *v: jnp.stack(v), *tasks)
    body = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, batch)
    assert 'batch_statistics' not in metrics
    # The query set's statistics after the inner step (taken with batch
    # statistics, as in meta-training).
    per_task = [
      _np_statistics(
        jax.tree.map(
          np.asarray, adapt(body, task.support_x, task.support_y, 1)
        ),
        task.query_x,
      )
      for task in tasks
    ]
    for name in expected:
      batch_mean = np.mean([s[name][0] for s in per_task], axis=0)
      batch_var = np.mean([s[name][1] for s in per_task], axis=0)
      mean, var = expected[name]
      expected[name] = (
        (1 - momentum) * mean + momentum * batch_mean,
        (1 - momentum) * var + momentum * batch_var,
      )
      got = state.model_state['batch_stats'][name]
      np.testing.assert_allclose(got['mean'], expected[name][0], rtol=1e-4)
      np.testing.assert_allclose(got['var'], expected[name][1], rtol=1e-4)
  # Nothing the optimiser would see: their gradient is exactly zero.
  grads, _ = jax.jit(jax.vmap(learner.task_update, in_axes=(None, 0)))(
    state.merged_params(), batch
  )
  for leaf in jax.tree.leaves(grads['batch_stats']):
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))


def _build(name, **options):
  return lambda m: jaxmeta.make_learner(
    name, m, jaxmeta.classification_loss, 0.2, 2, **options
  )


# One method of each kind in the quick tier (inner loop, metric, fine-tuned
# head); the others share their code paths and run in the slow tier.
_slow = pytest.mark.slow
_METHODS = [
  pytest.param('maml', {}, id='maml'),
  pytest.param('fomaml', {}, id='fomaml', marks=_slow),
  pytest.param('reptile', {}, id='reptile', marks=_slow),
  pytest.param('anil', {}, id='anil', marks=_slow),
  pytest.param('meta_sgd', {}, id='meta_sgd', marks=_slow),
  pytest.param('maml_plus_plus', {}, id='maml_plus_plus', marks=_slow),
  pytest.param('protonet', {}, id='protonet'),
  pytest.param('baseline', {'num_classes': 5}, id='baseline'),
  pytest.param(
    'baseline_plus_plus', {'num_classes': 5}, id='baseline_pp', marks=_slow
  ),
]


@pytest.mark.parametrize('mode', ['support', 'running', 'tasknorm'])
@pytest.mark.parametrize('name, options', _METHODS)
def test_a_query_is_scored_the_same_alone_or_in_a_batch(mode, name, options):
  with jax.enable_x64(True):
    learner = normalised_learner(_build(name, **options), _model(mode))
    params = _to64(learner.init(jax.random.key(0)))
    if mode == 'running':  # Statistics other than the initial ones.
      trainable, model_state = jaxmeta.split_model_state(params)
      model_state = learner.update_state(
        model_state, _shifted_statistics(params)
      )
      params = jaxmeta.merge_model_state(trainable, model_state)
    task = _task(jax.random.key(1), dtype=jnp.float64)
    adapt, predict = _compiled(learner)
    adapted = adapt(params, task.support_x, task.support_y, 2)
    together = predict(adapted, task.query_x)
    alone = jnp.concatenate(
      [predict(adapted, task.query_x[i : i + 1]) for i in range(9)]
    )
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    # score_alone agrees with the accuracy of the batch.
    accuracy = jnp.mean(jnp.argmax(together, -1) == task.query_y)
    alone_score = jax.jit(score_alone, static_argnums=(0, 3))
    np.testing.assert_allclose(
      alone_score(learner, params, task, 2), accuracy, atol=1e-12
    )


@pytest.mark.parametrize('mode', ['transductive', 'support', 'running'])
@pytest.mark.parametrize('name, options', _METHODS)
def test_scoring_the_last_step_only_gives_evaluate_s_last_score(
  mode, name, options
):
  """Validation's `scoring_last_step`: adapt, then predict on the query set,
  gives `evaluate`'s metric and the last of its `accuracy_by_step`."""
  with jax.enable_x64(True):
    learner = normalised_learner(_build(name, **options), _model(mode))
    params = _to64(learner.init(jax.random.key(0)))
    task = _task(jax.random.key(1), queries=5, dtype=jnp.float64)
    full = jax.jit(learner.evaluate, static_argnums=2)(params, task, 2)
    last = jax.jit(scoring_last_step(learner).evaluate, static_argnums=2)(
      params, task, 2
    )
  assert set(last) == {'accuracy'}
  assert 0 < full['accuracy'] < 1  # A score that a wrong model would miss.
  np.testing.assert_allclose(last['accuracy'], full['accuracy'], atol=1e-12)
  np.testing.assert_allclose(
    last['accuracy'], full['accuracy_by_step'][-1], atol=1e-12
  )


@pytest.mark.parametrize('name, options', _METHODS)
def test_a_copy_of_the_support_set_is_still_the_support_set(name, options):
  # The model is given one array and the algorithm adapts on another with
  # the same images: a copy, as a cast or a minibatch would hand it over.
  build = _build(name, **options)

  def adapt_and_predict(params, given_x, support_x, support_y, query_x):
    learner = build(norms.given_support(_model(mode), given_x))
    adapted = learner.adapt(params, support_x, support_y, 2)
    return adapted, learner.predict(adapted, query_x)

  with jax.enable_x64(True):
    task = _task(jax.random.key(1), dtype=jnp.float64)
    copy = jnp.array(task.support_x, copy=True)
    for mode in ('support', 'running', 'tasknorm'):
      params = _to64(build(_model(mode)).init(jax.random.key(0)))
      if mode == 'running':
        params = normalised_learner(build, _model(mode)).update_state(
          params, _shifted_statistics(params)
        )
      same = jax.jit(lambda p, x, y, q: adapt_and_predict(p, x, x, y, q))(
        params, task.support_x, task.support_y, task.query_x
      )
      copied = jax.jit(adapt_and_predict)(
        params, task.support_x, copy, task.support_y, task.query_x
      )
      jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10),
        copied,
        same,
      )


@pytest.mark.parametrize(
  'name',
  [
    'maml',
    pytest.param('reptile', marks=_slow),
    pytest.param('meta_sgd', marks=_slow),
    pytest.param('maml_plus_plus', marks=_slow),
    pytest.param('pretrain', marks=_slow),
  ],
)
def test_a_checkpointed_loss_adapts_like_the_plain_one(name):
  # `jax.checkpoint` hands the loss new arrays: the support set must still
  # normalise itself (as meta-training's form does), the queries with the
  # running statistics.
  checkpointed = lambda apply: jax.checkpoint(
    jaxmeta.classification_loss(apply)
  )
  build = lambda make_loss: (
    lambda m: jaxmeta.make_learner(name, m, make_loss, 0.2, 2)
  )
  model = _model('running')
  plain, recomputed = (
    normalised_learner(build(make_loss), model)
    for make_loss in (jaxmeta.classification_loss, checkpointed)
  )
  with jax.enable_x64(True):
    params = _to64(plain.init(jax.random.key(0)))
    params = plain.update_state(params, _shifted_statistics(params))
    task = _task(jax.random.key(1), dtype=jnp.float64)
    adapt = jax.jit(
      build(jaxmeta.classification_loss)(norms.self_normalised(model)).adapt,
      static_argnums=3,
    )
    expected = adapt(params, task.support_x, task.support_y, 2)
    logits = jax.jit(plain.predict)(expected, task.query_x)
    for learner in (plain, recomputed):
      adapt, predict = _compiled(learner)
      adapted = adapt(params, task.support_x, task.support_y, 2)
      chex.assert_trees_all_close(adapted, expected, rtol=1e-10, atol=1e-10)
      np.testing.assert_allclose(
        predict(adapted, task.query_x), logits, rtol=1e-10, atol=1e-10
      )


def _compiled(learner):
  """`learner`'s adapt (steps static) and predict, each compiled: op by op
  a learner's first calls take seconds each."""
  return (
    jax.jit(learner.adapt, static_argnums=3),
    jax.jit(learner.predict),
  )


def _shifted_statistics(params):
  owner = params['model'] if 'model' in params else params
  return jax.tree.map(lambda v: v * 0.5 + 0.25, dict(owner['batch_stats']))


def test_transductive_scores_depend_on_the_other_queries():
  learner = normalised_learner(_build('maml'), _model('transductive'))
  params = learner.init(jax.random.key(0))
  task = _task(jax.random.key(1))
  adapt, predict = _compiled(learner)
  adapted = adapt(params, task.support_x, task.support_y, 2)
  together = predict(adapted, task.query_x)
  alone = jnp.concatenate(
    [predict(adapted, task.query_x[i : i + 1]) for i in range(9)]
  )
  assert float(jnp.max(jnp.abs(together - alone))) > 1e-2


def test_transductive_learner_is_the_plain_one():
  build = _build('maml')
  model = _model('transductive')
  learner, plain = normalised_learner(build, model), build(model)
  params = learner.init(jax.random.key(0))
  tasks = jax.tree.map(lambda *v: jnp.stack(v), *[_task(jax.random.key(1))] * 2)
  meta_gradient = jax.jit(jaxmeta.meta_gradient, static_argnums=0)
  a = meta_gradient(learner, params, tasks)
  b = meta_gradient(plain, params, tasks)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
def test_per_step_running_statistics_follow_the_inner_trajectory():
  steps, momentum = 2, 1.0  # Momentum 1: the statistics of the last step.
  model = _model('running')
  learner = normalised_learner(
    _build('maml_plus_plus', per_step_bn=False, per_step_bn_stats=True),
    model,
    momentum,
    num_inner_steps=steps,
  )
  params = learner.init(jax.random.key(0))
  assert params['model']['batch_stats']['conv0']['mean'].shape == (steps, 4)
  task = _task(jax.random.key(1))
  optimizer = optax.sgd(0.0)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  batch = jax.tree.map(lambda v: v[None], task)
  new, _ = jaxmeta.meta_train_step(learner, optimizer, state, batch)
  # Set i: the query set after i + 1 inner steps of plain gradient descent
  # (every learned rate starts at the inner lr) with batch statistics.
  body = state.params['model']
  adapt = _build('maml')(_model('transductive')).adapt
  expected = [
    _np_statistics(
      jax.tree.map(
        np.asarray, adapt(body, task.support_x, task.support_y, i + 1)
      ),
      task.query_x,
    )
    for i in range(steps)
  ]
  for name in ('conv0', 'conv1'):
    got = new.model_state['model']['batch_stats'][name]
    for i in range(steps):
      np.testing.assert_allclose(
        got['mean'][i], expected[i][name][0], rtol=1e-4, atol=1e-6
      )
      np.testing.assert_allclose(
        got['var'][i], expected[i][name][1], rtol=1e-4, atol=1e-6
      )
  assert not np.allclose(
    new.model_state['model']['batch_stats']['conv1']['var'][0],
    new.model_state['model']['batch_stats']['conv1']['var'][1],
  )


def test_per_step_statistics_need_the_running_mode():
  with pytest.raises(ValueError, match="batch_norm='running'"):
    _build('maml_plus_plus', per_step_bn_stats=True)(_model('support'))


def test_modes_other_than_transductive_need_a_batch_norm_hook():
  mlp = jaxmeta.mlp((3, 2))
  with pytest.raises(ValueError, match='batch-norm hook'):
    norms.given_support(mlp._replace(batch_norm='support'), jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match='Unknown batch_norm'):
    _model('sometimes')
