"""What every algorithm shares: `MetaLearner`, the inner loop, checks.

Every function of a `MetaLearner` is written for ONE task; the meta-step
(`jaxmeta.training`) vmaps them over the meta-batch. There is one inner loop,
`inner_loop`, under `lax.scan`, evaluated by `gradient_adaptation`; learned
inner rates (Meta-SGD, MAML++) are an optax transformation, `learned_sgd`.
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
from jaxmeta.models.base import join_head
from jaxmeta.models.base import Model
from jaxmeta.models.base import split_head
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
  """Raises ValueError if a numeric `inner_lr` is not finite and positive
  (a schedule or an array is left to the inner optimiser)."""
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
    init: `init(key) -> meta_params`: the model's parameters, or
      `{'model': model_params, ...}` with learned inner parts (Meta-SGD).
    adapt: `adapt(meta_params, support_x, support_y, num_steps) ->
      adapted`, `num_steps` a static int: what `predict` takes.
    task_update: `task_update(meta_params, task, key=None, global_step=None)
      -> (meta_grad, metrics)`: `meta_grad` shaped like `meta_params`,
      `metrics` the query metrics (scalars). `key` feeds the model's
      randomness (`split_task_key`); `global_step` (int32) MAML++'s schedules.
    evaluate: `evaluate(meta_params, task, num_steps) -> metrics`, without a
      key: each metric `m` of the loss after the last step, and `m_by_step
      [num_steps + 1]` after 0, 1, ..., `num_steps` steps.
    predict: `predict(adapted, x) -> outputs [batch, ...]`.
    model: the `Model` the functions apply, after the algorithm's own
      transformations (MAML++'s per-step batch norm).
    update_state: `update_state(model_state, statistics) -> model_state`,
      or None: the meta-step's update of `MetaTrainState.model_state` by the
      meta-batch mean of the metric `STATISTICS_METRIC`; the other functions
      take the meta-parameters with the model state merged in.
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
  """The `MetaLearner` whose `init` is `model.init` and `predict` is
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
  """`(loss_fn, support_loss)`: `make_loss` of `model.apply` and of
  `norms.self_normalised(model).apply` (for the support set)."""
  return make_loss(model.apply), make_loss(norms.self_normalised(model).apply)


def split_task_key(
  key: PRNGKey | None,
) -> tuple[PRNGKey | None, PRNGKey | None]:
  """A task's key -> (inner-loop key, query-loss key), or (None, None).

  `fold_in(key, 0)` and `fold_in(key, 1)`: no key is both handed to a loss
  and folded from (with partitionable threefry `split(k, n)[j]` is
  `fold_in(k, j)`, so a model splitting its key would draw another loss's).
  """
  if key is None:
    return None, None
  return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def learned_sgd(
  rates: Callable[[Array], Params | Array],
) -> optax.GradientTransformation:
  """Gradient descent `p <- p - rates(i) * grad` at step `i`, `rates(i)` a
  scalar or a pytree of broadcasting rates shaped like the parameters
  (Meta-SGD, MAML++'s LSLR); traced rates are differentiated.

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
  """Runs `num_steps` steps of `optimizer` on the support set `(x, y)`; step
  `i` calls the losses with `step=i` and scores `query` after its update.

  Args:
    loss_fn: `loss_fn(params, x, y, *, key=None, step=None) -> (loss,
      metrics)`; it scores `query`.
    params: the starting point (the meta-parameters).
    x: support inputs, `[support_size, ...]`.
    y: support targets, `[support_size, ...]`.
    num_steps: number of inner steps, a static Python int >= 0.
    optimizer: the inner update, e.g. `optax.sgd(inner_lr)`.
    first_order: if True, inner gradients are constants for the outer
      derivative (`stop_gradient`).
    query: optional `(query_x, query_y)`.
    key: optional key; step `i` uses `split_task_key(fold_in(key, i))`.
    support_loss: the support set's loss (default `loss_fn`).

  Returns:
    `(adapted_params, trace)`: `trace` maps `support_<m>` to the support
    metrics before each step and `query_<m>` to the query metrics after
    each, each `[num_steps]`.
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


def task_inner_loop(
  loss_fn: LossFn,
  support_loss: LossFn | None,
  params: Params,
  task: Task,
  num_steps: int,
  optimizer: optax.GradientTransformation,
  key: PRNGKey | None,
  **options,
) -> tuple[Params, dict[str, Array], PRNGKey | None]:
  """`inner_loop` on `task`'s support set with the inner-loop key of `key`
  (`split_task_key`); returns `(adapted, trace, query_key)`."""
  inner_key, query_key = split_task_key(key)
  adapted, trace = inner_loop(
    loss_fn,
    params,
    task.support_x,
    task.support_y,
    num_steps,
    optimizer,
    key=inner_key,
    support_loss=support_loss,
    **options,
  )
  return adapted, trace, query_key


