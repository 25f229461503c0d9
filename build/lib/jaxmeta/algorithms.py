"""Gradient-based meta-learning algorithms as bundles of pure functions.

Every algorithm is a `MetaLearner`, a NamedTuple of pure functions in the
style of optax's `GradientTransformation`, hyperparameters closed over. Each
function is written for ONE task; the meta-step (`jaxmeta.training`) vmaps
them over the meta-batch, which is also what lets the meta-batch be sharded
over devices.

The central piece is `MetaLearner.task_update(meta_params, task)`, which
returns a gradient-like pytree with the structure of `meta_params`:

* MAML: the gradient of the query loss after adaptation w.r.t. the
  initialisation, second-order terms included.
* First-order MAML: the same with the inner gradients treated as constants,
  i.e. the query gradient at the adapted parameters.
* Reptile: `meta_params - adapted_params`, a pseudo-gradient. Averaged over
  tasks and handed to `optax.sgd(eps)` it is exactly Nichol et al.'s rule
  `theta <- theta + eps * mean(phi_i - theta)`; handed to any other optax
  optimiser (Adam, a schedule) it is Reptile with that outer optimiser.

The meta-step averages these over tasks and applies any optax optimiser, so
the three algorithms share one training loop and one compiled step.

Inner loops run under `lax.scan`: the compiled program holds the inner update
once, whatever the number of inner steps.
"""

import inspect
import math
import numbers
import operator
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.types import Array, Params, PRNGKey, Task

ALGORITHMS = ('maml', 'fomaml', 'reptile')
BASELINES = ('pretrain',)


def _check_num_steps(num_steps, name: str = 'num_inner_steps') -> int:
  """Returns `num_steps` as an int >= 0, or raises ValueError naming it."""
  try:
    if isinstance(num_steps, bool):
      raise TypeError
    steps = operator.index(num_steps)
  except TypeError:
    raise ValueError(
      f'{name} must be a Python int >= 0 (a static number of '
      f'inner steps), got {num_steps!r}.'
    ) from None
  if steps < 0:
    raise ValueError(
      f'{name} must be >= 0 (0 means no adaptation), got {steps}.'
    )
  return steps


def _check_inner_lr(inner_lr) -> None:
  """Raises ValueError if a numeric `inner_lr` is not finite and positive.

  Anything else (a schedule, an array) is left to the inner optimiser.
  """
  if isinstance(inner_lr, numbers.Real) and not (
    math.isfinite(inner_lr) and inner_lr > 0
  ):
    raise ValueError(
      'inner_lr must be a finite number > 0, got '
      f'{inner_lr!r}; to skip adaptation use 0 inner steps.'
    )


class MetaLearner(NamedTuple):
  """A meta-learning algorithm as pure functions, each for one task.

  Attributes:
    name: the algorithm's name, e.g. 'maml'.
    init: `init(key) -> meta_params`.
    adapt: `adapt(meta_params, support_x, support_y, num_steps) ->
      adapted_params`; `num_steps` is a static Python int.
    task_update: `task_update(meta_params, task, key=None) -> (meta_grad,
      metrics)`; `meta_grad` has the structure of `meta_params` (a
      pseudo-gradient for Reptile) and `metrics` is a dict of scalars (query
      loss/metrics after the training number of inner steps). `key`, if
      given, is the task's key for the model's randomness (dropout,
      DropBlock): the inner loop gets `fold_in(key, 0)` (see `inner_loop`)
      and the query loss `fold_in(key, 1)`; 'pretrain' hands `key` to its
      one loss. With None the losses are called without a key.
    evaluate: `evaluate(meta_params, task, num_steps) -> metrics`: adapts on
      the support set for `num_steps` (static) steps and scores the query set,
      without a key (evaluation is deterministic).
      For every metric `m` of the loss function it returns `m` (after the
      last step) and `m_by_step` of shape `[num_steps + 1]` (after 0, 1, ...,
      `num_steps` steps; index 0 is before adaptation).
  """

  name: str
  init: Callable[[PRNGKey], Params]
  adapt: Callable[[Params, Array, Array, int], Params]
  task_update: Callable[..., tuple[Params, dict[str, Array]]]
  evaluate: Callable[[Params, Task, int], dict[str, Array]]


