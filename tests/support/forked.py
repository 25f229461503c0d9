"""Several processes from one interpreter start: workers forked after the imports.

The multi-process and kill-and-resume tests need processes of their own (a
JAX backend with its own device count, a distributed client, a SIGKILL), but
a fresh interpreter pays seconds of imports (JAX, orbax, TFDS) each time. A
test starts one driver program (`launch`); the driver imports what its
workers need, without starting a JAX backend, and forks every worker from
there (`run`): each child starts its backend afresh, as a new process would.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

_SUPPORT = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(_SUPPORT))
# The driver's last line: the exit status and output of every worker.
_MARK = 'FORKED '


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _exit_code(code) -> int:
  """The exit status `sys.exit(code)` gives a process."""
  if code is None:
    return 0
  return code if isinstance(code, int) else 1


def run(workers, timeout):
  """Runs every callable of `workers` in a forked child, all at once.

  Returns `[(status, output)]` in the order of `workers`: the exit status
  (0 when the callable returns, `-N` when signal N ended the child) and what
  the child wrote to stdout and stderr. Children still running after
  `timeout` seconds are killed (status `-9`).
  """
  from jax._src import xla_bridge

  # A forked JAX backend (its threads, devices, clients) would be broken.
  assert not xla_bridge.backends_are_initialized()
  sys.stdout.flush()
  sys.stderr.flush()
  children = []
  for worker in workers:
    log = tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # The child: run, then exit without returning to the caller.
      code = 1
      try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        worker()
        code = 0
      except SystemExit as e:
        code = _exit_code(e.code)
      except BaseException:
        traceback.print_exc()
      finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    children.append((pid, log))
  deadline = time.monotonic() + timeout
  statuses = {}
  while len(statuses) < len(children):
    for pid, _ in children:
      if pid not in statuses:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
          statuses[pid] = os.waitstatus_to_exitcode(status)
    if time.monotonic() > deadline:
      for pid, _ in children:
        if pid not in statuses:
          os.kill(pid, signal.SIGKILL)
          os.waitpid(pid, 0)
          statuses[pid] = -signal.SIGKILL
    time.sleep(0.05)
  results = []
  for pid, log in children:
    log.seek(0)
    results.append((statuses[pid], log.read().decode(errors='replace')))
    log.close()
  return results


def report(results):
  """Prints the driver's result line, read back by `launch`."""
  print(_MARK + json.dumps(results), flush=True)


def launch(script, *args, timeout, env=None):
  """Runs `python tests/support/SCRIPT ARGS...` (a driver calling `report`) once.

  Returns what the driver reported. The driver and its workers are one
  process group, killed as a whole if they take more than `timeout` seconds,
  so that a hang fails the test instead of stalling the suite. `env`: the
  environment (default: this one's), with the repository on `PYTHONPATH`.
  """
  env = dict(os.environ if env is None else env)
  env['PYTHONPATH'] = os.pathsep.join(
    [_REPO] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
  )
  driver = subprocess.Popen(
    [sys.executable, os.path.join(_SUPPORT, script), *(str(a) for a in args)],
    cwd=_REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  try:
    out, err = driver.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(driver.pid, signal.SIGKILL)
    out, err = driver.communicate()
    raise AssertionError(
      f'{script} did not finish within {timeout} s:\n{out[-4000:]}{err[-4000:]}'
    ) from None
  assert driver.returncode == 0 and _MARK in out, (out + err)[-4000:]
  return json.loads(out.split(_MARK)[-1])
