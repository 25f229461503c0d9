"""The run's directory: refused when it cannot hold this run, checked against
the configuration it holds, trimmed back to the last checkpoint on resume, and
the one-line messages of the faults of its file system."""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath
import ml_collections

from . import checkpoints as checkpoints_lib
from . import common
from . import config_checks


# Fields that may differ when a run is resumed or evaluated: they change how
# long or how it runs, not what is learned (but for `num_iterations` with a
# decaying meta learning rate, whose schedule follows it: see
# `check_schedule_horizon`).
RESUMABLE_FIELDS = tuple(
  'num_iterations eval_every num_eval_tasks task_chunk_size eval_batch_size '
  'checkpoint_every keep_checkpoints log_every model.conv_impl'.split()
)


def prepare_workdir(workdir: epath.Path, create: bool = True) -> None:
  """Refuses a workdir that is a file, not writable, or of an older layout."""
  try:
    is_file = workdir.exists() and not workdir.is_dir()
  except ImportError as e:  # A remote scheme without its fsspec package.
    raise config_checks.ConfigError(
      f'--workdir={workdir}: {common.last_line(e)} Fix: install the package '
      'it names, or give a local directory.'
    ) from e
  if is_file:
    raise config_checks.ConfigError(
      f'--workdir={workdir} is a file, not a directory. Fix: '
      'give the path of a directory (it is created).'
    )
  if (workdir / 'best').is_dir():
    raise config_checks.ConfigError(
      f'{workdir} holds a run written by an earlier version of jaxmeta (its '
      'best checkpoint in best/); this version keeps every checkpoint in '
      'checkpoints/ and cannot resume it. Fix: use a new --workdir.'
    )
  if not create:
    return
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise config_checks.ConfigError(
      f'Cannot create --workdir={workdir}: {e.strerror or e}. Fix: give a '
      'directory you can create (its parents must be directories).'
    ) from e
  if common.is_local(workdir) and not os.access(workdir, os.W_OK | os.X_OK):
    raise config_checks.ConfigError(
      f'--workdir={workdir} is not writable. Fix: choose a '
      'directory you can write to.'
    )


def read_saved_config(
  workdir: epath.Path, checkpoints: checkpoints_lib.Checkpoints
) -> tuple[dict[str, Any] | None, str]:
  """The config of the run in `workdir`: the latest checkpoint's, else
  `config.json`'s; `(None, '')` for an empty workdir."""
  for step in sorted(checkpoints.manager.all_steps(), reverse=True):
    try:
      return checkpoints.read_meta(step)['config'], f'checkpoint step {step}'
    except Exception as e:
      checkpoints.move_aside(step, e)
  path = workdir / 'config.json'
  if not path.exists():
    return None, ''
  fix = (
    'delete it (the workdir holds no checkpoint, so nothing else is lost) '
    'or use a new --workdir'
  )
  return read_config_json(path, fix), 'config.json'


def read_config_json(path: epath.Path, fix: str) -> dict[str, Any]:
  """The JSON object in `path`; a ConfigError naming `fix` if it is not one."""
  try:
    saved = json.loads(path.read_text())
    if not isinstance(saved, dict):
      raise ValueError('not a JSON object')
  except (OSError, ValueError) as e:
    raise config_checks.ConfigError(
      f'{path} is unreadable or corrupted ({e}). Fix: {fix}.'
    ) from e
  return saved


def check_same_run(
  saved: dict[str, Any] | None,
  source: str,
  config: ml_collections.ConfigDict,
  workdir: str,
) -> None:
  """Refuses a config that differs from the workdir's run (but in
  `RESUMABLE_FIELDS`)."""
  if saved is None:
    return
  before = config_checks.flatten(config_checks.with_added_fields(saved))
  now = config_checks.flatten(config)
  diffs = {
    k: (before.get(k), now.get(k))
    for k in sorted(set(before) | set(now))
    if k not in RESUMABLE_FIELDS and before.get(k) != now.get(k)
  }
  if diffs:
    listed = ', '.join(
      f'{k}: saved {a!r} vs now {b!r}' for k, (a, b) in diffs.items()
    )
    raise config_checks.ConfigError(
      f'{workdir} holds a run of a different configuration ({listed}; from '
      f'its {source}). Fix: use a new --workdir, or the same config to '
      'resume or evaluate that run.'
    )