def inner_loop(
  loss_fn: LossFn,
  params: Params,
  x: Array,
  y: Array,
  num_steps: int,
  inner_optimizer: optax.GradientTransformation,
  first_order: bool = False,
  query: tuple[Array, Array] | None = None,
  key: PRNGKey | None = None,
) -> tuple[Params, dict[str, Array]]:
  """Runs `num_steps` steps of `inner_optimizer` on `loss_fn(params, x, y)`.

  Args:
    loss_fn: `loss_fn(params, x, y, key=None) -> (loss, metrics)` for one
      batch.
    params: the starting point (the meta-parameters).
    x: support inputs, `[support_size, ...]`.
    y: support targets, `[support_size, ...]`.
    num_steps: number of inner steps, a static Python int (0 is allowed).
    inner_optimizer: the inner update, e.g. `optax.sgd(inner_lr)` (plain
      gradient descent, the MAML inner step).
    first_order: if True, inner gradients are constants for the outer
      derivative (`stop_gradient`): first-order MAML.
    query: optional `(query_x, query_y)`; if given, the query metrics of the
      parameters before every step are recorded.
    key: optional key for the model's randomness. Step `i` derives
      `step_key = fold_in(key, i)` and calls the support loss with
      `fold_in(step_key, 0)` and the query loss with `fold_in(step_key, 1)`
      (no key is both handed to a loss and folded from: `split(k, n)[j]`
      equals `fold_in(k, j)`, so a model splitting its key would otherwise
      draw the keys of the next step or of the query loss). With None the
      losses get no key.

  Returns:
    `(adapted_params, trace)` where `trace` maps `support_<m>` (and
    `query_<m>` if `query` is given) to arrays `[num_steps]`: the metrics
    before each step.
  """
  num_steps = _check_num_steps(num_steps, 'num_steps')
  check_batch(x, y, 'support')
  if query is not None:
    check_batch(*query, 'query')
  value_and_grad = jax.value_and_grad(
    lambda p, x, y, k: _loss(loss_fn, p, x, y, k), has_aux=True
  )

  def step(carry, i):
    p, opt_state = carry
    if key is None:
      support_key = query_key = None
    else:
      step_key = jax.random.fold_in(key, i)
      support_key = jax.random.fold_in(step_key, 0)
      query_key = jax.random.fold_in(step_key, 1)
    (_, support_metrics), grads = value_and_grad(p, x, y, support_key)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    updates, opt_state = inner_optimizer.update(grads, opt_state, p)
    trace = {f'support_{k}': v for k, v in support_metrics.items()}
    if query is not None:
      _, query_metrics = _loss(loss_fn, p, *query, query_key)
      trace.update({f'query_{k}': v for k, v in query_metrics.items()})
    return (optax.apply_updates(p, updates), opt_state), trace

  # Without a key the scan has no inputs, the program of a key-free loop.
  steps = None if key is None else jnp.arange(num_steps, dtype=jnp.uint32)
  (adapted, _), trace = jax.lax.scan(
    step, (params, inner_optimizer.init(params)), steps, length=num_steps
  )
  return adapted, trace


def _split_task_key(
  key: PRNGKey | None,
) -> tuple[PRNGKey | None, PRNGKey | None]:
  """A task's key -> (inner-loop key, query-loss key), or (None, None)."""
  if key is None:
    return None, None
  return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def _loss(
  loss_fn: LossFn, params: Params, x: Array, y: Array, key: PRNGKey | None
):
  """`loss_fn(params, x, y)`, with the key only when there is one, so that
  loss functions written without a `key` argument keep working."""
  if key is None:
    return loss_fn(params, x, y)
  return loss_fn(params, x, y, key)


def _adaptation(
  loss_fn: LossFn,
  inner_optimizer: optax.GradientTransformation,
  first_order: bool = False,
):
  """The `adapt` and `evaluate` functions every algorithm here shares."""

  def adapt(params, support_x, support_y, num_steps, key=None):
    # `key` is for meta-training only; `MetaLearner.adapt` is called without.
    adapted, _ = inner_loop(
      loss_fn,
      params,
      support_x,
      support_y,
      num_steps,
      inner_optimizer,
      first_order,
      key=key,
    )
    return adapted

  def evaluate(params, task, num_steps):
    """Query metrics after 0..num_steps inner steps."""
    adapted, trace = inner_loop(
      loss_fn,
      params,
      task.support_x,
      task.support_y,
      num_steps,
      inner_optimizer,
      first_order,
      query=(task.query_x, task.query_y),
    )
    _, final = loss_fn(adapted, task.query_x, task.query_y)
    out = {}
    for k, v in final.items():
      out[k] = v
      out[f'{k}_by_step'] = jnp.concatenate(
        [trace[f'query_{k}'], v[None]]
      )  # [num_steps + 1]
    return out

  return adapt, evaluate


