"""Short training runs that SIGKILL themselves at their N-th file-system event.

Used by `tests/experiments/test_kill_and_resume.py`: `python
tests/support/kill_driver.py WORKDIR N [WORKDIR N ...]` runs, one after the
other, a tiny sinusoid training (`config()`: a checkpoint at every step, a
validation every two) in each WORKDIR, each run in a process of its own forked
from this one (`tests/support/forked.py`). A run counts the calls that write,
rename or delete files (Python's os/shutil/pathlib calls, which orbax's saves
go through, and the program's own JSON, metric and checkpoint writes) and kills
itself with SIGKILL just before the N-th one (N = 0: never); it prints the
number of events it saw when it finishes. The driver reports every run's exit
status and output.
"""

import builtins
import os
import pathlib
import shutil
import signal
import sys

_count = 0
_kill_at = 0


def _event():
  global _count
  _count += 1
  if _count == _kill_at:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _counted(fn):
  def wrapped(*args, **kwargs):
    _event()
    return fn(*args, **kwargs)

  return wrapped


def _counted_open(fn):
  def wrapped(file, mode='r', *args, **kwargs):
    if any(c in mode for c in 'wax+'):
      _event()
    return fn(file, mode, *args, **kwargs)

  return wrapped


def config():
  """The run: tiny sinusoid, a checkpoint every step, validation every 2."""
  from experiments.configs import sinusoid

  c = sinusoid.get_config()
  c.model.hidden = (8,)
  c.update(
    num_iterations=6,
    eval_every=2,
    checkpoint_every=1,
    keep_checkpoints=2,
    log_every=1,
    num_val_tasks=4,
    num_eval_tasks=6,
    eval_batch_size=6,
    meta_batch_size=2,
  )
  return c


def _count_file_events():
  for module, name in (
    (os, 'rename'),
    (os, 'replace'),
    (os, 'makedirs'),
    (os, 'mkdir'),
    (os, 'remove'),
    (os, 'unlink'),
    (os, 'rmdir'),
    (shutil, 'rmtree'),
    (shutil, 'move'),
    (pathlib.Path, 'rename'),
    (pathlib.Path, 'replace'),
    (pathlib.Path, 'mkdir'),
    (pathlib.Path, 'unlink'),
    (pathlib.Path, 'rmdir'),
    (pathlib.Path, 'write_text'),
    (pathlib.Path, 'write_bytes'),
  ):
    setattr(module, name, _counted(getattr(module, name)))
  builtins.open = _counted_open(builtins.open)


def _train(workdir, kill_at):
  """One run, in a forked process: counts from its own start."""
  global _count, _kill_at
  _count, _kill_at = 0, kill_at
  from experiments import train

  train.train_and_evaluate(config(), workdir, progress=False)
  print(f'EVENTS {_count}')


def main():
  args = sys.argv[1:]
  runs = [(args[i], int(args[i + 1])) for i in range(0, len(args), 2)]
  # The repository, for `experiments` (forked.launch puts it on PYTHONPATH too).
  sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
  )
  import forked

  # Imported once, before the runs fork (tests/support/forked.py).
  from experiments import train  # noqa: F401

  _count_file_events()
  results = []
  for workdir, kill_at in runs:
    results += forked.run(
      [lambda w=workdir, k=kill_at: _train(w, k)], timeout=300
    )
  forked.report(results)


if __name__ == '__main__':
  main()