def keep_records_up_to(path: epath.Path, step: int) -> None:
  """Drops metrics.jsonl records past `step` (written before a kill)."""
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue  # A line cut short by a kill or a full disk.
    if record.get('step', 0) <= step:
      kept.append(json.dumps(record) + '\n')
  common.write_text(path, ''.join(kept))


def check_schedule_horizon(
  saved: dict[str, Any] | None,
  config: ml_collections.ConfigDict,
  step: int,
  workdir: epath.Path,
) -> None:
  """Refuses to resume, with another `num_iterations`, a run whose meta
  learning rate decays over `num_iterations` (linear or cosine).

  The schedule would move under the steps already taken (and past the old
  horizon the rate is `meta_lr_final`: nothing more would be learned). A
  finished run may still be tested with a smaller `num_iterations`.
  """
  if saved is None or step == 0 or step >= config.num_iterations:
    return
  if config.meta_lr_final < 0 or config.meta_lr_schedule == 'halving':
    return
  before = saved.get('num_iterations', config.num_iterations)
  if before == config.num_iterations:
    return
  raise config_checks.ConfigError(
    f'{workdir} holds a run whose meta learning rate decays '
    f'({config.meta_lr_schedule}) over num_iterations={before}; going on '
    f'from its step {step} with num_iterations={config.num_iterations} '
    'would change the schedule of the steps already taken. Fix: rerun with '
    f'--config.num_iterations={before}, or train '
    f'{config.num_iterations} iterations in a new --workdir.'
  )


def blocked_path(
  workdir: epath.Path, error: BaseException
) -> common.OneLineError | None:
  """An `OSError` on a path inside the workdir (a folder where the run
  writes a file, a file where it makes a folder, no permission) as one line;
  None for other errors."""
  if not common.is_local(workdir):
    return None
  root = os.path.abspath(os.fspath(workdir))
  fix = (
    'Fix: move it out of the way, or use a new --workdir; then the same '
    'command goes on from the last checkpoint.'
  )
  for e in common.error_chain(error):
    if isinstance(e, OSError):
      path = e.filename and os.path.abspath(os.fspath(e.filename))
      if path and (path + os.sep).startswith(root + os.sep):
        return common.OneLineError(
          f'Cannot use {path} ({e.strerror or e}): the run writes its own '
          f'file or folder there. {fix}'
        )
      if not path and root in str(e):
        return common.OneLineError(f'{e}. {fix}')
  return None


def disk_full(
  workdir: epath.Path, error: BaseException
) -> common.DiskFullError:
  """A full disk while the run wrote `error`'s file, as one line."""
  filenames = [getattr(e, 'filename', None) for e in common.error_chain(error)]
  filename = next((os.fspath(f) for f in filenames if f), None)
  where = f'--workdir={workdir}'
  if filename:
    inside = os.path.abspath(filename).startswith(
      os.path.abspath(os.fspath(workdir))
    )
    where = f'{where} ({filename})' if inside else filename
  try:  # The finished steps on disk, without asking orbax.
    steps = [p.name for p in (workdir / 'checkpoints').iterdir()]
    latest = max(int(name) for name in steps if name.isdigit())
    kept = (
      f'the latest checkpoint, step {latest}, is intact and the rerun '
      'resumes from it'
    )
  except (OSError, ValueError):
    kept = 'no checkpoint had been saved yet, the rerun starts afresh'
  return common.DiskFullError(
    f'The disk of {where} is full (or over quota): the run stopped, and '
    f'{kept}. Fix: free space there and rerun the same command.'
  )