def maml(
  init_fn: Callable[[PRNGKey], Params],
  loss_fn: LossFn,
  inner_lr: float,
  num_inner_steps: int,
  first_order: bool = False,
) -> MetaLearner:
  """MAML (Finn, Abbeel & Levine 2017) and its first-order approximation.

  For one task with support loss `L_s` and query loss `L_q`, the inner loop
  takes `num_inner_steps` gradient steps `theta' = theta - a * grad L_s` and
  the meta-objective is `L_q(theta'(theta))`. Its gradient, with one inner
  step, is `(I - a * H_s(theta)) grad L_q(theta')` (eq. 1 of the paper and the
  chain rule); `jax.grad` differentiates through the whole inner loop, so the
  second-order terms are exact for any number of steps. With
  `first_order=True` the Hessian terms are dropped: the result is
  `grad L_q(theta')`.

  Args:
    init_fn: `init(key) -> params` of the model.
    loss_fn: `loss_fn(params, x, y, key=None) -> (loss, metrics)` (see
      `jaxmeta.losses`).
    inner_lr: inner-loop learning rate `a`, > 0.
    num_inner_steps: inner steps during meta-training, a Python int >= 0.
    first_order: drop the second-order terms (first-order MAML).

  Returns:
    A `MetaLearner`.

  References:
    Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of
    Deep Networks", Algorithm 2 and Section 5.2 (first-order approximation).
  """
  num_inner_steps = _check_num_steps(num_inner_steps)
  _check_inner_lr(inner_lr)
  adapt, evaluate = _adaptation(loss_fn, optax.sgd(inner_lr), first_order)

  def meta_loss(params, task, key):
    check_batch(task.query_x, task.query_y, 'query')
    inner_key, query_key = _split_task_key(key)
    adapted = adapt(
      params, task.support_x, task.support_y, num_inner_steps, inner_key
    )
    return _loss(loss_fn, adapted, task.query_x, task.query_y, query_key)

  def task_update(params, task, key=None):
    meta_grad, metrics = jax.grad(meta_loss, has_aux=True)(params, task, key)
    return meta_grad, metrics

  return MetaLearner(
    'fomaml' if first_order else 'maml', init_fn, adapt, task_update, evaluate
  )


def fomaml(
  init_fn: Callable[[PRNGKey], Params],
  loss_fn: LossFn,
  inner_lr: float,
  num_inner_steps: int,
) -> MetaLearner:
  """First-order MAML: `maml(..., first_order=True)`."""
  return maml(init_fn, loss_fn, inner_lr, num_inner_steps, first_order=True)


def reptile(
  init_fn: Callable[[PRNGKey], Params],
  loss_fn: LossFn,
  inner_lr: float,
  num_inner_steps: int,
  inner_optimizer: optax.GradientTransformation | None = None,
  query_metrics: bool = True,
) -> MetaLearner:
  """Reptile (Nichol, Achiam & Schulman 2018).

  Adapts `num_inner_steps` steps on the task's support set (full batch) and
  returns the pseudo-gradient `theta - phi` (`phi` the adapted weights). The
  meta-step averages it over tasks; with `optax.sgd(eps)` as the outer
  optimiser the update is `theta + eps * mean_i(phi_i - theta)`, the paper's
  batched rule (Algorithm 2); any optax optimiser can take it instead.

  The query set plays no part in the update. With `query_metrics` (default)
  `task_update` also scores the query set with the adapted weights, for
  monitoring: one more forward pass over the query set, which is most of the
  cost of a short inner loop (a 75-image query set against 5 support images
  in 5-way 1-shot). Without it, it reports the support metrics `support_<m>`
  of the last inner step (computed anyway) and does only the work of the
  update. Nichol et al. train on
  minibatches of a task; here every inner step sees the whole support set
  (give Reptile more shots for training to match their `--train-shots`).

  Args:
    init_fn: `init(key) -> params` of the model.
    loss_fn: `loss_fn(params, x, y) -> (loss, metrics)`.
    inner_lr: inner learning rate (for the default SGD inner optimiser).
    num_inner_steps: inner steps `k` per task during meta-training.
    inner_optimizer: optional optax optimiser for the inner loop, e.g.
      `optax.adam(1e-3, b1=0.)` as in the paper's Omniglot runs; default
      `optax.sgd(inner_lr)`.
    query_metrics: if True, `task_update`'s metrics are the query metrics of
      the adapted weights; if False, the support metrics of the last inner
      step (`num_inner_steps` must then be >= 1).

  Returns:
    A `MetaLearner`.

  References:
    Nichol et al. 2018, "On First-Order Meta-Learning Algorithms",
    Algorithms 1 and 2.
  """
  num_inner_steps = _check_num_steps(num_inner_steps)
  if inner_optimizer is None:
    _check_inner_lr(inner_lr)
    inner_optimizer = optax.sgd(inner_lr)
  adapt, evaluate = _adaptation(loss_fn, inner_optimizer)

  if not query_metrics and num_inner_steps < 1:
    raise ValueError(
      'reptile(query_metrics=False) reports the last inner '
      "step's support metrics: num_inner_steps must be >= 1, "
      f'got {num_inner_steps}.'
    )

  def task_update(params, task, key=None):
    inner_key, query_key = _split_task_key(key)
    adapted, trace = inner_loop(
      loss_fn,
      params,
      task.support_x,
      task.support_y,
      num_inner_steps,
      inner_optimizer,
      key=inner_key,
    )
    pseudo_grad = jax.tree.map(jnp.subtract, params, adapted)
    if query_metrics:
      check_batch(task.query_x, task.query_y, 'query')
      _, metrics = _loss(
        loss_fn, adapted, task.query_x, task.query_y, query_key
      )
    else:
      metrics = {k: v[-1] for k, v in trace.items()}
    return pseudo_grad, metrics

  return MetaLearner('reptile', init_fn, adapt, task_update, evaluate)


