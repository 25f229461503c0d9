"""Any algorithm in any batch-norm mode, and scoring each query on its own.

`normalised_learner(build, model)` gives the `MetaLearner` of `build(model)`
whose batch norm follows `model.batch_norm` (`jaxmeta.models.norms`): as is
('transductive'), rebuilt per task on `given_support(model, task.support_x)`
('support', 'tasknorm'), or trained self-normalised with the query sets'
statistics averaged into the running ones ('running').
"""

from typing import Callable

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import STATISTICS_METRIC
from jaxmeta.models import norms
from jaxmeta.models.base import Model
from jaxmeta.types import Array, Params, Task


def _statistics_owner(params: Params) -> Params:
  """The dict of `params` (at the top or under `'model'`) holding the running
  statistics."""
  for owner in (params, params.get('model')):
    if isinstance(owner, dict) and norms.STATISTICS in owner:
      return owner
  raise ValueError(
    f'No running statistics (entry {norms.STATISTICS!r}) in the parameters '
    f'(entries {sorted(params)}).'
  )


def _replace_statistics(params: Params, statistics: Params) -> Params:
  if norms.STATISTICS in params:
    return dict(params, **{norms.STATISTICS: statistics})
  return dict(
    params, model=dict(params['model'], **{norms.STATISTICS: statistics})
  )


def task_statistics(
  learner: MetaLearner, params: Params, task: Task, num_steps: int
) -> Params:
  """The batch statistics one training task adds to the running ones.

  Those of the task's query set after `num_steps` inner steps (or under the
  meta-parameters where `adapt` returns no model parameters, as Prototypical
  Networks'), of the minibatch where there are no queries; with per-step
  statistics (BNRS), set `i` after `i + 1` steps. Unbiased variances.

  Args:
    learner: the self-normalised learner, with `model`.
    params: its meta-parameters.
    task: one task.
    num_steps: the training inner steps.

  Returns:
    `{layer: {'mean', 'var'}}` shaped like the running statistics.
  """
  params = jax.lax.stop_gradient(params)
  model_params = _statistics_owner(params)
  x = task.query_x if task.query_x.shape[0] else task.support_x

  def statistics(steps):
    p = model_params
    if steps and task.query_x.shape[0]:
      adapted = learner.adapt(params, task.support_x, task.support_y, steps)
      if jax.tree.structure(adapted) == jax.tree.structure(model_params):
        p = jax.lax.stop_gradient(adapted)
    return norms.batch_statistics(
      learner.model, p, x, step=max(steps - 1, 0), unbiased=True
    )

  first = jax.tree.leaves(model_params[norms.STATISTICS])[0]
  if first.ndim == 1:
    return statistics(num_steps)
  sets = [statistics(i + 1) for i in range(first.shape[0])]
  return jax.tree.map(lambda *v: jnp.stack(v), *sets)


