"""MAML, first-order MAML and Reptile against independent references."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmeta
from jaxmeta.data import sinusoid


# The algorithms this module checks against its references.
_BASIC = ('maml', 'fomaml', 'reptile')


def _to64(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _classification_tasks(
  key, num_tasks=3, ways=3, shots=2, queries=3, dim=4, dtype=jnp.float32
):
  kx, kq = jax.random.split(key)
  support_x = jax.random.normal(kx, (num_tasks, ways * shots, dim), dtype)
  query_x = jax.random.normal(kq, (num_tasks, ways * queries, dim), dtype)
  support_y = jnp.tile(jnp.repeat(jnp.arange(ways), shots), (num_tasks, 1))
  query_y = jnp.tile(jnp.repeat(jnp.arange(ways), queries), (num_tasks, 1))
  return jaxmeta.Task(support_x, support_y, query_x, query_y)


def _task(tasks, i):
  return jax.tree.map(lambda a: a[i], tasks)


# A small smooth model (tanh) so that finite differences are well conditioned.
def _tanh_mlp():
  def init(key):
    k1, k2 = jax.random.split(key)
    return {
      'w1': 0.5 * jax.random.normal(k1, (4, 5)),
      'b1': jnp.zeros(5),
      'w2': 0.5 * jax.random.normal(k2, (5, 3)),
      'b2': jnp.zeros(3),
    }

  def apply(p, x, *, key=None, step=None):
    del key, step
    return jnp.tanh(x @ p['w1'] + p['b1']) @ p['w2'] + p['b2']

  return jaxmeta.Model(init, apply)


def _reference_maml_grad(
  loss_fn, params, tasks, inner_lr, num_steps, first_order
):
  """Per-task Python loop; each inner step written out by hand."""

  def meta_objective(p, task):
    adapted = p
    for _ in range(num_steps):
      g = jax.grad(lambda q: loss_fn(q, task.support_x, task.support_y)[0])(
        adapted
      )
      if first_order:
        g = jax.lax.stop_gradient(g)
      adapted = jax.tree.map(lambda a, b: a - inner_lr * b, adapted, g)
    return loss_fn(adapted, task.query_x, task.query_y)[0]

  num_tasks = tasks.support_x.shape[0]
  # One task's gradient, compiled once for every task of the loop.
  task_grad = jax.jit(jax.grad(meta_objective))
  grads = [task_grad(params, _task(tasks, i)) for i in range(num_tasks)]
  return jax.tree.map(lambda *g: sum(g) / num_tasks, *grads)


@pytest.mark.parametrize('first_order', [False, True])
@pytest.mark.parametrize('num_steps', [1, 3])
def test_maml_gradient_matches_per_task_python_loop(first_order, num_steps):
  model = _tanh_mlp()
  loss_fn = jaxmeta.classification_loss(model.apply)
  params = model.init(jax.random.key(0))
  tasks = _classification_tasks(jax.random.key(1))
  learner = jaxmeta.maml(
    model,
    jaxmeta.classification_loss,
    inner_lr=0.3,
    num_inner_steps=num_steps,
    first_order=first_order,
  )
  grad, _ = jax.jit(jaxmeta.meta_gradient, static_argnums=0)(
    learner, params, tasks
  )
  expected = _reference_maml_grad(
    loss_fn, params, tasks, 0.3, num_steps, first_order
  )
  chex.assert_trees_all_close(grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_maml_gradient_matches_central_finite_differences_float64():
  with jax.enable_x64(True):
    model = _tanh_mlp()
    loss_fn = jaxmeta.classification_loss(model.apply)
    params = _to64(model.init(jax.random.key(0)))
    tasks = _to64(_classification_tasks(jax.random.key(1)))
    tasks = tasks._replace(
      support_y=tasks.support_y.astype(jnp.int32),
      query_y=tasks.query_y.astype(jnp.int32),
    )
    learner = jaxmeta.maml(
      model, jaxmeta.classification_loss, inner_lr=0.5, num_inner_steps=2
    )

    def meta_objective(flat):
      p = unravel(flat)
      return jnp.mean(
        jax.vmap(
          lambda t: loss_fn(
            learner.adapt(p, t.support_x, t.support_y, 2), t.query_x, t.query_y
          )[0]
        )(tasks)
      )

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    grad, _ = jaxmeta.meta_gradient(learner, params, tasks)
    grad = jax.flatten_util.ravel_pytree(grad)[0]
    eps = 1e-5
    basis = jnp.eye(flat.size, dtype=jnp.float64)
    f = jax.jit(jax.vmap(meta_objective))
    fd = (f(flat + eps * basis) - f(flat - eps * basis)) / (2 * eps)
    rel_err = float(jnp.linalg.norm(fd - grad) / jnp.linalg.norm(grad))
    assert rel_err < 1e-6, rel_err
    # Second order too: the meta-objective's own derivatives, by JAX's checker.
    jax.test_util.check_grads(
      meta_objective, (flat,), order=2, modes=('rev',), eps=1e-4
    )


def _linear_regression_closed_forms(theta, task, inner_lr, num_steps):
  """theta' and the three meta-gradients in closed form (numpy, float64).

  Loss L(w) = mean((X w - y)^2): grad = 2/n X^T (X w - y), H = 2/n X^T X.
  """
  xs, ys = np.asarray(task.support_x), np.asarray(task.support_y)[:, 0]
  xq, yq = np.asarray(task.query_x), np.asarray(task.query_y)[:, 0]
  grad = lambda x, y, w: 2.0 / len(y) * x.T @ (x @ w - y)
  hess_s = 2.0 / len(ys) * xs.T @ xs
  w = theta.copy()
  for _ in range(num_steps):
    w = w - inner_lr * grad(xs, ys, w)
  jacobian = np.linalg.matrix_power(
    np.eye(len(theta)) - inner_lr * hess_s, num_steps
  )
  g_q = grad(xq, yq, w)
  return {
    'adapted': w,
    'maml': jacobian @ g_q,
    'fomaml': g_q,
    'reptile': theta - w,
  }


@pytest.mark.parametrize('num_steps', [1, 3])
def test_linear_regression_gradients_match_closed_forms(num_steps):
  with jax.enable_x64(True):
    dim, inner_lr = 3, 0.1
    apply = lambda w, x, *, key=None, step=None: x @ w[:, None]  # [n, 1]
    key = jax.random.key(0)
    kt, k1, k2, k3, k4 = jax.random.split(key, 5)
    theta = jax.random.normal(kt, (dim,), jnp.float64)
    task = jaxmeta.Task(
      jax.random.normal(k1, (6, dim), jnp.float64),
      jax.random.normal(k2, (6, 1), jnp.float64),
      jax.random.normal(k3, (8, dim), jnp.float64),
      jax.random.normal(k4, (8, 1), jnp.float64),
    )
    expected = _linear_regression_closed_forms(
      np.asarray(theta), task, inner_lr, num_steps
    )
    for name in _BASIC:
      learner = jaxmeta.make_learner(
        name,
        jaxmeta.Model(lambda k: theta, apply),
        jaxmeta.regression_loss,
        inner_lr,
        num_steps,
      )
      grad, _ = learner.task_update(theta, task)
      np.testing.assert_allclose(grad, expected[name], rtol=1e-10, err_msg=name)
      adapted = learner.adapt(theta, task.support_x, task.support_y, num_steps)
      np.testing.assert_allclose(adapted, expected['adapted'], rtol=1e-10)


def test_reptile_update_is_interpolation_towards_adapted_weights():
  """theta <- theta + eps * mean_i(phi_i - theta), phi_i by hand."""
  model = _tanh_mlp()
  loss_fn = jaxmeta.classification_loss(model.apply)
  tasks = _classification_tasks(jax.random.key(2))
  inner_lr, num_steps, eps = 0.2, 4, 0.7
  learner = jaxmeta.reptile(
    model, jaxmeta.classification_loss, inner_lr, num_steps
  )
  optimizer = optax.sgd(eps)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(3))
  theta = state.params

  phis = []
  for i in range(tasks.support_x.shape[0]):
    t = _task(tasks, i)
    phi = theta
    for _ in range(num_steps):
      g = jax.grad(lambda p: loss_fn(p, t.support_x, t.support_y)[0])(phi)
      phi = jax.tree.map(lambda a, b: a - inner_lr * b, phi, g)
    phis.append(phi)
  mean_phi = jax.tree.map(lambda *p: sum(p) / len(p), *phis)
  expected = jax.tree.map(lambda t, m: t + eps * (m - t), theta, mean_phi)

  new_state, _ = jax.jit(jaxmeta.make_meta_train_step(learner, optimizer))(
    state, tasks
  )
  chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-6)

  # As a pseudo-gradient for any optax optimiser: Adam gets mean(theta - phi).
  adam = optax.adam(1e-2)
  state = jaxmeta.init_train_state(learner, adam, jax.random.key(3))
  new_state, _ = jaxmeta.meta_train_step(learner, adam, state, tasks)
  pseudo_grad = jax.tree.map(jnp.subtract, theta, mean_phi)
  updates, _ = adam.update(pseudo_grad, adam.init(theta), theta)
  chex.assert_trees_all_close(
    new_state.params, optax.apply_updates(theta, updates), rtol=1e-5, atol=1e-6
  )


def test_reptile_without_query_metrics_does_the_same_update():
  model = _tanh_mlp()
  loss_fn = jaxmeta.classification_loss(model.apply)
  tasks = _classification_tasks(jax.random.key(2))
  params = model.init(jax.random.key(3))
  with_query = jaxmeta.reptile(model, jaxmeta.classification_loss, 0.2, 3)
  without = jaxmeta.reptile(
    model, jaxmeta.classification_loss, 0.2, 3, query_metrics=False
  )
  grad_q, metrics_q = jaxmeta.meta_gradient(with_query, params, tasks)
  grad, metrics = jaxmeta.meta_gradient(without, params, tasks)
  chex.assert_trees_all_close(grad, grad_q, rtol=1e-6, atol=1e-7)
  assert set(metrics_q) == {'loss', 'accuracy'}
  assert set(metrics) == {'support_loss', 'support_accuracy'}
  # The support loss of the last inner step, at the weights after 2 steps.
  support_losses = []
  for i in range(tasks.support_x.shape[0]):
    t = _task(tasks, i)
    phi = with_query.adapt(params, t.support_x, t.support_y, 2)
    support_losses.append(loss_fn(phi, t.support_x, t.support_y)[0])
  np.testing.assert_allclose(
    metrics['support_loss'], np.mean(support_losses), rtol=1e-5
  )
  with pytest.raises(ValueError, match='num_inner_steps'):
    jaxmeta.reptile(
      model, jaxmeta.classification_loss, 0.2, 0, query_metrics=False
    )


@pytest.mark.parametrize('name', _BASIC)
def test_vmap_over_tasks_equals_loop_over_tasks(name):
  model = _tanh_mlp()
  params = model.init(jax.random.key(0))
  tasks = _classification_tasks(jax.random.key(4), num_tasks=3)
  learner = jaxmeta.make_learner(
    name, model, jaxmeta.classification_loss, 0.3, 2
  )
  grad, metrics = jaxmeta.meta_gradient(learner, params, tasks)
  per_task = [learner.task_update(params, _task(tasks, i)) for i in range(3)]
  loop_grad = jax.tree.map(lambda *g: sum(g) / 3, *[g for g, _ in per_task])
  loop_loss = sum(m['loss'] for _, m in per_task) / 3
  chex.assert_trees_all_close(grad, loop_grad, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics['loss'], loop_loss, rtol=1e-5)


def test_scan_inner_loop_equals_unrolled_loop():
  model = _tanh_mlp()
  loss_fn = jaxmeta.classification_loss(model.apply)
  params = model.init(jax.random.key(0))
  task = _task(_classification_tasks(jax.random.key(5)), 0)
  inner_lr, num_steps = 0.25, 5
  adapted, trace = jaxmeta.inner_loop(
    loss_fn,
    params,
    task.support_x,
    task.support_y,
    num_steps,
    optax.sgd(inner_lr),
  )
  unrolled, losses = params, []
  for _ in range(num_steps):
    (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(
      unrolled, task.support_x, task.support_y
    )
    losses.append(loss)
    unrolled = jax.tree.map(lambda a, b: a - inner_lr * b, unrolled, g)
  chex.assert_trees_all_close(adapted, unrolled, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(trace['support_loss'], losses, rtol=1e-6)


def test_inner_loop_is_a_loop_in_the_compiled_program():
  """More inner steps must not mean a bigger program (no Python unrolling)."""
  model = jaxmeta.mlp((4, 8, 3))
  tasks = _classification_tasks(jax.random.key(6))
  optimizer = optax.adam(1e-3)

  def program(num_steps):
    learner = jaxmeta.maml(model, jaxmeta.classification_loss, 0.1, num_steps)
    state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
    step = jaxmeta.make_meta_train_step(learner, optimizer)
    return jax.jit(step).lower(state, tasks).as_text()

  two, twenty = program(2), program(20)
  assert 'while' in two
  # The step count appears as a loop bound, so the texts differ by a few
  # characters at most; an unrolled loop would grow ten-fold.
  assert abs(len(twenty) - len(two)) < 0.02 * len(two)
  assert 'callback' not in twenty.lower()


def test_meta_train_step_compiles_once():
  model = jaxmeta.mlp((4, 8, 3))
  learner = jaxmeta.maml(model, jaxmeta.classification_loss, 0.1, 2)
  optimizer = optax.adam(1e-3)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  traces = []

  def step(state, tasks):
    traces.append(1)  # Runs only when JAX traces the function.
    return jaxmeta.meta_train_step(learner, optimizer, state, tasks)

  jitted = jax.jit(step, donate_argnums=0)
  for i in range(4):
    state, _ = jitted(state, _classification_tasks(jax.random.key(10 + i)))
  assert len(traces) == 1
  assert jitted._cache_size() == 1
  assert int(state.step) == 4


def test_sampled_step_draws_tasks_from_step_key():
  model = jaxmeta.mlp((1, 8, 1))
  learner = jaxmeta.maml(model, jaxmeta.regression_loss, 0.01, 1)
  optimizer = optax.adam(1e-3)
  sample = functools.partial(
    sinusoid.sample_tasks, num_tasks=4, shots=5, queries=5
  )
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  sampled = jax.jit(jaxmeta.make_meta_train_step(learner, optimizer, sample))
  given = jax.jit(jaxmeta.make_meta_train_step(learner, optimizer))
  tasks = sample(jax.random.fold_in(state.key, state.step))
  a, _ = sampled(state)
  b, _ = given(state, tasks)
  chex.assert_trees_all_close(a.params, b.params)


def test_evaluate_reports_metrics_before_and_after_each_step():
  model = _tanh_mlp()
  loss_fn = jaxmeta.classification_loss(model.apply)
  params = model.init(jax.random.key(0))
  task = _task(_classification_tasks(jax.random.key(7)), 0)
  learner = jaxmeta.maml(model, jaxmeta.classification_loss, 0.5, 1)
  metrics = learner.evaluate(params, task, 3)
  assert metrics['loss_by_step'].shape == (4,)
  before, _ = loss_fn(params, task.query_x, task.query_y)
  after, _ = loss_fn(
    learner.adapt(params, task.support_x, task.support_y, 3),
    task.query_x,
    task.query_y,
  )
  np.testing.assert_allclose(metrics['loss_by_step'][0], before, rtol=1e-6)
  np.testing.assert_allclose(metrics['loss'], after, rtol=1e-6)
  np.testing.assert_allclose(metrics['loss_by_step'][-1], after, rtol=1e-6)


def test_make_learner_rejects_unknown_names():
  with pytest.raises(ValueError, match='Unknown algorithm'):
    jaxmeta.make_learner('mamll', None, None, 0.1, 1)


def test_short_sinusoid_meta_training_cuts_post_adaptation_loss():
  model = jaxmeta.mlp((1, 40, 40, 1))
  learner = jaxmeta.maml(
    model,
    jaxmeta.regression_loss,
    inner_lr=0.01,
    num_inner_steps=1,
  )
  optimizer = optax.adam(1e-3)
  sample = functools.partial(
    sinusoid.sample_tasks, num_tasks=25, shots=10, queries=10
  )
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  step = jax.jit(
    jaxmeta.make_meta_train_step(learner, optimizer, sample), donate_argnums=0
  )
  evaluate = jax.jit(jaxmeta.make_evaluate(learner, 10))
  test_tasks = sinusoid.sample_tasks(jax.random.key(99), 100, 10, 50)
  before = float(jnp.mean(evaluate(state.params, test_tasks)['mse']))
  for _ in range(1500):
    state, _ = step(state)
  after = evaluate(state.params, test_tasks)
  post, pre = (
    float(jnp.mean(after['mse'])),
    float(jnp.mean(after['mse_by_step'][:, 0])),
  )
  # Untrained, 10 steps of adaptation leave MSE ~ 3; meta-trained, ~0.5.
  assert post < 0.35 * before, (post, before)
  assert post < 0.35 * pre, (post, pre)


def test_pretrain_baseline_takes_plain_gradients_on_pooled_task_data():
  model = _tanh_mlp()
  loss_fn = jaxmeta.classification_loss(model.apply)
  params = model.init(jax.random.key(0))
  task = _task(_classification_tasks(jax.random.key(8)), 0)
  learner = jaxmeta.make_learner(
    'pretrain', model, jaxmeta.classification_loss, 0.1, 1
  )
  grad, _ = learner.task_update(params, task)
  pooled = lambda p: loss_fn(
    p,
    jnp.concatenate([task.support_x, task.query_x]),
    jnp.concatenate([task.support_y, task.query_y]),
  )[0]
  chex.assert_trees_all_close(grad, jax.grad(pooled)(params), rtol=1e-6)


@pytest.mark.parametrize('name', _BASIC)
def test_task_chunks_give_the_same_meta_gradient(name):
  model = _tanh_mlp()
  params = model.init(jax.random.key(0))
  tasks = _classification_tasks(jax.random.key(9), num_tasks=6)
  learner = jaxmeta.make_learner(
    name, model, jaxmeta.classification_loss, 0.3, 2
  )
  full = jax.jit(
    functools.partial(jaxmeta.meta_gradient, learner, task_chunk_size=6)
  )(params, tasks)
  for chunk in (None, 1, 2, 3):
    chunked = jax.jit(
      functools.partial(jaxmeta.meta_gradient, learner, task_chunk_size=chunk)
    )(params, tasks)
    chex.assert_trees_all_close(chunked, full, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='divide'):
    jaxmeta.meta_gradient(learner, params, tasks, task_chunk_size=4)


def test_the_default_chunking_is_the_backends_fastest():
  assert jaxmeta.default_task_chunk_size(32) == (
    1 if jax.default_backend() == 'cpu' else 32
  )


@pytest.mark.parametrize('name', _BASIC)
def test_task_chunks_give_the_same_evaluation(name):
  model = _tanh_mlp()
  params = model.init(jax.random.key(0))
  tasks = _classification_tasks(jax.random.key(10), num_tasks=6)
  learner = jaxmeta.make_learner(
    name, model, jaxmeta.classification_loss, 0.3, 2
  )
  loop = [learner.evaluate(params, _task(tasks, i), 3) for i in range(6)]
  expected = jax.tree.map(lambda *v: np.stack(v), *loop)
  for chunk in (None, 1, 2, 3, 6):
    got = jax.jit(jaxmeta.make_evaluate(learner, 3, task_chunk_size=chunk))(
      params, tasks
    )
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='divide'):
    jaxmeta.make_evaluate(learner, 3, task_chunk_size=4)(params, tasks)


@pytest.mark.parametrize(
  'build', [jaxmeta.maml, jaxmeta.fomaml, jaxmeta.reptile, jaxmeta.pretrain]
)
def test_negative_inner_steps_are_refused_by_name(build):
  model = _tanh_mlp()
  with pytest.raises(ValueError, match='num_inner_steps must be >= 0'):
    build(model, jaxmeta.classification_loss, 0.1, -1)


def test_inner_loop_refuses_negative_steps_by_name():
  model = _tanh_mlp()
  loss_fn = jaxmeta.classification_loss(model.apply)
  task = _task(_classification_tasks(jax.random.key(0)), 0)
  with pytest.raises(ValueError, match='num_steps must be >= 0'):
    jaxmeta.inner_loop(
      loss_fn,
      model.init(jax.random.key(1)),
      task.support_x,
      task.support_y,
      -1,
      optax.sgd(0.1),
    )


@pytest.mark.parametrize(
  'build', [jaxmeta.maml, jaxmeta.fomaml, jaxmeta.reptile, jaxmeta.pretrain]
)
@pytest.mark.parametrize('inner_lr', [0.0, -0.1, float('nan'), float('inf')])
def test_non_positive_or_non_finite_inner_lr_is_refused(build, inner_lr):
  model = _tanh_mlp()
  with pytest.raises(ValueError, match='inner_lr must be a finite number > 0'):
    build(model, jaxmeta.classification_loss, inner_lr, 1)


def test_reptile_with_its_own_inner_optimizer_ignores_inner_lr():
  model = _tanh_mlp()
  jaxmeta.reptile(
    model, jaxmeta.classification_loss, 0.0, 1, inner_optimizer=optax.adam(1e-3)
  )


@pytest.mark.parametrize('name', ['maml', 'fomaml', 'reptile', 'pretrain'])
@pytest.mark.parametrize('field', ['support_y', 'query_y'])
def test_labels_of_the_wrong_length_are_refused_at_trace_time(name, field):
  model = _tanh_mlp()
  learner = jaxmeta.make_learner(
    name, model, jaxmeta.classification_loss, 0.1, 1
  )
  tasks = _classification_tasks(jax.random.key(0))
  tasks = tasks._replace(**{field: getattr(tasks, field)[:, :-1]})
  params = learner.init(jax.random.key(1))
  what = field.split('_')[0]
  with pytest.raises(ValueError, match=f'The {what} inputs and targets'):
    jax.jit(jax.vmap(learner.task_update, (None, 0)))(params, tasks)
  with pytest.raises(ValueError, match=f'The {what} inputs and targets'):
    jax.jit(jax.vmap(learner.evaluate, (None, 0, None)), static_argnums=2)(
      params, tasks, 1
    )
