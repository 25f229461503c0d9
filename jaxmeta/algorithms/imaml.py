"""Implicit MAML (Rajeswaran, Finn, Kakade & Levine 2019)."""

from typing import Callable

import jax
import optax

from jaxmeta.algorithms.base import check_inner_lr
from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import gradient_adaptation
from jaxmeta.algorithms.base import learner_of_model
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import model_losses
from jaxmeta.algorithms.base import split_task_key
from jaxmeta.algorithms.base import task_inner_loop
from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.models.base import Model
from jaxmeta.types import Params


def imaml(
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float,
  num_inner_steps: int,
  *,
  reg_lambda: float = 2.0,
  cg_steps: int = 5,
  cg_damping: float = 0.0,
) -> MetaLearner:
  """Implicit MAML (Rajeswaran et al. 2019).

  The inner problem is proximal, `phi* = argmin_phi L_s(phi) + (lambda / 2)
  |phi - theta|^2`, solved by `num_inner_steps` steps of gradient descent at
  `inner_lr` from `theta` (not differentiated: memory does not grow with the
  steps). At the optimum `dphi*/dtheta = (I + H / lambda)^-1` (Lemma 1), so
  the meta-gradient is that matrix times `grad L_q(phi*)`, by `cg_steps`
  iterations of conjugate gradient on Hessian-vector products.

  Unlike the authors' code (steps on `L_s` alone, then one on the proximal
  term; CG matrix `2 I + H / (lambda + 10)`), the steps descend the proximal
  objective and the matrix is `(1 + cg_damping) I + H / lambda` (the
  paper's, for `cg_damping=0`). Evaluation adapts with the same steps.

  Args:
    model: the `Model`.
    make_loss: `make_loss(apply) -> loss_fn`.
    inner_lr: the inner gradient-descent rate, > 0.
    num_inner_steps: inner steps during meta-training, a Python int >= 0.
    reg_lambda: the proximal regularisation `lambda`, > 0.
    cg_steps: conjugate-gradient iterations, a Python int >= 1.
    cg_damping: `d >= 0` in the CG matrix `(1 + d) I + H / lambda`.

  Returns:
    A `MetaLearner` named 'imaml'.

  References:
    Rajeswaran, Finn, Kakade & Levine 2019, "Meta-Learning with Implicit
    Gradients", Algorithms 1 and 2.
  """
  num_inner_steps = check_num_steps(num_inner_steps)
  check_inner_lr(inner_lr)
  if check_num_steps(cg_steps, 'cg_steps') < 1:
    raise ValueError(f'cg_steps must be >= 1, got {cg_steps}.')
  if not reg_lambda > 0 or not cg_damping >= 0:
    raise ValueError(
      f'reg_lambda must be > 0 and cg_damping >= 0, got {reg_lambda!r} and '
      f'{cg_damping!r}.'
    )
  loss_fn, support_loss = model_losses(make_loss, model)
  optimizer = optax.sgd(inner_lr)

  def proximal(theta: Params) -> LossFn:
    """The support loss plus `(lambda / 2) |phi - theta|^2`, `theta` fixed."""
    theta = jax.lax.stop_gradient(theta)

    def loss(phi, x, y, *, key=None, step=None):
      value, metrics = support_loss(phi, x, y, key=key, step=step)
      distance = optax.tree_utils.tree_sub(phi, theta)
      squared = optax.tree_utils.tree_norm(distance, squared=True)
      return value + 0.5 * reg_lambda * squared, metrics

    return loss

  def adaptation(params):
    return gradient_adaptation(loss_fn, optimizer, proximal(params))

  def adapt(params, support_x, support_y, num_steps):
    return adaptation(params)[0](params, support_x, support_y, num_steps)

  def evaluate(params, task, num_steps):
    return adaptation(params)[1](params, task, num_steps)

  def task_update(params, task, key=None, global_step=None):
    del global_step  # No schedule.
    check_batch(task.query_x, task.query_y, 'query')
    params = jax.lax.stop_gradient(params)
    phi, _, query_key = task_inner_loop(
      loss_fn, proximal(params), params, task, num_inner_steps, optimizer, key
    )
    inner_key, _ = split_task_key(key)
    query_grad, metrics = jax.grad(loss_fn, has_aux=True)(
      phi, task.query_x, task.query_y, key=query_key
    )

    def support_value(p):
      return support_loss(p, task.support_x, task.support_y, key=inner_key)[0]

    def matrix(v):
      hessian_v = jax.jvp(jax.grad(support_value), (phi,), (v,))[1]
      return jax.tree.map(
        lambda a, b: (1 + cg_damping) * a + b / reg_lambda, v, hessian_v
      )

    meta_grad, _ = jax.scipy.sparse.linalg.cg(
      matrix, query_grad, tol=0.0, maxiter=cg_steps
    )
    return meta_grad, metrics

  return learner_of_model('imaml', model, adapt, task_update, evaluate)
