"""Scoring a learner on a fixed set of tasks: all queries together and each
alone, with 95% confidence intervals; the test of a run's best checkpoint
(`test_run`) and its one-line summary."""

from __future__ import annotations

import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

import jaxmeta
from jaxmeta import sharding
from jaxmeta.data import episodes
from . import build
from . import common
from . import tasks


class Evaluator:
  """A metric over a fixed set of tasks, in compiled chunks of tasks split
  over the devices of `mesh`.

  With `by_step`, also the metric after each inner step; with `alone`, the
  metric with each query scored on its own (`jaxmeta.algorithms.score_alone`),
  beside all queries scored together. Without `by_step` the queries are
  scored after the last step only (`jaxmeta.algorithms.scoring_last_step`).
  `tasks_per_second` is the speed of the last call, the chunk that compiled the
  program left out (None until a compiled chunk has run).
  """

  def __init__(
    self,
    learner: jaxmeta.MetaLearner,
    family: tasks.TaskFamily,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    alone: bool = False,
    by_step: bool = True,
  ):
    metric = family.metric
    self._mesh = mesh
    if not by_step:
      learner = jaxmeta.algorithms.scoring_last_step(learner)
    if alone:
      learner = jaxmeta.algorithms.with_scoring_alone(learner)
    # Every device scores the same number of tasks of each chunk.
    self._chunk = -(-config.eval_batch_size // mesh.size) * mesh.size
    evaluate = jaxmeta.make_evaluate(
      learner, config.eval_inner_steps, mesh=mesh
    )

    def run_chunk(params, data, keys):
      # The keys are split over the devices, so each draws its own tasks.
      tasks = jax.vmap(lambda k: family.sample(k, data, False))(keys)
      metrics = evaluate(params, tasks)
      names = [metric] + [f'{metric}_by_step'] * by_step
      names += [f'{metric}_alone'] * alone
      return tuple(metrics[name] for name in names)

    self._run_chunk = jax.jit(run_chunk)
    self._compiled = False
    self.tasks_per_second = None

  def __call__(self, params, data, keys) -> tuple[np.ndarray, ...]:
    """Per-task metric `[n]`, then with `by_step` the metric after each step
    `[n, steps+1]`, with `alone` the per-task metric of queries scored
    alone `[n]`."""
    n = keys.shape[0]
    padded = -(-n // self._chunk) * self._chunk
    if padded > n:  # Every call has the same shape: pad with the last key.
      keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], padded - n, 0)])
    outputs, timed_tasks, start = [], 0, time.perf_counter()
    for i in range(0, padded, self._chunk):
      # Each device (of each process) its rows.
      chunk = sharding.shard_tasks(keys[i : i + self._chunk], self._mesh)
      outputs.append([to_host(v) for v in self._run_chunk(params, data, chunk)])
      if self._compiled:
        timed_tasks += self._chunk
      else:  # Time from the end of the chunk that compiled.
        self._compiled, start = True, time.perf_counter()
    if timed_tasks:
      self.tasks_per_second = timed_tasks / (time.perf_counter() - start)
    return tuple(np.concatenate(column)[:n] for column in zip(*outputs))


def to_host(x: jax.Array) -> np.ndarray:
  """A (possibly sharded over several processes) array, whole, on the host."""
  if not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def summary(results: dict[str, Any], path: str) -> str:
  """One line: the test metric with its 95% CI, and where the results are."""
  metric = 'accuracy' if 'test_accuracy' in results else 'mse'
  value, ci = results[f'test_{metric}'], results['test_ci95']
  alone = results.get(f'test_{metric}_alone')
  if metric == 'accuracy':
    figure = f'test accuracy {100 * value:.2f}% +- {100 * ci:.2f}%'
    if alone is not None:
      figure += f' ({100 * alone:.2f}% with each query scored alone)'
    shape = f'{results["ways"]}-way {results["shots"]}-shot '
  else:
    figure = f'test MSE {value:.4f} +- {ci:.4f}'
    shape = f'{results["shots"]}-shot '
  split = f' ({results["split"]} split)' if results.get('split') else ''
  return (
    f'{results["algorithm"]} {shape}{results["dataset"]}{split}: '
    f'{figure} (95% CI, {results["num_test_tasks"]} tasks, '
    f'{results["eval_inner_steps"]} inner steps; best validation step '
    f'{results["best_step"]}). Results: {path}'
  )


def test_run(
  run: build.Run,
  evaluator: Evaluator | None = None,
  none_left_ok: bool = False,
) -> dict[str, Any] | None:
  """Tests the best-validation checkpoint on the fixed test tasks (with
  `evaluator`, an `Evaluator(..., alone=True)` of this run, if given).

  An unreadable best step is moved aside and the next best tested
  (`Checkpoints.restore_best_readable`); with `none_left_ok`, None when
  no validated step reads back, else a `common.RunError`.
  """
  config, checkpoints = run.config, run.checkpoints
  found = checkpoints.restore_best_readable(run.init_state())
  if found is None:
    if none_left_ok:
      return None
    raise common.RunError(
      f'No readable validated checkpoint in {run.workdir}/checkpoints '
      'to test. Fix: train first (--mode=train; it validates the final '
      'state again if every validated step was unreadable).'
    )
  step, state, _ = found
  params = state.merged_params()
  if not bool(build.all_finite(params)):
    raise common.RunError(
      f'Checkpoint step {step} in {run.workdir}/checkpoints '
      'holds non-finite parameters; it cannot be evaluated.'
    )
  keys = episodes.eval_task_keys(config.eval_seed, config.num_eval_tasks)
  if evaluator is None:
    evaluator = Evaluator(run.learner, run.family, config, run.mesh, alone=True)
  values, by_step, alone = evaluator(params, run.load('test'), keys)
  mean, ci95 = jaxmeta.mean_and_ci95(values)
  mean_alone, ci95_alone = jaxmeta.mean_and_ci95(alone)
  m = run.metric
  return {
    'algorithm': config.algorithm,
    'batch_norm': config.batch_norm,
    'preset': config.preset or None,
    'dataset': config.dataset,
    'backbone': config.backbone,
    'ways': config.ways,
    'shots': config.shots,
    'queries': config.queries,
    'split': config.data.get('scheme'),
    'eval_inner_steps': config.eval_inner_steps,
    f'test_{m}': mean,
    'test_ci95': ci95,
    # Each query scored on its own (a batch of one): equal to the above
    # in the non-transductive batch-norm modes.
    f'test_{m}_alone': mean_alone,
    'test_ci95_alone': ci95_alone,
    'num_test_tasks': config.num_eval_tasks,
    # Queries scored together and alone; compiling left out.
    'test_tasks_per_second': evaluator.tasks_per_second,
    f'test_{m}_by_step': by_step.mean(axis=0).tolist(),
    'best_step': step,
    f'best_val_{m}': checkpoints.best_metric(),
    'config': config.to_dict(),
  }
