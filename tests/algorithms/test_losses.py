"""Losses: checks of labels and shapes, and what out-of-range labels give."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmeta


def _linear_loss():
  apply_fn = lambda w, x, *, key=None, step=None: x @ w  # [batch, 3] logits
  return jaxmeta.classification_loss(apply_fn), jnp.ones((2, 3)) * 0.1


def test_concrete_out_of_range_labels_are_refused_eagerly():
  loss_fn, w = _linear_loss()
  x = jnp.ones((3, 2))
  for bad in (3, -1):
    with pytest.raises(ValueError, match=r'Labels must lie in \[0, 3\)'):
      loss_fn(w, x, jnp.array([0, 1, bad]))


@pytest.mark.parametrize('bad', [3, -1])
def test_traced_out_of_range_labels_give_nan_loss_and_gradients(bad):
  # Before: label 3 gave a NaN loss with finite gradients, label -1 a finite
  # loss (it indexed the last logit), and training went on.
  loss_fn, w = _linear_loss()
  x = jnp.arange(6.0).reshape(3, 2)
  y = jnp.array([0, 1, bad])
  (loss, metrics), grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
    w, x, y
  )
  assert np.isnan(loss) and np.isnan(metrics['accuracy'])
  assert np.all(np.isnan(grad))


def test_traced_valid_labels_give_the_plain_cross_entropy():
  loss_fn, w = _linear_loss()
  x = jnp.arange(6.0).reshape(3, 2)
  y = jnp.array([0, 1, 2])
  loss, metrics = jax.jit(loss_fn)(w, x, y)
  logits = np.asarray(x @ w)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(
    loss, -log_p[np.arange(3), [0, 1, 2]].mean(), rtol=1e-6
  )
  assert metrics['accuracy'] == pytest.approx(1 / 3)


def test_a_bad_support_label_makes_the_maml_meta_loss_nan():
  model = jaxmeta.mlp((2, 3))
  learner = jaxmeta.maml(model, jaxmeta.classification_loss, 0.1, 1)
  task = jaxmeta.Task(
    jnp.ones((3, 2)),
    jnp.array([0, 1, 5]),
    jnp.ones((3, 2)),
    jnp.array([0, 1, 2]),
  )
  grad, metrics = jax.jit(learner.task_update)(
    learner.init(jax.random.key(0)), task
  )
  assert np.isnan(metrics['loss'])
  assert all(np.all(np.isnan(g)) for g in jax.tree.leaves(grad))


@pytest.mark.parametrize(
  'y',
  [
    jnp.zeros((3, 1), jnp.int32),
    jnp.zeros((3,), jnp.float32),
    jnp.zeros((2,), jnp.int32),
  ],
)
def test_labels_of_the_wrong_shape_or_dtype_are_refused(y):
  loss_fn, w = _linear_loss()
  with pytest.raises(ValueError, match='labels|targets'):
    jax.jit(loss_fn)(w, jnp.ones((3, 2)), y)


def test_regression_targets_of_the_wrong_length_are_refused():
  model = jaxmeta.mlp((1, 1))
  loss_fn = jaxmeta.regression_loss(model.apply)
  with pytest.raises(ValueError, match='same leading'):
    loss_fn(model.init(jax.random.key(0)), jnp.ones((4, 1)), jnp.ones((1, 1)))