def adapted_query_loss(
  loss_fn: LossFn,
  support_loss: LossFn,
  num_steps: int,
  optimizer_of: Callable[[Params], optax.GradientTransformation],
  first_order: bool = False,
  params_of: Callable[[Params], Params] = lambda meta: meta,
) -> Callable[..., tuple[Array, dict[str, Array]]]:
  """MAML's `meta_loss(meta, task, key) -> (loss, metrics)`: the query loss
  after `num_steps` steps of `optimizer_of(meta)` from `params_of(meta)`."""

  def meta_loss(meta, task, key):
    check_batch(task.query_x, task.query_y, 'query')
    adapted, _, query_key = task_inner_loop(
      loss_fn,
      support_loss,
      params_of(meta),
      task,
      num_steps,
      optimizer_of(meta),
      key,
      first_order=first_order,
    )
    return loss_fn(adapted, task.query_x, task.query_y, key=query_key)

  return meta_loss


def gradient_task_update(
  meta_loss: Callable[..., tuple[Array, dict[str, Array]]],
) -> Callable[..., tuple[Params, dict[str, Array]]]:
  """The `task_update` of an algorithm without schedules: the gradient of
  `meta_loss(params, task, key) -> (loss, metrics)`, and its metrics."""

  def task_update(params, task, key=None, global_step=None):
    del global_step  # No schedule.
    return jax.grad(meta_loss, has_aux=True)(params, task, key)

  return task_update


def learned_inner_learner(
  name: str,
  model: Model,
  init: Callable[[PRNGKey], Params],
  loss_fn: LossFn,
  support_loss: LossFn,
  optimizer_of: Callable[[Params], optax.GradientTransformation],
  task_update: Callable[..., tuple[Params, dict[str, Array]]],
) -> MetaLearner:
  """The `MetaLearner` of meta-parameters `{'model': ..., 'inner': ...}`
  whose inner update `optimizer_of(meta)` is meta-learned (Meta-SGD,
  MAML++)."""

  def adaptation(meta):
    return gradient_adaptation(loss_fn, optimizer_of(meta), support_loss)

  def adapt(meta, support_x, support_y, num_steps):
    return adaptation(meta)[0](meta['model'], support_x, support_y, num_steps)

  def evaluate(meta, task, num_steps):
    return adaptation(meta)[1](meta['model'], task, num_steps)

  return MetaLearner(
    name, init, adapt, task_update, evaluate, model.apply, model
  )


def closed_form_learner(
  name: str,
  model: Model,
  make_loss: Callable[..., LossFn],
  init: Callable[[PRNGKey], Params],
  adapt: Callable[..., Params],
  predict: Callable[..., Array],
) -> MetaLearner:
  """The `MetaLearner` of a method whose adaptation is closed form, without
  steps (Prototypical Networks, R2-D2).

  `task_update` differentiates the query loss of `predict(adapted, query_x,
  key=...)` through `adapt(meta, support_x, support_y, key=...)` (the keys
  of `split_task_key`); `evaluate`'s `*_by_step` repeat its one result.
  """
  loss_fn = make_loss(head_apply(lambda _, logits: logits))

  def logits(meta, task, key=None):
    support_key, query_key = split_task_key(key)
    adapted = adapt(meta, task.support_x, task.support_y, key=support_key)
    return predict(adapted, task.query_x, key=query_key)

  def meta_loss(meta, task, key):
    check_batch(task.query_x, task.query_y, 'query')
    return loss_fn(None, logits(meta, task, key), task.query_y)

  def evaluate(meta, task, num_steps):
    _, metrics = loss_fn(None, logits(meta, task), task.query_y)
    out = {}
    for k, v in metrics.items():
      out[k] = v
      out[f'{k}_by_step'] = jnp.full((num_steps + 1,), v)
    return out

  return MetaLearner(
    name,
    init,
    adapt,
    gradient_task_update(meta_loss),
    evaluate,
    lambda adapted, x: predict(adapted, x),
    model,
  )


def head_adaptation(
  model: Model,
  head_loss: LossFn,
  optimizer: optax.GradientTransformation,
  start_head: Callable[[Params], Params],
) -> tuple[Callable[..., Params], Callable[..., dict[str, Array]]]:
  """`(adapt, evaluate)` of a method that adapts a head only, from
  `start_head(params)`, on the embeddings of the frozen body (ANIL, the
  Baselines); support and query images are embedded as separate batches."""
  adapt_head, evaluate_head = gradient_adaptation(head_loss, optimizer)
  support_embed = norms.self_normalised(model).embed

  def adapt(params, support_x, support_y, num_steps):
    body, _ = split_head(params)
    features = support_embed(body, support_x)
    head = adapt_head(start_head(params), features, support_y, num_steps)
    return join_head(body, head)

  def evaluate(params, task, num_steps):
    body, _ = split_head(params)
    features = Task(
      support_embed(body, task.support_x),
      task.support_y,
      model.embed(body, task.query_x),
      task.query_y,
    )
    return evaluate_head(start_head(params), features, num_steps)

  return adapt, evaluate


def gradient_adaptation(
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  support_loss: LossFn | None = None,
) -> tuple[Callable[..., Params], Callable[..., dict[str, Array]]]:
  """`(adapt, evaluate)` of a `MetaLearner` adapting with `inner_loop` and
  `optimizer` from the given parameters (see `MetaLearner`; before
  adaptation, `step=0`).

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
  key=None, step=None)` (a head ignores both), for `make_loss`."""

  def apply(head, features, *, key=None, step=None):
    del key, step
    return head_fn(head, features)

  return apply
