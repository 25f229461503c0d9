"""What every algorithm shares: `MetaLearner`, the inner loop, checks.

Every algorithm is a `MetaLearner`, a NamedTuple of pure functions in the
style of optax's `GradientTransformation`, hyperparameters closed over. Each
function is written for ONE task; the meta-step (`jaxmeta.training`) vmaps
them over the meta-batch, which is also what lets the meta-batch be sharded
over devices.

There is one inner loop, `inner_loop`, under `lax.scan` (the compiled program
holds the inner update once, whatever the number of steps), and one
evaluation of it, `gradient_adaptation`. Learned inner rates (Meta-SGD,
MAML++) are an optax transformation, `learned_sgd`, so they go through the
same loop as plain SGD or Adam.
"""

import functools
import math
import numbers
import operator
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.models import norms
from jaxmeta.models.base import Model
from jaxmeta.types import Array, Params, PRNGKey, Task


def check_num_steps(num_steps, name: str = 'num_inner_steps') -> int:
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


def check_inner_lr(inner_lr) -> None:
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


def require_embed(model: Model, method: str) -> None:
  """Raises ValueError unless `model` has a body/head split."""
  if model.embed is None or model.feature_dim is None:
    raise ValueError(
      f'{method} needs a model with a body and a head (`Model.embed` and '
      '`feature_dim`), as conv4 and resnet12 have; this model has none.'
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
      (dropout, DropBlock): the inner loop gets `fold_in(key, 0)` and the
      query loss `fold_in(key, 1)` (`split_task_key`); None means no
      randomness. `global_step`, the meta-iteration (an int32 scalar, the
      same for every task), drives schedules (MAML++'s multi-step-loss
      weights and derivative-order annealing); the others ignore it.
    evaluate: `evaluate(meta_params, task, num_steps) -> metrics`: adapts on
      the support set for `num_steps` (static) steps and scores the query set,
      without a key (evaluation is deterministic).
      For every metric `m` of the loss function it returns `m` (after the
      last step) and `m_by_step` of shape `[num_steps + 1]` (after 0, 1, ...,
      `num_steps` steps; index 0 is before adaptation).
    predict: `predict(adapted, x) -> outputs [batch, ...]`: the adapted
      model (what `adapt` returned) applied to new inputs, e.g. logits for
      classification.
    model: the `Model` the functions apply, after the algorithm's own
      transformations (MAML++'s per-step batch norm).
    update_state: `update_state(model_state, statistics) -> model_state`,
      or None: applied by the meta-step to `MetaTrainState.model_state` (the
      running batch-norm statistics, `norms.split_model_state`), with the
      mean over the meta-batch of the per-task metric `STATISTICS_METRIC`
      that `task_update` returns (see `normalised_learner`). The other
      functions take the meta-parameters with the model state merged in.
  """

  name: str
  init: Callable[[PRNGKey], Params]
  adapt: Callable[..., Params]
  task_update: Callable[..., tuple[Params, dict[str, Array]]]
  evaluate: Callable[[Params, Task, int], dict[str, Array]]
  predict: Callable[[Params, Array], Array]
  model: Model
  update_state: Callable[[Params, Params], Params] | None = None


def learner_of_model(
  name: str,
  model: Model,
  adapt: Callable[..., Params],
  task_update: Callable[..., tuple[Params, dict[str, Array]]],
  evaluate: Callable[[Params, Task, int], dict[str, Array]],
) -> MetaLearner:
  """The `MetaLearner` of an algorithm whose meta-parameters and adapted
  parameters are the model's own: `init` is `model.init` and `predict` is
  `model.apply` (MAML, Reptile, ANIL, pretrain)."""
  return MetaLearner(
    name, model.init, adapt, task_update, evaluate, model.apply, model
  )


# The entry of `task_update`'s metrics that holds the batch statistics the
# meta-step hands to `MetaLearner.update_state` (it is not a scalar metric
# and the meta-step removes it).
STATISTICS_METRIC = 'batch_statistics'


def model_losses(
  make_loss: Callable[..., LossFn], model: Model
) -> tuple[LossFn, LossFn]:
  """`(loss_fn, support_loss)`: `make_loss` of `model.apply`, for every
  batch but the support set, and of `norms.self_normalised(model).apply`,
  for the support set (normalised by itself in every batch-norm mode)."""
  return make_loss(model.apply), make_loss(norms.self_normalised(model).apply)


def split_task_key(
  key: PRNGKey | None,
) -> tuple[PRNGKey | None, PRNGKey | None]:
  """A task's key -> (inner-loop key, query-loss key), or (None, None).

  `fold_in(key, 0)` and `fold_in(key, 1)`: no key is both handed to a loss
  and folded from (with JAX's partitionable threefry `split(k, n)[j]` is
  `fold_in(k, j)`, so a model splitting its key would otherwise draw the
  keys of another loss).
  """
  if key is None:
    return None, None
  return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def learned_sgd(
  rates: Callable[[Array], Params | Array],
) -> optax.GradientTransformation:
  """Gradient descent whose rates may differ per step and per parameter.

  Step `i` updates `p <- p - rates(i) * grad`, where `rates(i)` is a scalar
  or a pytree with the structure of the parameters whose leaves broadcast
  against them: one rate per parameter (Meta-SGD), or one per parameter
  tensor at step `i` (MAML++'s LSLR). The rates may be traced values (the
  meta-parameters), so the outer loop differentiates through them.

  Args:
    rates: `rates(i) -> scalar or pytree`, `i` an int32 scalar (traced).

  Returns:
    An optax `GradientTransformation` whose state counts the steps.
  """

  def init(params):
    del params
    return jnp.zeros((), jnp.int32)

  def update(grads, count, params=None):
    del params
    step_rates = rates(count)
    if isinstance(step_rates, dict):
      updates = jax.tree.map(lambda g, a: -a * g, grads, step_rates)
    else:
      updates = jax.tree.map(lambda g: -step_rates * g, grads)
    return updates, count + 1

  return optax.GradientTransformation(init, update)


def inner_loop(
  loss_fn: LossFn,
  params: Params,
  x: Array,
  y: Array,
  num_steps: int,
  optimizer: optax.GradientTransformation,
  *,
  first_order: bool = False,
  query: tuple[Array, Array] | None = None,
  key: PRNGKey | None = None,
  support_loss: LossFn | None = None,
) -> tuple[Params, dict[str, Array]]:
  """Runs `num_steps` steps of `optimizer` on `loss_fn(params, x, y)`.

  Step `i` calls the support loss with `step=i` (read by models with
  per-step parameters, ignored by the others) and, with `query`, scores the
  query set AFTER the update, also with `step=i`: MAML++'s multi-step loss
  is a weighted sum of these.

  Args:
    loss_fn: `loss_fn(params, x, y, *, key=None, step=None) -> (loss,
      metrics)` for one batch; it scores `query`.
    params: the starting point (the meta-parameters).
    x: support inputs, `[support_size, ...]`.
    y: support targets, `[support_size, ...]`.
    num_steps: number of inner steps, a static Python int (0 is allowed).
    optimizer: the inner update, e.g. `optax.sgd(inner_lr)` (MAML's inner
      step) or `learned_sgd(rates)` (Meta-SGD, MAML++).
    first_order: if True, inner gradients are constants for the outer
      derivative (`stop_gradient`): first-order MAML.
    query: optional `(query_x, query_y)`, scored after every step.
    key: optional key for the model's randomness. Step `i` derives
      `step_key = fold_in(key, i)` and calls the support loss with
      `fold_in(step_key, 0)` and the query loss with `fold_in(step_key, 1)`.
      With None the losses get `key=None`.
    support_loss: the loss of the support set `x` (default `loss_fn`); with
      batch norm, that of `norms.self_normalised(model)` (`model_losses`).

  Returns:
    `(adapted_params, trace)` where `trace` maps `support_<m>` to the support
    metrics before each step and, with `query`, `query_<m>` to the query
    metrics after each step, each `[num_steps]`.
  """
  num_steps = check_num_steps(num_steps, 'num_steps')
  check_batch(x, y, 'support')
  if query is not None:
    check_batch(*query, 'query')
  support_loss = support_loss or loss_fn
  value_and_grad = jax.value_and_grad(
    lambda p, k, i: support_loss(p, x, y, key=k, step=i), has_aux=True
  )

  def step(carry, i):
    p, opt_state = carry
    support_key, query_key = split_task_key(
      None if key is None else jax.random.fold_in(key, i)
    )
    (_, support_metrics), grads = value_and_grad(p, support_key, i)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    p = optax.apply_updates(p, updates)
    trace = {f'support_{k}': v for k, v in support_metrics.items()}
    if query is not None:
      _, query_metrics = loss_fn(p, *query, key=query_key, step=i)
      trace.update({f'query_{k}': v for k, v in query_metrics.items()})
    return (p, opt_state), trace

  (adapted, _), trace = jax.lax.scan(
    step,
    (params, optimizer.init(params)),
    jnp.arange(num_steps, dtype=jnp.int32),
  )
  return adapted, trace


def gradient_adaptation(
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  support_loss: LossFn | None = None,
) -> tuple[Callable[..., Params], Callable[..., dict[str, Array]]]:
  """`(adapt, evaluate)` of a `MetaLearner` that adapts with `inner_loop`
  and `optimizer` from the given parameters (MAML, Reptile, Meta-SGD, MAML++,
  and the heads of ANIL and the Baselines).

  `evaluate(params, task, num_steps)` returns, for every metric `m` of
  `loss_fn`, `m` after the last step and `m_by_step [num_steps + 1]`, the
  query metric after 0, 1, ..., `num_steps` steps (before adaptation with
  `step=0`). Without a key: evaluation is deterministic.

  Args:
    loss_fn: the loss of every batch but the support set (`model_losses`).
    optimizer: the inner update.
    support_loss: the support set's loss (default `loss_fn`).
  """

  run = functools.partial(
    inner_loop, loss_fn, optimizer=optimizer, support_loss=support_loss
  )

  def adapt(params, support_x, support_y, num_steps):
    return run(params, support_x, support_y, num_steps)[0]

  def evaluate(params, task, num_steps):
    num_steps = check_num_steps(num_steps, 'num_steps')
    query = (task.query_x, task.query_y)
    check_batch(*query, 'query')
    _, before = loss_fn(params, *query, step=jnp.zeros((), jnp.int32))
    _, trace = run(
      params, task.support_x, task.support_y, num_steps, query=query
    )
    out = {}
    for k, v in before.items():
      by_step = jnp.concatenate([v[None], trace[f'query_{k}']])
      out[k] = by_step[-1]
      out[f'{k}_by_step'] = by_step
    return out

  return adapt, evaluate


def head_apply(
  head_fn: Callable[[Params, Array], Array],
) -> Callable[..., Array]:
  """`head_fn(head, features)` with the model signature `apply(params, x, *,
  key=None, step=None)`: a head has neither randomness nor per-step
  parameters, so a loss built on it (`make_loss(head_apply(...))`) takes
  the same arguments as any other."""

  def apply(head, features, *, key=None, step=None):
    del key, step
    return head_fn(head, features)

  return apply