def normalised_learner(
  build: Callable[[Model], MetaLearner],
  model: Model,
  momentum: float = 0.1,
  num_inner_steps: int = 0,
) -> MetaLearner:
  """The learner `build(model)` in the batch-norm mode of `model`.

  Args:
    build: `build(model) -> MetaLearner`.
    model: a model with a batch-norm mode (`jaxmeta.models.norms`).
    momentum: 'running' mode: the running statistics' step towards the
      meta-batch mean of `task_statistics` (PyTorch's convention: 0.1).
    num_inner_steps: 'running' mode: the training inner steps.

  Returns:
    A `MetaLearner`; in 'support' and 'tasknorm' modes its `adapt` returns
    `{'adapted': ..., 'support_x': ...}`, which its `predict` takes.
  """
  mode = norms.check_mode(model.batch_norm)
  if mode == 'transductive':
    return build(model)
  on = lambda support_x: build(norms.given_support(model, support_x))
  if mode in ('support', 'tasknorm'):

    def task_update(params, task, key=None, global_step=None):
      return on(task.support_x).task_update(params, task, key, global_step)

    def evaluate(params, task, num_steps):
      return on(task.support_x).evaluate(params, task, num_steps)

    def adapt(params, support_x, support_y, num_steps):
      adapted = on(support_x).adapt(params, support_x, support_y, num_steps)
      return {'adapted': adapted, 'support_x': support_x}

    def predict(adapted, x):
      return on(adapted['support_x']).predict(adapted['adapted'], x)

    return build(model)._replace(
      task_update=task_update, evaluate=evaluate, adapt=adapt, predict=predict
    )

  train = build(norms.self_normalised(model))
  test = build(model)  # Its predictions normalise with the running statistics.

  def running_task_update(params, task, key=None, global_step=None):
    grads, metrics = train.task_update(
      params, task, key, global_step=global_step
    )
    metrics = dict(metrics)
    metrics[STATISTICS_METRIC] = task_statistics(
      train, params, task, num_inner_steps
    )
    return grads, metrics

  def update_state(model_state, statistics):
    owner = _statistics_owner(model_state)
    running = norms.running_average(
      owner[norms.STATISTICS], statistics, momentum
    )
    return _replace_statistics(model_state, running)

  return test._replace(
    task_update=running_task_update, update_state=update_state
  )


def _metric_name(labels: Array) -> str:
  return 'accuracy' if jnp.issubdtype(labels.dtype, jnp.integer) else 'mse'


def _metric(outputs: Array, labels: Array) -> Array:
  """Accuracy for integer labels, else the mean squared error."""
  if _metric_name(labels) == 'accuracy':
    return jnp.mean((jnp.argmax(outputs, -1) == labels).astype(float))
  return jnp.mean(jnp.square(outputs - labels))


def score_alone(
  learner: MetaLearner, params: Params, task: Task, num_steps: int
) -> Array:
  """The task's metric with every query scored on its own (`learner.adapt`
  once, then `learner.predict` on batches of one).

  Args:
    learner: a learner with `predict`.
    params: its meta-parameters.
    task: one task.
    num_steps: inner steps (static).

  Returns:
    A scalar: accuracy for integer labels, else the mean squared error.
  """
  adapted = learner.adapt(params, task.support_x, task.support_y, num_steps)
  outputs = jax.vmap(lambda x: learner.predict(adapted, x[None])[0])(
    task.query_x
  )
  return _metric(outputs, task.query_y)


def score_together(
  learner: MetaLearner, params: Params, task: Task, num_steps: int
) -> Array:
  """The task's metric with all queries scored together after `num_steps`
  steps (`learner.adapt`, then `learner.predict` on the query set): the
  last value of `evaluate`'s `<metric>_by_step`, without the others.

  Args, Returns: as `score_alone`.
  """
  adapted = learner.adapt(params, task.support_x, task.support_y, num_steps)
  return _metric(learner.predict(adapted, task.query_x), task.query_y)


def scoring_last_step(learner: MetaLearner) -> MetaLearner:
  """`learner` whose `evaluate` returns only `<metric>`, by `score_together`.

  The queries are scored once, after the last step, not after every step
  as `evaluate`'s `<metric>_by_step` needs: a tenth of the query forward
  passes at 10 inner steps. What choosing a checkpoint on validation needs.
  """

  def evaluate(params, task, num_steps):
    score = score_together(learner, params, task, num_steps)
    return {_metric_name(task.query_y): score}

  return learner._replace(evaluate=evaluate)


def with_scoring_alone(learner: MetaLearner) -> MetaLearner:
  """`learner` whose `evaluate` also returns `<metric>_alone`, the metric
  with each query scored on its own (`score_alone`), beside `<metric>`
  (all queries scored together)."""

  def evaluate(params, task, num_steps):
    metrics = dict(learner.evaluate(params, task, num_steps))
    name = _metric_name(task.query_y)
    metrics[f'{name}_alone'] = score_alone(learner, params, task, num_steps)
    return metrics

  return learner._replace(evaluate=evaluate)
