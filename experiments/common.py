"""Pieces shared by the experiment modules: command line, metrics, results."""

import json
import os
import platform
import sys
import tempfile
from typing import Any, Mapping

from absl import flags
from absl import logging
import jax
import numpy as np


def check_command_line(argv, required_flag: str) -> None:
  """The start of every experiment's `main`: no stray arguments, the output
  flag given, and library logs below errors (orbax saves, TFDS reads)
  silenced."""
  if len(argv) > 1:
    exit_with_one_line(
      f'Unexpected arguments: {argv[1:]} (flags are '
      '--name=value; --helpfull lists them).'
    )
  if not flags.FLAGS[required_flag].value:
    exit_with_one_line(f'--{required_flag} is required.')
  logging.set_verbosity(min(logging.get_verbosity(), logging.ERROR))


def to_python(value: Any) -> Any:
  """Converts arrays and numpy scalars inside `value` to JSON-able Python."""
  if isinstance(value, Mapping):
    return {str(k): to_python(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_python(v) for v in value]
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  return value


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically: a crash never leaves a half-written file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix='.tmp')
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)  # As open() would; mkstemp makes it 0600.
  with os.fdopen(fd, 'w') as f:
    json.dump(to_python(obj), f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)


class MetricWriter:
  """Scalars to `workdir/metrics.jsonl` and TensorBoard event files.

  The TensorBoard files are written by tensorboardX, which needs no
  TensorFlow; `tensorboard --logdir WORKDIR/tensorboard` shows them.
  """

  def __init__(self, workdir: str):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: Mapping[str, Any], prefix: str = ''):
    scalars = {f'{prefix}{k}': float(np.asarray(v)) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, int(step))

  def close(self):
    self._jsonl.close()
    self._tb.close()


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with every error as one line (no `--help` dump).

  Besides absl's own errors, config_flags raises plain exceptions for an
  unknown `--config.<field>` or a config file's `get_config` error; each is
  reported with its last line, which names the problem.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    exit_with_one_line(last_line(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    exit_with_one_line(f'--config: {last_line(e)}')
  return []  # Not reached.


def last_line(error: BaseException) -> str:
  """The last line of an error's message that says something."""
  lines = [
    line.strip()
    for line in str(error).splitlines()
    if line.strip() and not line.strip().startswith('Pass --help')
  ]
  return lines[-1] if lines else type(error).__name__


def exit_with_one_line(error: BaseException | str, code: int = 1) -> None:
  """Ends the program with `Error: <message>` on stderr: no traceback, no
  flag help, for errors that already name the problem and the fix."""
  sys.stdout.flush()
  print(f'Error: {error}', file=sys.stderr)
  sys.exit(code)


HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'
_REEXEC_MARKER = 'JAXMETA_REEXECUTED'


def reexec_with_huge_pages() -> None:
  """Restarts this program with glibc's malloc on transparent huge pages.

  XLA:CPU allocates the temporary buffers of a compiled program afresh on
  every call (over 100 MB for a Conv-4 MAML step). glibc serves such sizes
  with fresh `mmap`s, and with 4 KiB pages the kernel takes tens of thousands
  of page faults per step to map and zero them; with huge pages it takes a few
  hundred, and the step is faster (benchmarks/README.md). glibc reads
  `GLIBC_TUNABLES` only at start-up, so the experiments' entry points call
  this first: if the tunable is missing it re-executes the same command line
  with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` added (the kernel still
  decides, following /sys/kernel/mm/transparent_hugepage). It does nothing off
  Linux, with a libc other than glibc >= 2.35, when the tunable is already
  set, or with `JAXMETA_HUGE_PAGES=0` in the environment.
  """
  if os.environ.get('JAXMETA_HUGE_PAGES', '1') == '0':
    return
  if os.environ.get(_REEXEC_MARKER) or sys.platform != 'linux':
    return
  libc, version = platform.libc_ver()
  try:
    major_minor = tuple(int(v) for v in version.split('.')[:2])
  except ValueError:
    return
  if libc != 'glibc' or major_minor < (2, 35):
    return
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables:
    return
  env = dict(
    os.environ,
    **{
      _REEXEC_MARKER: '1',
      'GLIBC_TUNABLES': ':'.join(
        t for t in (tunables, HUGE_PAGES_TUNABLE) if t
      ),
    },
  )
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
