"""Implicit MAML against the exact gradient through a converged inner solve:
a closed form on a quadratic, finite differences on a small tanh network."""

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmeta
from support.gradients import check_directional_derivative

LAMBDA = 2.0


def _linear_model(dim=3):
  def init(key):
    return {'w': jax.random.normal(key, (dim, 1))}

  def apply(params, x, *, key=None, step=None):
    del key, step
    return x @ params['w']

  return jaxmeta.Model(init, apply)


def _tanh_model(dim=3, hidden=4):
  def init(key):
    k1, k2 = jax.random.split(key)
    return {
      'w1': jax.random.normal(k1, (dim, hidden)) / 2,
      'w2': jax.random.normal(k2, (hidden, 1)) / 2,
    }

  def apply(params, x, *, key=None, step=None):
    del key, step
    return jnp.tanh(x @ params['w1']) @ params['w2']

  return jaxmeta.Model(init, apply)


def _regression_task(key, dim=3, support=6, query=5, dtype=jnp.float64):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return jaxmeta.Task(
    support_x=jax.random.normal(k1, (support, dim), dtype),
    support_y=jax.random.normal(k2, (support, 1), dtype),
    query_x=jax.random.normal(k3, (query, dim), dtype),
    query_y=jax.random.normal(k4, (query, 1), dtype),
  )


def _learner(model, steps, cg_steps, inner_lr=0.1):
  return jaxmeta.imaml(
    model,
    jaxmeta.regression_loss,
    inner_lr,
    steps,
    reg_lambda=LAMBDA,
    cg_steps=cg_steps,
  )


def test_quadratic_meta_gradient_is_the_closed_form():
  """`L_s = mean((X phi - y)^2)`: `phi* = (H + l I)^-1 (2 X^T y / n + l
  theta)` with `H = 2 X^T X / n`, so `dL_q(phi*)/dtheta = l (H + l I)^-1
  grad L_q(phi*)`, with nothing iterative in the reference."""
  with jax.enable_x64(True):
    learner = _learner(_linear_model(), steps=400, cg_steps=3)
    theta = jax.tree.map(jnp.float64, learner.init(jax.random.key(0)))
    task = _regression_task(jax.random.key(1))
    x, y = np.asarray(task.support_x), np.asarray(task.support_y)
    xq, yq = np.asarray(task.query_x), np.asarray(task.query_y)
    h = 2 * x.T @ x / len(x)
    eye = np.eye(3)
    t = np.asarray(theta['w'])
    phi = np.linalg.solve(h + LAMBDA * eye, 2 * x.T @ y / len(x) + LAMBDA * t)
    query_grad = 2 * xq.T @ (xq @ phi - yq) / len(xq)
    want = LAMBDA * np.linalg.solve(h + LAMBDA * eye, query_grad)
    got, metrics = jax.jit(learner.task_update)(theta, task)
    np.testing.assert_allclose(got['w'], want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
      metrics['loss'], np.mean((xq @ phi - yq) ** 2), rtol=1e-10
    )
    adapted = learner.adapt(theta, task.support_x, task.support_y, 400)
    np.testing.assert_allclose(adapted['w'], phi, rtol=1e-10)


def test_nonlinear_meta_gradient_matches_finite_differences():
  """Finite differences of `theta -> L_q(phi*(theta))` through the same,
  converged, proximal solve."""
  with jax.enable_x64(True):
    steps = 600
    learner = _learner(_tanh_model(), steps=steps, cg_steps=16)
    theta = jax.tree.map(jnp.float64, learner.init(jax.random.key(2)))
    task = _regression_task(jax.random.key(3))

    @jax.jit
    def outer_loss(params):
      return learner.evaluate(params, task, steps)['loss']

    got, _ = jax.jit(learner.task_update)(theta, task)
    dot, want = check_directional_derivative(
      got, outer_loss, theta, jax.random.key(4), eps=1e-5
    )
    np.testing.assert_allclose(dot, want, rtol=1e-6)
    # Not first-order MAML's answer: the Hessian term matters here.
    maml = jaxmeta.fomaml(_tanh_model(), jaxmeta.regression_loss, 0.1, steps)
    first_order, _ = jax.jit(maml.task_update)(theta, task)
    assert not np.allclose(
      ravel_pytree(got)[0],
      ravel_pytree(first_order)[0],
      rtol=1e-3,
    )


def test_memory_does_not_grow_with_inner_steps():
  """XLA's buffer assignment: the same temporary memory for 2 and 200 inner
  steps (second-order MAML's grows with the steps it differentiates)."""
  model = _tanh_model(dim=32, hidden=256)

  def task(*args):
    return _regression_task(
      *args, dim=32, support=64, query=64, dtype=jnp.float32
    )

  few, many = (
    _temp_bytes_of(jaxmeta.imaml(model, jaxmeta.regression_loss, 0.1, n), task)
    for n in (2, 200)
  )
  assert few == many
  maml_few, maml_many = (
    _temp_bytes_of(jaxmeta.maml(model, jaxmeta.regression_loss, 0.1, n), task)
    for n in (2, 200)
  )
  assert maml_many > 10 * maml_few


def _temp_bytes_of(learner, make_task):
  theta = learner.init(jax.random.key(0))
  task = make_task(jax.random.key(1))
  compiled = jax.jit(learner.task_update).lower(theta, task).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize(
  'options', [{'reg_lambda': 0.0}, {'cg_steps': 0}, {'cg_damping': -1.0}]
)
def test_refuses_bad_options(options):
  with pytest.raises(ValueError, match=next(iter(options))):
    jaxmeta.imaml(_linear_model(), jaxmeta.regression_loss, 0.1, 1, **options)
