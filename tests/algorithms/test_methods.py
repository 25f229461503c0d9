"""ANIL, Meta-SGD, MAML++, Prototypical Networks and the Baselines, each
against an independent reference (another way to compute the same thing, a
NumPy computation, or finite differences)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmeta
from jaxmeta.algorithms import mamlpp
from jaxmeta.algorithms.protonet import prototype_logits

WAYS, SHOTS, QUERIES = 3, 2, 2


def _conv4():
  return jaxmeta.conv4(
    WAYS, (8, 8, 1), num_filters=4, num_blocks=2, conv_impl='xla'
  )


def _tanh_model(sizes=(6, 5, WAYS)):
  """A smooth two-layer model with a body/head split (for finite
  differences, which ReLU kinks and max-pool ties would spoil)."""

  def init(key):
    k1, k2 = jax.random.split(key)
    return {
      'dense': jaxmeta.models.init_linear_head(k1, sizes[0], sizes[1]),
      'head': jaxmeta.models.init_linear_head(k2, sizes[1], sizes[2]),
    }

  def embed(params, x, *, key=None, step=None):
    del key, step
    p = params['dense']
    return jnp.tanh(x.reshape(x.shape[0], -1) @ p['w'] + p['b'])

  def apply(params, x, *, key=None, step=None):
    return jaxmeta.models.linear_head(params['head'], embed(params, x))

  return jaxmeta.Model(init, apply, embed, sizes[1])


def _task(key, shape=(8, 8, 1), dtype=jnp.float32):
  k1, k2 = jax.random.split(key)
  labels = jnp.arange(WAYS, dtype=jnp.int32)
  return jaxmeta.Task(
    support_x=jax.random.normal(k1, (WAYS * SHOTS,) + shape, dtype),
    support_y=jnp.repeat(labels, SHOTS),
    query_x=jax.random.normal(k2, (WAYS * QUERIES,) + shape, dtype),
    query_y=jnp.repeat(labels, QUERIES),
  )


def _to64(tree):
  return jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), tree)


def _assert_trees_close(a, b, rtol, atol=0.0):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def _directional_fd(f, params, direction, eps=1e-6):
  plus = jax.tree.map(lambda p, d: p + eps * d, params, direction)
  minus = jax.tree.map(lambda p, d: p - eps * d, params, direction)
  return (f(plus) - f(minus)) / (2 * eps)


def _tree_dot(a, b):
  return sum(
    jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def _random_like(key, tree):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten(
    [jax.random.normal(k, v.shape, v.dtype) for k, v in zip(keys, leaves)]
  )


# ANIL.


def test_anil_inner_update_leaves_every_body_parameter_unchanged():
  model = _conv4()
  learner = jaxmeta.anil(model, jaxmeta.classification_loss, 0.5, 2)
  params = learner.init(jax.random.key(0))
  task = _task(jax.random.key(1))
  adapted = learner.adapt(params, task.support_x, task.support_y, 3)
  body, head = jaxmeta.models.split_head(params)
  new_body, new_head = jaxmeta.models.split_head(adapted)
  jax.tree.map(np.testing.assert_array_equal, new_body, body)
  assert not np.allclose(new_head['w'], head['w'])


@pytest.mark.parametrize('first_order', [False, True])
def test_anil_meta_gradient_is_maml_with_the_body_frozen_in_the_inner_loop(
  first_order,
):
  # The reference: MAML's whole-model inner loop (the model's `apply` at
  # every step, support embeddings recomputed each time) with an inner
  # optimiser that moves the head only.
  with jax.enable_x64(True):
    model = _conv4()
    loss_fn = jaxmeta.classification_loss(model.apply)
    learner = jaxmeta.anil(
      model, jaxmeta.classification_loss, 0.3, 2, first_order=first_order
    )
    params = _to64(learner.init(jax.random.key(0)))
    task = _to64(_task(jax.random.key(2)))
    task = task._replace(support_y=task.support_y.astype(jnp.int32))
    task = task._replace(query_y=task.query_y.astype(jnp.int32))
    labels = {k: 'head' if k == 'head' else 'body' for k in params}
    head_only = optax.multi_transform(
      {'head': optax.sgd(0.3), 'body': optax.set_to_zero()}, labels
    )

    def reference(p):
      adapted, _ = jaxmeta.inner_loop(
        loss_fn,
        p,
        task.support_x,
        task.support_y,
        2,
        head_only,
        first_order=first_order,
      )
      return loss_fn(adapted, task.query_x, task.query_y)[0]

    # Compiled: run op by op, the reference's second derivative alone took
    # seconds.
    expected = jax.jit(jax.grad(reference))(params)
    grad, metrics = jax.jit(learner.task_update)(params, task)
    _assert_trees_close(grad, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
      metrics['loss'], jax.jit(reference)(params), rtol=1e-12
    )


def test_anil_evaluate_matches_adapt_then_score():
  model = _conv4()
  learner = jaxmeta.anil(model, jaxmeta.classification_loss, 0.5, 1)
  params = learner.init(jax.random.key(3))
  task = _task(jax.random.key(4))
  metrics = learner.evaluate(params, task, 3)
  adapted = learner.adapt(params, task.support_x, task.support_y, 3)
  logits = model.apply(adapted, task.query_x)
  accuracy = np.mean(np.argmax(logits, -1) == np.asarray(task.query_y))
  np.testing.assert_allclose(metrics['accuracy'], accuracy)
  assert metrics['accuracy_by_step'].shape == (4,)


def test_methods_with_a_body_refuse_a_model_without_one():
  model = jaxmeta.mlp((4, 8, 3))
  for build in (jaxmeta.anil, jaxmeta.protonet):
    with pytest.raises(ValueError, match='body and a head'):
      build(model, jaxmeta.classification_loss, 0.1, 1)


# Meta-SGD.


def test_meta_sgd_with_every_rate_equal_to_a_is_maml_with_inner_lr_a():
  model = _conv4()
  task = _task(jax.random.key(5))
  learner = jaxmeta.meta_sgd(model, jaxmeta.classification_loss, 0.2, 2)
  meta = learner.init(jax.random.key(0))
  jax.tree.map(
    lambda lr: np.testing.assert_array_equal(lr, np.float32(0.2)),
    meta['inner']['lr'],
  )
  maml = jaxmeta.maml(model, jaxmeta.classification_loss, 0.2, 2)
  expected, expected_metrics = jax.jit(maml.task_update)(meta['model'], task)
  grad, metrics = jax.jit(learner.task_update)(meta, task)
  _assert_trees_close(grad['model'], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics['loss'], expected_metrics['loss'], 1e-6)

  def adapt(learner, params):
    return jax.jit(learner.adapt, static_argnums=3)(
      params, task.support_x, task.support_y, 2
    )

  _assert_trees_close(
    adapt(learner, meta), adapt(maml, meta['model']), rtol=1e-5, atol=1e-6
  )


def test_meta_sgd_rate_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    model = _tanh_model()
    learner = jaxmeta.meta_sgd(model, jaxmeta.classification_loss, 0.3, 2)
    meta = _to64(learner.init(jax.random.key(0)))
    # Rates that differ per parameter.
    meta['inner']['lr'] = jax.tree.map(
      lambda v: v * (1 + 0.5 * jnp.tanh(v + 1.0)),
      _random_like(jax.random.key(9), meta['inner']['lr']),
    )
    task = _task(jax.random.key(6), (6,), jnp.float64)
    grad, _ = jax.jit(learner.task_update)(meta, task)

    def query_loss(rates):
      m = dict(meta, inner={'lr': rates})
      adapted = learner.adapt(m, task.support_x, task.support_y, 2)
      logits = model.apply(adapted, task.query_x)
      return jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits, task.query_y)
      )

    direction = _random_like(jax.random.key(7), meta['inner']['lr'])
    expected = _directional_fd(
      jax.jit(query_loss), meta['inner']['lr'], direction
    )
    np.testing.assert_allclose(
      _tree_dot(grad['inner']['lr'], direction), expected, rtol=1e-6
    )


# MAML++.


def _maml_grad(model, task, params, num_steps, first_order=False, jit=True):
  maml = jaxmeta.maml(
    model,
    jaxmeta.classification_loss,
    0.3,
    num_steps,
    first_order=first_order,
  )
  task_update = jax.jit(maml.task_update) if jit else maml.task_update
  return task_update(params, task)


def _mamlpp(model, **options):
  defaults = dict(
    per_step_lr=False,
    multi_step_loss=False,
    per_step_bn=False,
    first_order_iterations=0,
  )
  return jaxmeta.maml_plus_plus(
    model, jaxmeta.classification_loss, 0.3, 3, **dict(defaults, **options)
  )


def test_maml_plus_plus_with_every_trick_off_is_maml_exactly():
  model = _conv4()
  learner = _mamlpp(model)
  meta = learner.init(jax.random.key(0))
  assert meta['inner'] == {}
  task = _task(jax.random.key(8))
  # Both run op by op, so that the same operations give the same bits.
  expected, expected_metrics = _maml_grad(
    model, task, meta['model'], 3, jit=False
  )
  for global_step in (None, jnp.int32(0), jnp.int32(10**6)):
    grad, metrics = learner.task_update(meta, task, global_step=global_step)
    jax.tree.map(np.testing.assert_array_equal, grad['model'], expected)
    np.testing.assert_array_equal(metrics['loss'], expected_metrics['loss'])


def test_multi_step_loss_weights_follow_the_annealing():
  weights = lambda step: np.asarray(  # noqa: E731
    mamlpp.multi_step_loss_weights(jnp.int32(step), 4, 100)
  )
  np.testing.assert_allclose(weights(0), [0.25] * 4)
  np.testing.assert_allclose(weights(50), [0.125] * 3 + [0.625], rtol=1e-6)
  floor = 0.03 / 4
  np.testing.assert_allclose(weights(99), [floor] * 3 + [1 - 3 * floor])
  np.testing.assert_array_equal(weights(100), [0, 0, 0, 1])
  np.testing.assert_array_equal(weights(10**6), [0, 0, 0, 1])
  for step in (0, 10, 50, 99, 100):
    np.testing.assert_allclose(weights(step).sum(), 1.0, rtol=1e-6)


def test_multi_step_loss_is_the_weighted_sum_of_the_per_step_maml_losses():
  # Uniform weights (step 0): the mean of the gradients of MAML with 1, 2
  # and 3 inner steps; after the annealing, all weight on the last step:
  # MAML with 3 steps.
  with jax.enable_x64(True):
    model = _tanh_model()
    learner = _mamlpp(model, multi_step_loss=True, msl_iterations=10)
    meta = _to64(learner.init(jax.random.key(0)))
    task = _task(jax.random.key(9), (6,), jnp.float64)
    grad, _ = learner.task_update(meta, task, global_step=jnp.int32(0))
    per_step = [_maml_grad(model, task, meta['model'], n)[0] for n in (1, 2, 3)]
    mean = jax.tree.map(lambda *g: sum(g) / 3, *per_step)
    _assert_trees_close(grad['model'], mean, rtol=1e-10, atol=1e-14)
    grad, _ = learner.task_update(meta, task, global_step=jnp.int32(10))
    _assert_trees_close(grad['model'], per_step[-1], rtol=1e-10, atol=1e-14)


def test_derivative_order_annealing_is_first_order_then_second_order():
  model = _conv4()
  learner = _mamlpp(model, first_order_iterations=5)
  meta = learner.init(jax.random.key(0))
  task = _task(jax.random.key(10))
  step = jax.jit(
    lambda m, t, s: learner.task_update(m, t, global_step=s)[0]['model']
  )
  first, _ = _maml_grad(model, task, meta['model'], 3, first_order=True)
  second, _ = _maml_grad(model, task, meta['model'], 3)
  _assert_trees_close(step(meta, task, jnp.int32(4)), first, 1e-5, 1e-6)
  _assert_trees_close(step(meta, task, jnp.int32(5)), second, 1e-5, 1e-6)
  assert not np.allclose(first['conv0']['w'], second['conv0']['w'])


def test_per_step_learning_rates_change_only_the_inner_rates():
  with jax.enable_x64(True):
    model = _tanh_model()
    learner = _mamlpp(model, per_step_lr=True)
    meta = _to64(learner.init(jax.random.key(0)))
    for lr in jax.tree.leaves(meta['inner']['lr']):
      np.testing.assert_array_equal(lr, [0.3, 0.3, 0.3])
    task = _task(jax.random.key(11), (6,), jnp.float64)
    grad, _ = jax.jit(learner.task_update)(meta, task)
    expected, _ = _maml_grad(model, task, meta['model'], 3)
    _assert_trees_close(grad['model'], expected, rtol=1e-10, atol=1e-14)

    def query_loss(rates):
      m = dict(meta, inner={'lr': rates})
      adapted = learner.adapt(m, task.support_x, task.support_y, 3)
      return jaxmeta.classification_loss(model.apply)(
        adapted, task.query_x, task.query_y
      )[0]

    direction = _random_like(jax.random.key(12), meta['inner']['lr'])
    expected = _directional_fd(
      jax.jit(query_loss), meta['inner']['lr'], direction
    )
    np.testing.assert_allclose(
      _tree_dot(grad['inner']['lr'], direction), expected, rtol=1e-6
    )


def test_per_step_batch_norm_sums_to_the_shared_batch_norm_gradient():
  # The per-step weights are learned by the outer loop only. With every
  # step's copy equal to the shared weights, the function is MAML's with the
  # batch-norm weights frozen in the inner loop; the gradient of the shared
  # weights is the sum over the copies, every other parameter's is MAML's.
  model = _conv4()
  learner = _mamlpp(model, per_step_bn=True)
  meta = learner.init(jax.random.key(0))
  shared = model.init(jax.random.key(0))
  assert meta['model']['conv0']['scale'].shape == (3, 4)
  task = _task(jax.random.key(13))
  grad, _ = jax.jit(learner.task_update)(meta, task)
  loss_fn = jaxmeta.classification_loss(model.apply)
  labels = jax.tree_util.tree_map_with_path(
    lambda path, _: 'bn' if path[-1].key in ('scale', 'offset') else 'sgd',
    shared,
  )
  frozen_bn = optax.multi_transform(
    {'sgd': optax.sgd(0.3), 'bn': optax.set_to_zero()}, labels
  )

  def reference(p):
    adapted, _ = jaxmeta.inner_loop(
      loss_fn, p, task.support_x, task.support_y, 3, frozen_bn
    )
    return loss_fn(adapted, task.query_x, task.query_y)[0]

  expected = jax.jit(jax.grad(reference))(shared)
  for name, g in grad['model'].items():
    for leaf, v in g.items():
      if leaf in jaxmeta.models.BATCH_NORM_LEAVES:
        v = v.sum(axis=0)
      np.testing.assert_allclose(v, expected[name][leaf], rtol=2e-4, atol=1e-6)
  # Step i of the adaptation uses copy i: a change to copy 2 only moves the
  # query loss through the third step.
  bumped = jax.tree.map(lambda v: v, meta)
  bumped['model']['conv0']['scale'] = (
    meta['model']['conv0']['scale'].at[2].add(1.0)
  )
  two_steps = jax.jit(lambda m: learner.evaluate(m, task, 2)['loss_by_step'])
  np.testing.assert_array_equal(two_steps(bumped)[:2], two_steps(meta)[:2])


def test_maml_plus_plus_evaluates_past_its_training_steps_with_the_last_rates():
  model = _conv4()
  learner = jaxmeta.maml_plus_plus(model, jaxmeta.classification_loss, 0.3, 2)
  meta = learner.init(jax.random.key(0))
  metrics = learner.evaluate(meta, _task(jax.random.key(14)), 5)
  assert metrics['accuracy_by_step'].shape == (6,)
  assert np.all(np.isfinite(metrics['loss_by_step']))


# Prototypical Networks.


def test_protonet_logits_are_negative_squared_distances_to_class_means():
  model = _conv4()
  learner = jaxmeta.protonet(model, jaxmeta.classification_loss)
  body = learner.init(jax.random.key(0))
  assert 'head' not in body
  task = _task(jax.random.key(15))
  embed = jax.jit(model.embed)  # Op by op, the first calls take seconds.
  support = np.asarray(embed(body, task.support_x), np.float64)
  query = np.asarray(embed(body, task.query_x), np.float64)
  labels = np.asarray(task.support_y)
  means = np.stack([support[labels == c].mean(0) for c in range(WAYS)])
  logits = -((query[:, None, :] - means[None]) ** 2).sum(-1)
  classes = jax.jit(learner.adapt)(body, task.support_x, task.support_y)
  np.testing.assert_allclose(classes['prototypes'][:WAYS], means, rtol=1e-5)
  got = prototype_logits(
    jnp.asarray(query, jnp.float32), classes['prototypes'], classes['counts']
  )
  np.testing.assert_allclose(got[:, :WAYS], logits, rtol=1e-5, atol=1e-5)
  # The support set bounds the classes; the rest are never predicted.
  assert np.all(np.isneginf(got[:, WAYS:]))
  # The loss the training step differentiates: the cross-entropy of those
  # logits.
  shifted = logits - logits.max(1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
  expected_loss = -log_p[np.arange(len(query)), np.asarray(task.query_y)].mean()
  _, metrics = jax.jit(learner.task_update)(body, task)
  np.testing.assert_allclose(metrics['loss'], expected_loss, rtol=1e-5)
  accuracy = np.mean(logits.argmax(1) == np.asarray(task.query_y))
  evaluate = jax.jit(learner.evaluate, static_argnums=2)
  np.testing.assert_allclose(evaluate(body, task, 0)['accuracy'], accuracy)


def test_protonet_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    model = _tanh_model()
    learner = jaxmeta.protonet(model, jaxmeta.classification_loss)
    body = _to64(learner.init(jax.random.key(0)))
    task = _task(jax.random.key(16), (6,), jnp.float64)
    grad, _ = learner.task_update(body, task)
    loss = lambda b: learner.task_update(b, task)[1]['loss']  # noqa: E731
    direction = _random_like(jax.random.key(17), body)
    expected = _directional_fd(loss, body, direction)
    np.testing.assert_allclose(_tree_dot(grad, direction), expected, rtol=1e-6)


# Baseline and Baseline++.


def test_cosine_logits_match_numpy():
  key_w, key_f = jax.random.split(jax.random.key(18))
  w = jax.random.normal(key_w, (5, 4))
  f = jax.random.normal(key_f, (3, 5))
  got = jaxmeta.models.cosine_logits({'w': w}, f, scale=2.0)
  w, f = np.asarray(w, np.float64), np.asarray(f, np.float64)
  expected = (
    2.0
    * (f @ w)
    / (np.linalg.norm(f, axis=1)[:, None] * np.linalg.norm(w, axis=0)[None])
  )
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def _identity_body_model(dim, ways):
  """A model whose embedding is its input: the head sees the raw features."""

  def init(key):
    return {
      'body': {'unused': jnp.zeros(())},
      'head': jaxmeta.models.init_linear_head(key, dim, ways),
    }

  embed = lambda params, x, *, key=None, step=None: x.reshape(x.shape[0], -1)  # noqa: E731

  def apply(params, x, *, key=None, step=None):
    return jaxmeta.models.linear_head(params['head'], embed(params, x))

  return jaxmeta.Model(init, apply, embed, dim)


@pytest.mark.parametrize(
  'build', [jaxmeta.baseline, jaxmeta.baseline_plus_plus]
)
def test_baseline_fine_tuned_head_separates_a_linearly_separable_task(build):
  # Each class sits along its own direction: a linear and a cosine head
  # both separate them.
  dim, ways = 4, 3
  directions = np.eye(dim)[:ways] * 3.0
  rng = np.random.default_rng(0)
  x = lambda n: (  # noqa: E731
    np.repeat(directions, n, 0) + 0.3 * rng.normal(size=(ways * n, dim))
  ).astype(np.float32)
  y = lambda n: np.repeat(np.arange(ways), n).astype(np.int32)  # noqa: E731
  task = jaxmeta.Task(x(5), y(5), x(20), y(20))
  learner = build(
    _identity_body_model(dim, ways),
    jaxmeta.classification_loss,
    0.5,
    num_classes=10,
  )
  params = learner.init(jax.random.key(0))
  assert params['head']['w'].shape == (dim, 10)
  metrics = learner.evaluate(params, task, 100)
  assert metrics['accuracy'] == 1.0
  assert metrics['accuracy_by_step'].shape == (101,)


@pytest.mark.parametrize('head', ['linear', 'cosine'])
def test_baseline_pretraining_gradient_is_the_all_class_cross_entropy(head):
  model = _conv4()
  learner = jaxmeta.baseline(
    model, jaxmeta.classification_loss, 0.1, num_classes=7, head=head
  )
  traits = jaxmeta.algorithms.traits(learner.name)
  assert traits.train_batches and traits.any_ways
  params = learner.init(jax.random.key(0))
  key = jax.random.key(19)
  x = jax.random.normal(key, (6, 8, 8, 1))
  y = jnp.array([0, 6, 3, 3, 1, 5], jnp.int32)
  batch = jaxmeta.Task(x, y, x[:0], y[:0])
  grad, metrics = learner.task_update(params, batch)

  def reference(p):
    body, h = jaxmeta.models.split_head(p)
    features = model.embed(body, x)
    if head == 'linear':
      logits = features @ h['w'] + h['b']
    else:
      logits = jaxmeta.models.cosine_logits(h, features, 2.0)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  expected = jax.grad(reference)(params)
  _assert_trees_close(grad, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics['loss'], reference(params), rtol=1e-6)


def test_baseline_needs_the_number_of_training_classes():
  with pytest.raises(ValueError, match='num_classes'):
    jaxmeta.baseline(_conv4(), jaxmeta.classification_loss, 0.1)


# The registry.


# MAML++ with every trick on compiles the slowest; its step runs in the quick
# tier through the harness (the sinusoid test).
@pytest.mark.parametrize(
  'name',
  [
    pytest.param(n, marks=pytest.mark.slow) if n == 'maml_plus_plus' else n
    for n in sorted(jaxmeta.ALGORITHMS)
  ],
)
def test_every_registered_method_steps_through_the_meta_train_step(name):
  model = _conv4()
  options = (
    {'num_classes': 5}
    if 'num_classes' in jaxmeta.algorithms.options(name)
    else {}
  )
  learner = jaxmeta.make_learner(
    name, model, jaxmeta.classification_loss, 0.1, 1, **options
  )
  optimizer = optax.adam(1e-3)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  tasks = jax.vmap(_task)(jax.random.split(jax.random.key(20), 2))
  if jaxmeta.algorithms.traits(name).train_batches:
    tasks = tasks._replace(
      support_y=tasks.support_y % 5,
      query_x=tasks.query_x[:, :0],
      query_y=tasks.query_y[:, :0],
    )
  step = jax.jit(functools.partial(jaxmeta.meta_train_step, learner, optimizer))
  new_state, metrics = step(state, tasks)
  assert int(new_state.step) == 1 and np.isfinite(metrics['loss'])
  moved = jax.tree.map(
    lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
    new_state.params,
    state.params,
  )
  assert any(jax.tree.leaves(moved))


def test_make_learner_refuses_options_the_method_does_not_take():
  with pytest.raises(ValueError, match='takes no option'):
    jaxmeta.make_learner(
      'anil', _conv4(), jaxmeta.classification_loss, 0.1, 1, msl_iterations=3
    )
