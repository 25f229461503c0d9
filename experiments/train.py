"""The training program of every experiment: `train_and_evaluate(config, workdir)`.

The loop: check the config, build the run, resume from the workdir, train
with periodic validation and checkpoints, stop at a non-finite step, test
the best checkpoint, write the metrics and `results.json`.

Outputs in the workdir (local, or remote through `etils.epath`):
`config.json` (once the config is checked), `metrics.jsonl`, `tensorboard/`
(scalars, and the flattened config with the test metrics for the HParams
tab), `checkpoints/<step>/`, `results.json` at the end of a run, `eval.json`
for `--mode=eval`, and `lock` while a run holds the workdir.

A fault of the surroundings (a busy workdir, a full disk, an unreadable
checkpoint) ends the run with one line and loses nothing saved; rerunning
the same command finishes the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import jax
import ml_collections
import tqdm

import jaxmeta
from jaxmeta import distributed
from jaxmeta import sharding
from jaxmeta.data import episodes
from . import build
from . import common
from . import config_checks
from . import evaluation
from . import workdir as workdir_lib


class _NoWriter:
  """The metric writer of the processes other than the main one."""

  def write(self, *args, **kwargs):
    del args, kwargs

  write_hparams = write

  def close(self):
    pass


def _say(line: str) -> None:
  """Prints a line on the main process (above a progress bar, if any)."""
  if distributed.is_main_process():
    tqdm.tqdm.write(line)


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: 'str | os.PathLike',
  *,
  data_dir: str | None = None,
  source_dir: str | None = None,
  progress: bool = True,
) -> dict[str, Any]:
  """Meta-trains (resuming if the workdir has a run), then tests the best
  checkpoint on validation; writes and returns the results.

  Args:
    config: the experiment's configuration (see `experiments/configs`).
    workdir: the run's directory (local, `file://` or remote, e.g. `gs://`).
    data_dir: TFDS data dir of the prepared datasets (default: the loader's).
    source_dir: where a dataset's source files are (default: the loader's).
    progress: show a progress bar.

  Returns:
    The results, as written to `workdir/results.json`.

  Raises:
    ConfigError: a configuration, workdir or data that cannot run.
    common.RunError: a non-finite step (nothing of it is applied or saved).
    common.OneLineError: the workdir is in use by another run, or its disk
      is full (`common.DiskFullError`; what was saved before stays).
  """
  config = config_checks.with_added_fields(config)
  config_checks.validate(config)
  workdir = common.workdir_path(workdir)
  workdir_lib.prepare_workdir(workdir)
  try:
    with _lock(workdir):
      return _train_and_evaluate(
        config, workdir, data_dir, source_dir, progress
      )
  except Exception as e:
    if isinstance(e, common.OneLineError):
      raise
    if common.is_disk_full(e):
      raise workdir_lib.disk_full(workdir, e) from e
    blocked = workdir_lib.blocked_path(workdir, e)
    if blocked is not None:
      raise blocked from e
    raise


def _lock(workdir, exclusive: bool = True):
  """The workdir's lock (`common.locked_workdir`), taken by the main process."""
  if distributed.is_main_process():
    return common.locked_workdir(workdir, exclusive)
  return contextlib.nullcontext()


def _close_quietly(*closers) -> None:
  """Closes what a failing run opened; the failure itself is what to report."""
  for close in closers:
    try:
      close()
    except Exception:
      pass