def pretrain(
  init_fn: Callable[[PRNGKey], Params],
  loss_fn: LossFn,
  inner_lr: float,
  num_inner_steps: int = 0,
) -> MetaLearner:
  """The conventional baseline: train one model on all tasks jointly.

  `task_update` is the plain gradient of the loss on the task's support and
  query sets together, at the current parameters (no adaptation): averaged
  over a meta-batch it is minibatch training on the pooled data of all tasks.
  `adapt`/`evaluate` fine-tune with SGD at `inner_lr`, so the pretrained model
  is scored exactly as the meta-learned ones are (Finn et al. 2017, Figure 2:
  "pretrained, step=0.01").

  Args:
    init_fn: `init(key) -> params` of the model.
    loss_fn: `loss_fn(params, x, y) -> (loss, metrics)`.
    inner_lr: learning rate of the fine-tuning steps at evaluation.
    num_inner_steps: unused in training (must still be >= 0); kept for a
      uniform signature.

  Returns:
    A `MetaLearner` named 'pretrain'.
  """
  _check_num_steps(num_inner_steps)
  _check_inner_lr(inner_lr)
  adapt, evaluate = _adaptation(loss_fn, optax.sgd(inner_lr))

  def task_update(params, task, key=None):
    check_batch(task.support_x, task.support_y, 'support')
    check_batch(task.query_x, task.query_y, 'query')
    x = jnp.concatenate([task.support_x, task.query_x])
    y = jnp.concatenate([task.support_y, task.query_y])
    grad, metrics = jax.grad(_loss, argnums=1, has_aux=True)(
      loss_fn, params, x, y, key
    )
    return grad, metrics

  return MetaLearner('pretrain', init_fn, adapt, task_update, evaluate)


# name -> builder(init_fn, loss_fn, inner_lr, num_inner_steps, **options).
REGISTRY: dict[str, Callable[..., MetaLearner]] = {
  'maml': maml,
  'fomaml': fomaml,
  'reptile': reptile,
  'pretrain': pretrain,
}


def make_learner(
  name: str,
  init_fn: Callable[[PRNGKey], Params],
  loss_fn: LossFn,
  inner_lr: float,
  num_inner_steps: int,
  inner_optimizer: optax.GradientTransformation | None = None,
) -> MetaLearner:
  """Builds the algorithm `name` of `REGISTRY`.

  `inner_optimizer` is only meaningful for algorithms whose builder takes
  one (Reptile); MAML's inner step is plain gradient descent with `inner_lr`,
  which its second-order derivative differentiates.
  """
  if name not in REGISTRY:
    raise ValueError(
      f'Unknown algorithm {name!r}; choose one of {sorted(REGISTRY)}.'
    )
  builder = REGISTRY[name]
  options = {}
  if inner_optimizer is not None:
    if 'inner_optimizer' not in inspect.signature(builder).parameters:
      raise ValueError(
        f'{name} uses plain SGD with inner_lr in its inner '
        'loop; inner_optimizer applies to '
        f'{_takes_inner_optimizer()} only.'
      )
    options['inner_optimizer'] = inner_optimizer
  return builder(init_fn, loss_fn, inner_lr, num_inner_steps, **options)


def _takes_inner_optimizer() -> list[str]:
  return [
    n
    for n, b in REGISTRY.items()
    if 'inner_optimizer' in inspect.signature(b).parameters
  ]
