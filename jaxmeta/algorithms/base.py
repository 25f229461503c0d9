"""What every algorithm shares: `MetaLearner`, the inner loop, checks.

Every algorithm is a `MetaLearner`, a NamedTuple of pure functions in the
style of optax's `GradientTransformation`, hyperparameters closed over. Each
function is written for ONE task; the meta-step (`jaxmeta.training`) vmaps
them over the meta-batch, which is also what lets the meta-batch be sharded
over devices.

Inner loops run under `lax.scan`: the compiled program holds the inner update
once, whatever the number of inner steps.
"""

import math
import numbers
import operator
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.models.base import Model
from jaxmeta.types import Array, Params, PRNGKey, Task


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
    init: `init(key) -> meta_params`: the model's parameters, or, for methods
      that also meta-learn parts of the inner loop (Meta-SGD, MAML++),
      `{'model': model_params, 'inner': inner_learnables}`.
    adapt: `adapt(meta_params, support_x, support_y, num_steps) ->
      adapted_params`; `num_steps` is a static Python int. For methods
      without an inner loop (Prototypical Networks) the adapted "parameters"
      are what classifies the task (the class prototypes).
    task_update: `task_update(meta_params, task, key=None, global_step=None)
      -> (meta_grad, metrics)`; `meta_grad` has the structure of
      `meta_params` (a pseudo-gradient for Reptile) and `metrics` is a dict
      of scalars (query loss/metrics after the training number of inner
      steps). `key`, if given, is the task's key for the model's randomness
      (dropout, DropBlock): the inner loop gets `fold_in(key, 0)` (see
      `inner_loop`) and the query loss `fold_in(key, 1)`. With None the
      losses are called without a key. `global_step`, the meta-iteration (an
      int32 scalar, the same for every task), drives schedules (MAML++'s
      multi-step-loss weights and derivative-order annealing); the others
      ignore it.
    evaluate: `evaluate(meta_params, task, num_steps) -> metrics`: adapts on
      the support set for `num_steps` (static) steps and scores the query set,
      without a key (evaluation is deterministic).
      For every metric `m` of the loss function it returns `m` (after the
      last step) and `m_by_step` of shape `[num_steps + 1]` (after 0, 1, ...,
      `num_steps` steps; index 0 is before adaptation).
    train_batches: if True, `task_update` expects a minibatch of images of
      all training classes in the task's support set, labelled with their
      class indices in the training split (the query set is empty), instead
      of an episode: the pretraining of Baseline and Baseline++.
    any_ways: if True, nothing in the meta-parameters depends on the number
      of ways, so training episodes may have more ways than the evaluation
      tasks (Prototypical Networks).
    predict: `predict(adapted, x) -> outputs [batch, ...]`: the adapted
      model (what `adapt` returned) applied to new inputs, e.g. logits for
      classification. None if the algorithm cannot predict.
    model: the `Model` the functions apply, after the algorithm's own
      transformations (MAML++'s per-step batch norm), or None.
    update_state: `update_state(meta_params, statistics) ->
      meta_params`, or None: applied by the meta-step after the optimiser's
      update, with the mean over the meta-batch of the per-task metric
      `STATISTICS_METRIC` that `task_update` then returns (the running
      batch-norm statistics; see `normalised_learner`).
  """

  name: str
  init: Callable[[PRNGKey], Params]
  adapt: Callable[..., Params]
  task_update: Callable[..., tuple[Params, dict[str, Array]]]
  evaluate: Callable[[Params, Task, int], dict[str, Array]]
  train_batches: bool = False
  any_ways: bool = False
  predict: Callable[[Params, Array], Array] | None = None
  model: Model | None = None
  update_state: Callable[[Params, Params], Params] | None = None


# The entry of `task_update`'s metrics that holds the batch statistics the
# meta-step hands to `MetaLearner.update_state` (it is not a scalar metric
# and the meta-step removes it).
STATISTICS_METRIC = 'batch_statistics'


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
    support_key, query_key = _step_keys(key, i)
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


def _step_keys(
  key: PRNGKey | None, i: Array
) -> tuple[PRNGKey | None, PRNGKey | None]:
  """Inner step `i`'s (support-loss, query-loss) keys under `key` (see
  `inner_loop`), or (None, None)."""
  if key is None:
    return None, None
  step_key = jax.random.fold_in(key, i)
  return jax.random.fold_in(step_key, 0), jax.random.fold_in(step_key, 1)


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


def sgd_loop(
  loss_fn: LossFn,
  params: Params,
  learning_rate: Callable[[Array], Params | Array],
  x: Array,
  y: Array,
  num_steps: int,
  *,
  first_order: bool = False,
  query: tuple[Array, Array] | None = None,
  key: PRNGKey | None = None,
  step_index: bool = False,
) -> tuple[Params, dict[str, Array]]:
  """Gradient descent whose rates may be learned, per step and per parameter.

  Step `i` is `p <- p - learning_rate(i) * grad L_support(p)`, where
  `learning_rate(i)` is a scalar or a pytree with the structure of `params`
  whose leaves broadcast against them: one rate per parameter (Meta-SGD), or
  one per parameter tensor at step `i` (MAML++'s LSLR). Unlike `inner_loop`,
  the query set (if given) is scored AFTER each step, with the step's index:
  the multi-step loss of MAML++ is a weighted sum of these.

  Args:
    loss_fn: `loss_fn(params, x, y, key=None, step=None) -> (loss, metrics)`.
    params: the starting point.
    learning_rate: `learning_rate(i) -> rates` for step `i` (an int32
      scalar, traced).
    x: support inputs `[support_size, ...]`.
    y: support targets.
    num_steps: inner steps, a static int >= 0.
    first_order: treat the inner gradients as constants.
    query: optional `(query_x, query_y)`.
    key: optional key of the model's randomness, used as in `inner_loop`.
    step_index: pass `step=i` to the loss at step `i` (support loss of step
      `i` and query loss after it), for per-step batch norm.

  Returns:
    `(adapted, trace)`: `trace` maps `support_<m>` to the support metrics
    before each step `[num_steps]` and, with `query`, `query_<m>` to the
    query metrics after each step `[num_steps]`.
  """
  num_steps = _check_num_steps(num_steps, 'num_steps')
  check_batch(x, y, 'support')
  if query is not None:
    check_batch(*query, 'query')

  def call(p, x, y, k, i):
    kwargs = {} if k is None else {'key': k}
    if step_index:
      kwargs['step'] = i
    return loss_fn(p, x, y, **kwargs)

  value_and_grad = jax.value_and_grad(call, has_aux=True)

  def step(p, i):
    support_key, query_key = _step_keys(key, i)
    (_, support_metrics), grads = value_and_grad(p, x, y, support_key, i)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    rates = learning_rate(i)
    if not isinstance(rates, dict):
      rates = jax.tree.map(lambda _: rates, p)
    p = jax.tree.map(lambda v, g, a: v - a * g, p, grads, rates)
    trace = {f'support_{k}': v for k, v in support_metrics.items()}
    if query is not None:
      _, query_metrics = call(p, *query, query_key, i)
      trace.update({f'query_{k}': v for k, v in query_metrics.items()})
    return p, trace

  return jax.lax.scan(step, params, jnp.arange(num_steps, dtype=jnp.int32))


def evaluate_sgd_loop(
  loss_fn: LossFn,
  params: Params,
  learning_rate: Callable[[Array], Params | Array],
  task: Task,
  num_steps: int,
  step_index: bool = False,
) -> dict[str, Array]:
  """`MetaLearner.evaluate` for `sgd_loop`: query metrics after 0..num_steps
  steps (`m` and `m_by_step [num_steps + 1]`), without a key. The query set
  is scored before adaptation with step index 0."""
  num_steps = _check_num_steps(num_steps, 'num_steps')
  kwargs = {'step': jnp.zeros((), jnp.int32)} if step_index else {}
  _, before = loss_fn(params, task.query_x, task.query_y, **kwargs)
  _, trace = sgd_loop(
    loss_fn,
    params,
    learning_rate,
    task.support_x,
    task.support_y,
    num_steps,
    query=(task.query_x, task.query_y),
    step_index=step_index,
  )
  out = {}
  for k, v in before.items():
    by_step = jnp.concatenate([v[None], trace[f'query_{k}']])
    out[k] = by_step[-1]
    out[f'{k}_by_step'] = by_step
  return out
