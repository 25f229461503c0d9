"""The model's PRNG keys in meta-training, against per-task references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmeta

_RATE = 0.5


def _dropout_mlp():
  """tanh MLP with dropout on the hidden layer when given a key."""

  def init(key):
    k1, k2 = jax.random.split(key)
    return {
      'w1': 0.5 * jax.random.normal(k1, (4, 6)),
      'b1': jnp.zeros(6),
      'w2': 0.5 * jax.random.normal(k2, (6, 3)),
      'b2': jnp.zeros(3),
    }

  def apply(p, x, *, key=None, step=None):
    del step
    h = jnp.tanh(x @ p['w1'] + p['b1'])  # [batch, 6]
    if key is not None:
      keep = jax.random.bernoulli(key, 1 - _RATE, h.shape)
      h = jnp.where(keep, h / (1 - _RATE), 0.0)
    return h @ p['w2'] + p['b2']

  return jaxmeta.Model(init, apply)


def _tasks(num_tasks=4, ways=3, shots=2, queries=3):
  kx, kq = jax.random.split(jax.random.key(1))
  return jaxmeta.Task(
    jax.random.normal(kx, (num_tasks, ways * shots, 4)),
    jnp.tile(jnp.repeat(jnp.arange(ways), shots), (num_tasks, 1)),
    jax.random.normal(kq, (num_tasks, ways * queries, 4)),
    jnp.tile(jnp.repeat(jnp.arange(ways), queries), (num_tasks, 1)),
  )


def _task(tasks, i):
  return jax.tree.map(lambda a: a[i], tasks)


def _maml_keys_reference(loss_fn, params, tasks, key, inner_lr, num_steps):
  """The documented key schedule, written out task by task and step by step.

  Task `i` gets `split(key, n)[i]`; its inner loop `fold_in(., 0)` and its
  query loss `fold_in(., 1)`; inner step `s` gets `fold_in(fold_in(inner,
  s), 0)` for its support loss.
  """
  num_tasks = tasks.support_x.shape[0]
  task_keys = jax.random.split(key, num_tasks)

  def objective(p, task, inner_key, query_key):
    for s in range(num_steps):
      support_key = jax.random.fold_in(jax.random.fold_in(inner_key, s), 0)
      g = jax.grad(
        lambda q: loss_fn(q, task.support_x, task.support_y, support_key)[0]
      )(p)
      p = jax.tree.map(lambda a, b: a - inner_lr * b, p, g)
    return loss_fn(p, task.query_x, task.query_y, query_key)[0]

  task_grad = jax.jit(jax.grad(objective))  # Compiled once for every task.
  grads = []
  for i in range(num_tasks):
    inner_key = jax.random.fold_in(task_keys[i], 0)
    query_key = jax.random.fold_in(task_keys[i], 1)
    grads.append(task_grad(params, _task(tasks, i), inner_key, query_key))
  return jax.tree.map(lambda *g: sum(g) / num_tasks, *grads)


def _learner(name='maml', num_steps=2):
  model = _dropout_mlp()
  return jaxmeta.make_learner(
    name,
    model,
    jaxmeta.classification_loss,
    inner_lr=0.3,
    num_inner_steps=num_steps,
  )


def test_losses_hand_the_key_and_step_to_the_model():
  calls = []

  def apply(params, x, **kwargs):
    calls.append(kwargs)
    return x @ params

  params, x = jnp.ones((2, 3)), jnp.ones((4, 2))
  key = jax.random.key(0)
  jaxmeta.classification_loss(apply)(params, x, jnp.zeros(4, jnp.int32))
  jaxmeta.regression_loss(apply)(params, x, jnp.zeros((4, 3)), key, step=2)
  assert calls == [{'key': None, 'step': None}, {'key': key, 'step': 2}]


@pytest.mark.parametrize('task_chunk_size', [None, 1, 2])
def test_maml_meta_gradient_follows_the_key_schedule(task_chunk_size):
  learner = _learner()
  params, tasks = learner.init(jax.random.key(0)), _tasks()
  key = jax.random.key(7)
  grad, _ = jax.jit(jaxmeta.meta_gradient, static_argnums=(0, 3))(
    learner, params, tasks, task_chunk_size, key
  )
  expected = _maml_keys_reference(
    jaxmeta.classification_loss(_dropout_mlp().apply),
    params,
    tasks,
    key,
    inner_lr=0.3,
    num_steps=2,
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    grad,
    expected,
  )


def test_per_task_keys_are_the_split_of_the_step_key():
  learner = _learner()
  params, tasks = learner.init(jax.random.key(0)), _tasks()
  key = jax.random.key(7)
  num_tasks = jax.tree.leaves(tasks)[0].shape[0]
  by_key, _ = jaxmeta.meta_gradient(learner, params, tasks, 1, key=key)
  by_task, _ = jaxmeta.meta_gradient(
    learner, params, tasks, 1, task_keys=jax.random.split(key, num_tasks)
  )
  jax.tree.map(np.testing.assert_array_equal, by_key, by_task)
  with pytest.raises(ValueError, match='key or task_keys'):
    jaxmeta.meta_gradient(
      learner,
      params,
      tasks,
      key=key,
      task_keys=jax.random.split(key, num_tasks),
    )


@pytest.mark.parametrize('name', ['maml', 'fomaml', 'reptile', 'pretrain'])
def test_keys_change_the_meta_gradient_reproducibly(name):
  learner = _learner(name)
  params, tasks = learner.init(jax.random.key(0)), _tasks()
  meta_grad = jax.jit(
    lambda k: jaxmeta.meta_gradient(learner, params, tasks, key=k)[0]
  )
  g1, g1_again, g2 = (meta_grad(jax.random.key(k)) for k in (1, 1, 2))
  leaves = lambda t: np.concatenate([np.ravel(v) for v in jax.tree.leaves(t)])
  np.testing.assert_array_equal(leaves(g1), leaves(g1_again))
  assert np.max(np.abs(leaves(g1) - leaves(g2))) > 1e-3


def test_reptile_key_schedule():
  learner = _learner('reptile', num_steps=2)
  loss_fn = jaxmeta.classification_loss(_dropout_mlp().apply)
  params, task = learner.init(jax.random.key(0)), _task(_tasks(), 0)
  key = jax.random.key(3)
  pseudo_grad, metrics = learner.task_update(params, task, key)
  inner_key = jax.random.fold_in(key, 0)
  p = params
  for s in range(2):
    support_key = jax.random.fold_in(jax.random.fold_in(inner_key, s), 0)
    g = jax.grad(
      lambda q: loss_fn(q, task.support_x, task.support_y, support_key)[0]
    )(p)
    p = jax.tree.map(lambda a, b: a - 0.3 * b, p, g)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
    pseudo_grad,
    jax.tree.map(jnp.subtract, params, p),
  )
  _, expected = loss_fn(
    p, task.query_x, task.query_y, jax.random.fold_in(key, 1)
  )
  np.testing.assert_allclose(metrics['loss'], expected['loss'], rtol=1e-5)


def test_no_key_is_the_deterministic_meta_gradient():
  """key=None: the model gets no key (dropout off), as before keys existed."""
  learner = _learner()
  loss_fn = jaxmeta.classification_loss(_dropout_mlp().apply)
  params, tasks = learner.init(jax.random.key(0)), _tasks()
  grad, _ = jaxmeta.meta_gradient(learner, params, tasks)

  def objective(p, task):
    for _ in range(2):
      g = jax.grad(lambda q: loss_fn(q, task.support_x, task.support_y)[0])(p)
      p = jax.tree.map(lambda a, b: a - 0.3 * b, p, g)
    return loss_fn(p, task.query_x, task.query_y)[0]

  task_grad = jax.jit(jax.grad(objective))
  grads = [task_grad(params, _task(tasks, i)) for i in range(4)]
  expected = jax.tree.map(lambda *g: sum(g) / 4, *grads)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
    grad,
    expected,
  )


def test_a_model_that_ignores_keys_gives_the_keyless_step_bit_for_bit():
  model = jaxmeta.mlp((4, 8, 3))
  learner = jaxmeta.maml(
    model,
    jaxmeta.classification_loss,
    inner_lr=0.3,
    num_inner_steps=2,
  )
  optimizer = optax.adam(1e-2)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  tasks = _tasks()
  keyless = jax.jit(jaxmeta.make_meta_train_step(learner, optimizer))
  keyed = jax.jit(
    jaxmeta.make_meta_train_step(learner, optimizer, model_keys=True)
  )
  old = jax.jit(lambda s, t: jaxmeta.meta_train_step(learner, optimizer, s, t))
  (s1, m1), (s2, m2), (s3, m3) = (
    f(state, tasks) for f in (keyless, keyed, old)
  )
  for other_state, other_metrics in ((s2, m2), (s3, m3)):
    jax.tree.map(np.testing.assert_array_equal, s1.params, other_state.params)
    jax.tree.map(np.testing.assert_array_equal, m1, other_metrics)


def test_meta_train_step_with_model_keys():
  learner = _learner()
  optimizer = optax.sgd(0.1)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  tasks = _tasks()
  step = jax.jit(
    jaxmeta.make_meta_train_step(learner, optimizer, model_keys=True)
  )
  new_state, metrics = step(state, tasks)
  grad, expected_metrics = jaxmeta.meta_gradient(
    learner, state.params, tasks, key=jaxmeta.model_key(state)
  )
  expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grad)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
    new_state.params,
    expected,
  )
  np.testing.assert_allclose(
    metrics['loss'], expected_metrics['loss'], rtol=1e-5
  )
  # Step 1 draws other masks than step 0 from the same parameters.
  g0 = jaxmeta.meta_gradient(
    learner, state.params, tasks, key=jaxmeta.model_key(state)
  )[0]
  g1 = jaxmeta.meta_gradient(
    learner, state.params, tasks, key=jaxmeta.model_key(state.replace(step=1))
  )[0]
  assert not np.allclose(g0['w1'], g1['w1'])


def test_model_key_is_none_of_the_task_keys():
  """A sampler splitting the step's key never hands out the model's key."""
  state = jaxmeta.init_train_state(
    _learner(), optax.sgd(0.1), jax.random.key(0)
  ).replace(step=5)
  step_key = jax.random.fold_in(state.key, 5)
  task_keys = jax.random.key_data(jax.random.split(step_key, 4096))
  model = jax.random.key_data(jaxmeta.model_key(state))
  assert not np.any(np.all(task_keys == model, axis=-1))
  assert not np.any(np.all(task_keys == jax.random.key_data(step_key), axis=-1))
