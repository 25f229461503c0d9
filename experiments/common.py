"""Pieces shared by the experiment modules: command line, workdirs, metrics,
results.

A workdir is an `etils.epath.Path`: local, or remote (`gs://` with gcsfs
installed); `file://` URIs name local directories.
"""

import contextlib
import errno
import fcntl
import json
import os
import platform
import socket
import struct
import sys
import time
from typing import Any, Iterator, Mapping

from absl import flags
from absl import logging
from etils import epath
import jax
import numpy as np


def check_command_line(argv, *required_flags: str) -> None:
  """The start of every program's `main`: no stray arguments, the required
  flags given, library logs below errors silenced."""
  if len(argv) > 1:
    exit_with_one_line(
      f'Unexpected arguments: {argv[1:]} (flags are '
      '--name=value; --helpfull lists them).'
    )
  for name in required_flags:
    if not flags.FLAGS[name].value:
      exit_with_one_line(f'--{name} is required.')
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


class OneLineError(RuntimeError):
  """A fault of the run's surroundings (a busy workdir, a full disk), its
  message naming the problem and the fix: printed as one line."""


class DiskFullError(OneLineError):
  """The disk (or quota) of the workdir ran out while the run was writing."""


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ('No space left on device', 'Disk quota exceeded')


def error_chain(error: BaseException | None) -> Iterator[BaseException]:
  """`error`, then the error it was raised from or during, and so on."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or an error it was raised from, is a full disk.

  Orbax and TensorStore re-raise the `OSError` of a write as their own
  types, sometimes with only its text, so the chain and the text are read.
  """
  return any(
    (isinstance(e, OSError) and e.errno in _DISK_FULL)
    or any(text in str(e) for text in _DISK_FULL_TEXT)
    for e in error_chain(error)
  )


def workdir_path(workdir: 'str | os.PathLike') -> epath.Path:
  """The path of a `--workdir`: `file://` URIs become local paths, a local
  relative path stays relative; `gs://` and the like stay remote."""
  if isinstance(workdir, str) and workdir.startswith('file://'):
    workdir = workdir[len('file://') :]
  return epath.Path(workdir)


def is_local(path: epath.Path) -> bool:
  """Whether `path` is on this machine's file system (not `gs://` etc.)."""
  return '://' not in os.fspath(path)


