"""R2-D2 against NumPy's primal ridge regression and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmeta
from support.gradients import check_directional_derivative
from jaxmeta.algorithms.r2d2 import ridge_weights


def _smooth_model(features=7, ways=4):
  """A sine feature map with a head (smooth, for finite differences)."""

  def init(key):
    k1, k2 = jax.random.split(key)
    return {
      'body': {'w': jax.random.normal(k1, (5, features)) / 2},
      'head': jaxmeta.models.init_linear_head(k2, features, ways),
    }

  def embed(params, x, *, key=None, step=None):
    del key, step
    return jnp.sin(x @ params['body']['w'])

  def apply(params, x, *, key=None, step=None):
    return jaxmeta.models.linear_head(params['head'], embed(params, x))

  return jaxmeta.Model(init, apply, embed, features)


def _episode(key, ways=3, shots=2, queries=3, dtype=jnp.float64):
  k1, k2 = jax.random.split(key)
  labels = jnp.arange(ways, dtype=jnp.int32)
  return jaxmeta.Task(
    support_x=jax.random.normal(k1, (ways * shots, 5), dtype),
    support_y=jnp.repeat(labels, shots),
    query_x=jax.random.normal(k2, (ways * queries, 5), dtype),
    query_y=jnp.repeat(labels, queries),
  )


def _numpy_logits(meta, task, model):
  """The primal ridge solution `(X^T X + lambda I)^-1 X^T Y` in NumPy."""
  body = meta['model']
  x = np.asarray(model.embed(body, task.support_x), np.float64)
  q = np.asarray(model.embed(body, task.query_x), np.float64)
  ridge = np.exp(float(meta['ridge']['log_lambda']))
  scale = np.exp(float(meta['ridge']['log_scale']))
  num_classes = len(x)
  y = np.eye(num_classes)[np.asarray(task.support_y)]
  w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)
  logits = scale * q @ w
  present = np.isin(np.arange(num_classes), np.asarray(task.support_y))
  return np.where(present[None], logits, -np.inf)


def test_ridge_weights_are_the_primal_solution():
  with jax.enable_x64(True):
    features = jax.random.normal(jax.random.key(0), (6, 9), jnp.float64)
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    got = ridge_weights(features, labels, 6, 0.3)
    x, y = np.asarray(features), np.eye(6)[np.asarray(labels)]
    want = np.linalg.solve(x.T @ x + 0.3 * np.eye(9), x.T @ y)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.all(np.asarray(got[:, 3:]) == 0)  # Classes without examples.


def test_logits_loss_and_accuracy_match_numpy():
  with jax.enable_x64(True):
    model = _smooth_model()
    learner = jaxmeta.r2d2(
      model, jaxmeta.classification_loss, init_ridge=0.5, init_scale=3.0
    )
    meta = jax.tree.map(jnp.float64, learner.init(jax.random.key(1)))
    assert 'head' not in meta['model']
    np.testing.assert_allclose(jnp.exp(meta['ridge']['log_lambda']), 0.5)
    task = _episode(jax.random.key(2))
    want = _numpy_logits(meta, task, model)
    adapted = learner.adapt(meta, task.support_x, task.support_y, 0)
    got = learner.predict(adapted, task.query_x)
    np.testing.assert_allclose(got[:, :3], want[:, :3], rtol=1e-10)
    assert np.all(np.isneginf(got[:, 3:]))
    labels = np.asarray(task.query_y)
    finite = want[:, :3]
    log_p = finite - np.log(np.exp(finite).sum(1, keepdims=True))
    _, metrics = learner.task_update(meta, task)
    np.testing.assert_allclose(
      metrics['loss'], -log_p[np.arange(len(labels)), labels].mean(), rtol=1e-10
    )
    evaluated = learner.evaluate(meta, task, 2)
    accuracy = np.mean(finite.argmax(1) == labels)
    np.testing.assert_allclose(evaluated['accuracy'], accuracy)
    np.testing.assert_allclose(evaluated['accuracy_by_step'], [accuracy] * 3)


def test_meta_gradient_matches_finite_differences():
  """Through the solve, for the body, the ridge and the scale."""
  with jax.enable_x64(True):
    learner = jaxmeta.r2d2(_smooth_model(), jaxmeta.classification_loss)
    meta = jax.tree.map(jnp.float64, learner.init(jax.random.key(3)))
    task = _episode(jax.random.key(4))
    grad, _ = learner.task_update(meta, task)
    loss = lambda m: learner.task_update(m, task)[1]['loss']  # noqa: E731
    got, expected = check_directional_derivative(
      grad, loss, meta, jax.random.key(5)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    for name in ('log_lambda', 'log_scale'):
      assert grad['ridge'][name] != 0


def test_registered_and_trains_in_the_meta_train_step():
  assert jaxmeta.algorithms.traits('r2d2').any_ways
  model = jaxmeta.conv4(3, (8, 8, 1), num_filters=4, num_blocks=2)
  learner = jaxmeta.make_learner(
    'r2d2', model, jaxmeta.classification_loss, 0.1, 0
  )
  optimizer = optax.adam(1e-2)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  tasks = jax.vmap(
    lambda k: _episode(k, dtype=jnp.float32)._replace(
      support_x=jax.random.normal(k, (6, 8, 8, 1)),
      query_x=jax.random.normal(jax.random.fold_in(k, 1), (9, 8, 8, 1)),
    )
  )(jax.random.split(jax.random.key(6), 2))
  step = jax.jit(
    lambda s: jaxmeta.meta_train_step(learner, optimizer, s, tasks)
  )
  losses = []
  for _ in range(5):
    state, metrics = step(state)
    losses.append(float(metrics['loss']))
  assert losses[-1] < losses[0]  # The same tasks: the loss must fall.


def test_refuses_a_non_positive_initial_ridge():
  with pytest.raises(ValueError, match='init_ridge'):
    jaxmeta.r2d2(_smooth_model(), jaxmeta.classification_loss, init_ridge=0.0)