def _train_and_evaluate(config, workdir, data_dir, source_dir, progress):
  """`train_and_evaluate` in a checked, locked workdir."""
  run = build.Run(config, workdir, data_dir, source_dir, config.train_split)
  checkpoints = run.checkpoints
  writer, bar = _NoWriter(), None
  try:
    saved, source = workdir_lib.read_saved_config(workdir, checkpoints)
    workdir_lib.check_same_run(saved, source, config, workdir)
    train_data, val_data = run.load(config.train_split), run.load('val')
    state = run.init_state()
    restored = checkpoints.restore_latest_readable(state)
    if restored is not None:
      state = restored[0]
      workdir_lib.check_schedule_horizon(
        saved, config, int(state.step), workdir
      )
      _say(f'Resuming from step {int(state.step)} of {workdir}.')
    main_process = distributed.is_main_process()  # Only it writes files.
    if main_process:
      common.write_json(workdir / 'config.json', config.to_dict())

    train_step = build.make_train_step(
      run.learner, run.optimizer, run.family, config, run.mesh
    )
    # Choosing a checkpoint needs the last step's score only: the test's
    # program, which also scores every step and each query alone, costs
    # several times as much at 10 inner steps.
    evaluator = evaluation.Evaluator(
      run.learner, run.family, config, run.mesh, by_step=False
    )
    val_keys = episodes.eval_task_keys(
      config.eval_seed + 1, config.num_val_tasks
    )
    start_step = int(state.step)
    if main_process:
      workdir_lib.keep_records_up_to(workdir / 'metrics.jsonl', start_step)
      writer = common.MetricWriter(workdir)
    metric = run.metric

    def validate_now(state):
      values = evaluator(state.merged_params(), val_data, val_keys)[0]
      value, ci95 = jaxmeta.mean_and_ci95(values)
      scalars = {metric: value, 'ci95': ci95}
      if evaluator.tasks_per_second is not None:
        scalars['tasks_per_second'] = evaluator.tasks_per_second
      writer.write(int(state.step), scalars, prefix='val/')
      return value

    start = time.time()
    bar = tqdm.tqdm(
      total=config.num_iterations,
      initial=start_step,
      disable=not (progress and main_process),
      desc=f'{config.dataset} {config.algorithm}',
    )
    step = start_step
    compile_seconds, first_timed_step = None, step
    while step < config.num_iterations:
      batch = train_data
      if run.family.sample_host is not None:
        batch = run.family.sample_host(
          jax.random.fold_in(state.key, state.step),
          train_data,
          config.meta_batch_size,
        )
        # Every process drew the same meta-batch.
        batch = sharding.shard_tasks(batch, run.mesh)
      state, metrics = train_step(state, batch)
      step += 1
      if compile_seconds is None:
        jax.block_until_ready(state)
        compile_seconds = time.time() - start
        start, first_timed_step = time.time(), step
      last = step == config.num_iterations
      log = step % config.log_every == 0 or last
      evaluate = step % config.eval_every == 0 or last
      save = step % config.checkpoint_every == 0 or last or evaluate
      if log or evaluate or save:
        metrics = jax.device_get(metrics)
        if not metrics.pop('finite'):
          raise _diverged(config, workdir, metrics, state, checkpoints)
      if log:
        writer.write(step, metrics, prefix='train/')
        bar.set_postfix(
          loss=f'{metrics["loss"]:.3f}', **{metric: f'{metrics[metric]:.3f}'}
        )
      bar.update(1)
      value = None
      if evaluate:
        value = validate_now(state)
        best = checkpoints.best_metric()
        _say(
          f'step {step}: val {metric} {value:.4f} (best before '
          f'{"none" if best is None else f"{best:.4f}"})'
        )
      if save:
        checkpoints.save(step, state, run.meta(), value)
    bar.close()
    jax.block_until_ready(state)
    train_seconds = time.time() - start
    timed_steps = step - first_timed_step

    def validate_final_state():
      """Validates and saves the final state where no validated step is
      left: none was trained, or every validated one was unreadable."""
      if checkpoints.best_step() is None:
        if step in checkpoints.manager.all_steps():
          checkpoints.manager.delete(step)
        checkpoints.save(step, state, run.meta(), validate_now(state))

    validate_final_state()
    tester = evaluation.Evaluator(
      run.learner, run.family, config, run.mesh, alone=True
    )
    results = evaluation.test_run(run, tester, none_left_ok=True)
    if results is None:
      validate_final_state()
      results = evaluation.test_run(run, tester)
    results_path = workdir / 'results.json'
    timing = dict(
      iterations=step,
      resumed_from_step=start_step,
      compile_seconds=compile_seconds,
      train_seconds=train_seconds,
      steps_per_second=timed_steps / train_seconds if timed_steps else None,
    )
    if step == start_step and results_path.exists():
      # Nothing trained in this call: keep the figures of the call that did.
      try:
        earlier = json.loads(results_path.read_text())
        for key in timing.keys() - {'iterations'}:
          timing[key] = earlier.get(key, timing[key])
      except (OSError, ValueError, AttributeError):
        pass
    results.update(timing)
    test_metrics = {
      metric: results[f'test_{metric}'],
      'ci95': results['test_ci95'],
      f'{metric}_alone': results[f'test_{metric}_alone'],
    }
    writer.write(step, test_metrics, prefix='test/')
    writer.write_hparams(
      step,
      config_checks.flatten(config),
      {f'test/{name}': value for name, value in test_metrics.items()},
    )
    writer.close()
    checkpoints.close()
  except BaseException:
    if bar is not None:
      _close_quietly(bar.close)
    _close_quietly(writer.close, checkpoints.close)
    raise
  _say(evaluation.summary(results, results_path))
  if main_process:
    common.write_json(results_path, results)
  return results


