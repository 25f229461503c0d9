"""One orbax `CheckpointManager` per run: the latest few and the best.

`workdir/checkpoints/<step>/` holds the train state, the run's config (JSON
item `meta`) and, for validated steps, the validation metric. Kept: the
latest `keep` steps (`LatestN`) and the best validated one (`BestN`); both
policies run over the same directory, so one save per step, and no second
bookkeeping that a kill could leave inconsistent.

A kill at any moment loses nothing saved: orbax writes a step into a
temporary directory, renamed when complete, and removes an interrupted
save's when it opens. A step that is nevertheless unreadable is moved aside
to `workdir/unreadable/` with a warning, and the previous intact step is
resumed (the next-best validated one tested); opened read-only
(evaluation), it is a `CheckpointError` that says how to recover.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

import jax
import jaxmeta
import orbax.checkpoint as ocp

from . import common


class CheckpointError(RuntimeError):
  """No usable checkpoint where one is needed."""


class Checkpoints:
  """The checkpoints of one run (see the module docstring).

  Args:
    workdir: the run's directory.
    keep: how many of the latest steps to keep (the best is kept besides).
    metric: name of the validation metric stored with validated steps, e.g.
      'val_accuracy'.
    higher_is_better: whether a larger `metric` is better.
    read_only: open without creating, cleaning or moving anything
      (evaluation); an unreadable step is then a `CheckpointError`.
  """

  def __init__(
    self,
    workdir: 'str | os.PathLike',
    keep: int,
    metric: str,
    higher_is_better: bool,
    read_only: bool = False,
  ):
    workdir = common.workdir_path(workdir)
    self.workdir = workdir.resolve() if common.is_local(workdir) else workdir
    self.read_only = read_only
    self.metric = metric
    self._sign = 1.0 if higher_is_better else -1.0
    score = lambda m: self._sign * float(m[metric])
    self.manager = None
    # Orbax reads every step's validation record when it opens the
    # directory, and fails on one it cannot parse: such steps go first.
    self._move_aside_unreadable_records()
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
      [
        ocp.checkpoint_managers.LatestN(n=keep),
        ocp.checkpoint_managers.BestN(
          get_metric_fn=score, n=1, keep_checkpoints_without_metrics=False
        ),
      ]
    )
    self.manager = ocp.CheckpointManager(
      self.workdir / 'checkpoints',
      options=ocp.CheckpointManagerOptions(
        best_fn=score,
        best_mode='max',
        preservation_policy=policy,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        enable_async_checkpointing=False,
      ),
    )

  def _move_aside_unreadable_records(self) -> None:
    directory = self.workdir / 'checkpoints'
    if not directory.is_dir():
      return
    for step_dir in directory.iterdir():
      record = step_dir / 'metrics' / 'metrics'
      if not step_dir.name.isdigit() or not record.exists():
        continue
      try:
        float(json.loads(record.read_text())[self.metric])
      except (OSError, ValueError, KeyError, TypeError) as e:
        self.move_aside(
          int(step_dir.name),
          e,
          'a step whose validation record is unreadable',
          'the other checkpoints',
        )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The validated step with the best metric (the latest of ties)."""
    steps = self.manager.all_steps()
    if all(self.manager.metrics(s) is None for s in steps):
      return None
    return self.manager.best_step()

  def best_metric(self) -> float | None:
    step = self.best_step()
    return (
      None if step is None else float(self.manager.metrics(step)[self.metric])
    )

  def save(
    self,
    step: int,
    state: Any,
    meta: Mapping[str, Any],
    val_metric: float | None = None,
  ) -> None:
    """Saves `state` and `meta` at `step` (with the metric if validated)."""
    metrics = None if val_metric is None else {self.metric: float(val_metric)}
    self.manager.save(
      int(step),
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave(common.to_python(dict(meta))),
      ),
      metrics=metrics,
      force=True,
    )
    self.manager.wait_until_finished()

  def read_meta(self, step: int) -> dict[str, Any]:
    return self.manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    ).meta

  def restore(self, like: Any, step: int) -> tuple[Any, dict[str, Any]]:
    """Restores `(state, meta)` of `step`, shaped like `like`.

    A step saved before the train state had `model_state` (running
    statistics inside the parameters, the optimiser's state over all of
    them) is read into the current layout (`restore_without_model_state`).
    A step saved without `opt_state` (a published model,
    `without_optimiser_state`) gets `like`'s, an optimiser starting afresh.
    """
    if isinstance(like, jaxmeta.MetaTrainState):
      saved = self.saved_tree(step)
      if 'model_state' not in saved:
        return self.restore_without_model_state(like, step)
      if 'opt_state' not in saved:
        state, meta = self.restore(without_optimiser_state(like), step)
        if not self.read_only:
          print(
            f'Step {step} holds no optimiser state (a published model): '
            'training goes on with the optimiser started afresh.',
            file=sys.stderr,
          )
        return like.replace(**state), meta
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
    return restored.state, restored.meta

  def state_directory(self, step: int):
    return self.workdir / 'checkpoints' / str(step) / 'state'

  def saved_tree(self, step: int) -> Any:
    """The metadata (shapes, dtypes) of the state saved at `step`."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
      return handler.metadata(self.state_directory(step)).tree
    finally:
      handler.close()

  def restore_without_model_state(
    self, like: 'jaxmeta.MetaTrainState', step: int
  ) -> tuple['jaxmeta.MetaTrainState', dict[str, Any]]:
    """Restores a step saved without `model_state`, in the current layout.

    Its parameters are `like`'s merged parameters
    (`MetaTrainState.merged_params`), split again
    (`jaxmeta.split_model_state`); of its optimiser state only the entries of
    the trainable parameters are read, which are those an optimiser of the
    trainable parameters alone would hold (the statistics had zero gradient
    and per-parameter optimisers keep per-parameter state).

    Args:
      like: a state of the current layout, structure, shapes and dtypes.
      step: the saved step.

    Returns:
      `(state, meta)` as `restore`.
    """
    target = {
      'step': like.step,
      'params': like.merged_params(),
      'opt_state': like.opt_state,
      'key': like.key,
    }
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    with ocp.PyTreeCheckpointer() as checkpointer:
      old = checkpointer.restore(
        self.state_directory(step),
        args=ocp.args.PyTreeRestore(
          abstract,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True,
        ),
      )
    params, model_state = jaxmeta.split_model_state(old['params'])
    state = like.replace(
      step=old['step'],
      params=params,
      model_state=model_state,
      opt_state=old['opt_state'],
      key=old['key'],
    )
    return state, self.read_meta(step)

  def restore_latest_readable(
    self, like: Any
  ) -> tuple[Any, dict[str, Any]] | None:
    """Restores the latest step that reads back, moving broken ones aside.

    Args:
      like: a state of the right structure, shapes and dtypes.

    Returns:
      `(state, meta)`, or None if no step reads back (or none exists).
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self.restore(like, step)
      except Exception as e:
        # Orbax, tensorstore and JSON raise many types for a damaged step.
        self.move_aside(step, e)
    return None

  def restore_best_readable(
    self, like: Any
  ) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores the best validated step that reads back, moving broken ones
    aside (read-only: a `CheckpointError` at the first broken one).

    Args:
      like: a state of the right structure, shapes and dtypes.

    Returns:
      `(step, state, meta)`, or None if no validated step reads back (or
      none exists).
    """
    while (step := self.best_step()) is not None:
      try:
        return (step, *self.restore(like, step))
      except Exception as e:
        self.move_aside(
          step, e, 'the best on validation', 'the next-best validated step'
        )
    return None

  def move_aside(
    self,
    step: int,
    error: Exception,
    role: str = 'the latest',
    fallback: str = 'the previous checkpoint',
  ) -> None:
    """Moves an unreadable step to `workdir/unreadable/` and says so.

    Args:
      step: the unreadable step.
      error: what reading it raised.
      role: which checkpoint it was, for the messages ('the latest', 'the
        best on validation').
      fallback: what the run uses instead, for the warning.

    Raises:
      CheckpointError: opened read-only, where nothing may be moved.
    """
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    reason = f'{type(error).__name__}: {first_line[:200]}'
    if self.read_only:
      raise CheckpointError(
        f'Checkpoint step {step} ({role}) in {self.workdir}/checkpoints '
        f'could not be read ({reason}). Fix: rerun the training command '
        '(--mode=train) on this workdir: it moves the unreadable step aside '
        'and falls back to the previous intact one; then evaluate again.'
      ) from error
    source = self.workdir / 'checkpoints' / str(step)
    target_dir = self.workdir / 'unreadable'
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / str(step)
    suffix = 0
    while target.exists():
      suffix += 1
      target = target_dir / f'{step}.{suffix}'
    source.rename(target)
    if self.manager is not None:
      self.manager.reload()
    print(
      f'Warning: checkpoint step {step} could not be read ({reason}); it was '
      f'{role}: moved it to {target} and fell back to {fallback}.',
      file=sys.stderr,
    )

  def close(self) -> None:
    self.manager.close()


def without_optimiser_state(state: 'jaxmeta.MetaTrainState') -> dict[str, Any]:
  """`state` as a dict without `opt_state`: what a published model saves
  (a third of the size with Adam) and `Checkpoints.restore` reads back."""
  return {
    'step': state.step,
    'params': state.params,
    'model_state': state.model_state,
    'key': state.key,
  }