def write_json(path: 'str | os.PathLike', obj: Any) -> None:
  """Writes JSON atomically (`write_text`)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  write_text(path, json.dumps(to_python(obj), indent=2, sort_keys=True) + '\n')


def write_text(path: epath.Path, text: str) -> None:
  """Writes `text` atomically: a crash never leaves a half-written file.

  Written to a temporary file beside it, then renamed over it (on a remote
  store a single object write, which is atomic by itself).
  """
  if not is_local(path):
    path.write_text(text)
    return
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  try:
    tmp.write_text(text)
    tmp.replace(path)
  finally:
    if tmp.exists():
      tmp.unlink()


LOCK_FILE = 'lock'


@contextlib.contextmanager
def locked_workdir(
  workdir: epath.Path, exclusive: bool = True
) -> Iterator[None]:
  """Holds `workdir/lock` for a run (`exclusive`) or an evaluation (shared).

  An advisory `flock`: the kernel releases it however the process ends (kill
  -9 included), so no stale lock is left. The file names the holder (pid,
  host, start time) for the refused run's message. Remote and read-only
  workdirs are not locked: flock is local.

  Raises:
    OneLineError: another run holds the lock.
  """
  if not is_local(workdir):
    yield
    return
  path = os.path.join(os.fspath(workdir), LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  except OSError:
    if exclusive:
      raise
    try:  # A read-only workdir: a shared lock needs only reading.
      fd = os.open(path, os.O_RDONLY)
    except OSError:
      yield  # Nothing to lock; evaluating it writes nothing to guard.
      return
  try:
    try:
      fcntl.flock(
        fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
      )
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors='replace').strip()
      raise OneLineError(
        f'--workdir={workdir} is in use by another run '
        f'({holder or "an evaluation of it"}). Fix: wait for it to finish '
        'or stop it, or use another --workdir.'
      ) from None
    if exclusive:
      started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())
      record = f'pid {os.getpid()} on {socket.gethostname()}, since {started}'
      os.ftruncate(fd, 0)
      os.pwrite(fd, record.encode(), 0)
    try:
      yield
    finally:
      if exclusive:  # The record names a holder only while one holds it.
        os.ftruncate(fd, 0)
  finally:
    os.close(fd)  # Releases the lock.


class MetricWriter:
  """Scalars to `workdir/metrics.jsonl` and a TensorBoard event file.

  The events are tensorboardX's protos in TFRecord framing (no TensorFlow
  needed), written synchronously through `epath`: the file can live in a
  remote workdir, and a failing write raises in the caller's thread.
  `tensorboard --logdir WORKDIR/tensorboard` shows them. On a remote store
  (`gs://`), which has no appends, metrics.jsonl is rewritten whole at each
  write and the event file appears when closed.
  """

  def __init__(self, workdir: 'str | os.PathLike'):
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._path = workdir / 'metrics.jsonl'
    self._lines = None
    if is_local(workdir):
      self._jsonl = open(self._path, 'a')
    else:
      self._jsonl = None
      self._lines = self._path.read_text() if self._path.exists() else ''
    logdir = workdir / 'tensorboard'
    logdir.mkdir(parents=True, exist_ok=True)
    # TensorBoard's naming, made unique: a rerun within the same second
    # must not overwrite the file of the run before.
    name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}'
    path, n = logdir / name, 0
    while path.exists():
      n += 1
      path = logdir / f'{name}.{n}'
    self._events = path.open('wb')
    self._add_event(file_version='brain.Event:2')

  def _add_event(self, **fields) -> None:
    """Appends an `Event` proto of `fields` to the event file."""
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    data = event_pb2.Event(wall_time=time.time(), **fields).SerializeToString()
    header = struct.pack('<Q', len(data))
    self._events.write(
      header
      + struct.pack('<I', masked_crc32c(header))
      + data
      + struct.pack('<I', masked_crc32c(data))
    )

  def write(self, step: int, scalars: Mapping[str, Any], prefix: str = ''):
    from tensorboardX import summary

    scalars = {f'{prefix}{k}': float(np.asarray(v)) for k, v in scalars.items()}
    line = json.dumps({'step': int(step), **scalars}) + '\n'
    if self._jsonl is not None:
      self._jsonl.write(line)
      self._jsonl.flush()
    else:
      self._lines += line
      self._path.write_text(self._lines)
    for name, value in scalars.items():
      self._add_event(summary=summary.scalar(name, value), step=int(step))
    self._events.flush()

  def write_hparams(
    self, step: int, hparams: Mapping[str, Any], metrics: Mapping[str, float]
  ) -> None:
    """Writes `hparams` and final `metrics` for TensorBoard's HParams tab.

    Args:
      step: the step the metrics belong to.
      hparams: flat `{name: value}`; values that are not a number, string or
        bool are written as their JSON text.
      metrics: `{tag: value}` of scalars written with `write` (the HParams
        tab reads a session's metrics from its scalars of those tags).
    """
    from tensorboardX import summary

    plain = {
      name: value
      if isinstance(value, (bool, int, float, str))
      else json.dumps(to_python(value))
      for name, value in hparams.items()
    }
    metrics = {k: float(np.asarray(v)) for k, v in metrics.items()}
    for part in summary.hparams(plain, metrics):
      self._add_event(summary=part, step=int(step))
    self._events.flush()

  def close(self):
    """Closes the files; a failure to flush them (a full disk) is raised,
    and the files are closed all the same."""
    try:
      if self._jsonl is not None:
        self._jsonl.close()
    finally:
      self._events.close()


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with every error as one line (its last line, which
  names the problem), without the `--help` dump."""
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
  """Ends the program with `Error: <message>` on stderr, nothing more."""
  sys.stdout.flush()
  print(f'Error: {error}', file=sys.stderr)
  sys.exit(code)


HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'
_REEXEC_MARKER = 'JAXMETA_REEXECUTED'


def reexec_with_huge_pages() -> None:
  """Restarts this program with glibc's malloc on transparent huge pages.

  XLA:CPU allocates a compiled program's temporary buffers afresh on every
  call; with huge pages mapping them takes far fewer page faults, and the
  step is faster (benchmarks/README.md). glibc reads `GLIBC_TUNABLES` only at
  start-up, so the entry points call this first: it re-executes the command
  line with `glibc.malloc.hugetlb=1` added. It does nothing off Linux, with
  a libc other than glibc >= 2.35, when the tunable is already set, or with
  `JAXMETA_HUGE_PAGES=0` in the environment.
  """
  libc, version = platform.libc_ver()
  try:
    major_minor = tuple(int(v) for v in version.split('.')[:2])
  except ValueError:
    return
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if (
    os.environ.get('JAXMETA_HUGE_PAGES', '1') == '0'
    or os.environ.get(_REEXEC_MARKER)
    or sys.platform != 'linux'
    or libc != 'glibc'
    or major_minor < (2, 35)
    or 'glibc.malloc.hugetlb' in tunables
  ):
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


class RunError(RuntimeError):
  """A run that cannot go on: a non-finite step, nothing to test."""