def _diverged(config, workdir, metrics, state, checkpoints) -> common.RunError:
  """The error of a non-finite step (the one after `state`'s)."""
  step, last_saved = int(state.step) + 1, checkpoints.latest_step()
  kept = (
    f'The last checkpoint, step {last_saved} in {workdir}/checkpoints, '
    'holds finite parameters.'
    if last_saved is not None
    else 'No checkpoint had been written yet.'
  )
  return common.RunError(
    f'Meta-step {step} produced non-finite values (loss {metrics["loss"]}, '
    f'meta-gradient norm {metrics["meta_grad_norm"]}, or the updated '
    'parameters); it was not applied and the run stopped. Likely cause: '
    f'config.inner_lr ({config.inner_lr}) or config.meta_lr '
    f'({config.meta_lr}) too large. {kept}'
  )


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: 'str | os.PathLike',
  *,
  data_dir: str | None = None,
  source_dir: str | None = None,
) -> dict[str, Any]:
  """`--mode=eval`: tests the best checkpoint of the run in `workdir`.

  The config must be the run's (but for `workdir.RESUMABLE_FIELDS`). The
  results are printed, then written to `workdir/eval.json`, the only file
  changed; the workdir's lock is held shared (refused while a run trains).
  An unreadable best checkpoint is a `checkpoints.CheckpointError`.
  """
  config = config_checks.with_added_fields(config)
  config_checks.validate(config)
  workdir = common.workdir_path(workdir)
  workdir_lib.prepare_workdir(workdir, create=False)
  if not (workdir / 'checkpoints').is_dir():
    raise config_checks.ConfigError(
      f'{workdir} holds no run (no checkpoints/). Fix: train '
      'first (--mode=train), or give the workdir of a run.'
    )
  with _lock(workdir, exclusive=False):
    run = build.Run(
      config, workdir, data_dir, source_dir, 'test', read_only=True
    )
    try:
      saved, source = workdir_lib.read_saved_config(workdir, run.checkpoints)
      if saved is None:
        raise config_checks.ConfigError(
          f'{workdir} holds no checkpoint. Fix: train first.'
        )
      workdir_lib.check_same_run(saved, source, config, workdir)
      results = evaluation.test_run(run)
    finally:
      _close_quietly(run.checkpoints.close)
  path = workdir / 'eval.json'
  _say(evaluation.summary(results, path))
  if not distributed.is_main_process():
    return results
  try:
    common.write_json(path, results)
  except OSError as e:
    raise common.RunError(
      f'Could not write {path}: {e.strerror} (the results are printed above).'
    ) from e
  return results
