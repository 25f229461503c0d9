"""SIGKILL at many points of a run, rerun each time: the same result, bit for bit."""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys

import chex
import numpy as np

from experiments import train
import kill_driver  # tests/ is on sys.path under pytest.

_DRIVER = Path(__file__).resolve().parent / 'kill_driver.py'
# Kill points of the successive runs of one workdir: the N-th file-system
# event of that run (each resumed run counts from its own start). An
# uninterrupted run has about 290 events, most of them inside checkpoint
# saves (temporary directories, array and metadata files, the final rename).
_KILL_POINTS = (7, 23, 41, 58, 96, 150, 33, 211, 120)


def _run(workdir, kill_at):
  return subprocess.run(
    [sys.executable, str(_DRIVER), str(workdir), str(kill_at)],
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )


def _final_state(workdir):
  built = train._Run(kill_driver.config(), str(workdir), None, None, 'train')
  state, _ = built.checkpoints.restore(built.init_state(), 6)
  built.checkpoints.close()
  return state


def test_every_kill_leaves_a_workdir_that_resumes_to_the_same_result(tmp_path):
  straight = _run(tmp_path / 'straight', 0)
  assert straight.returncode == 0, straight.stderr[-2000:]
  total = int(straight.stdout.split('EVENTS ')[-1])
  assert total > max(_KILL_POINTS)
  workdir = tmp_path / 'killed'
  killed = 0
  for kill_at in _KILL_POINTS:
    proc = _run(workdir, kill_at)
    if proc.returncode == -signal.SIGKILL:
      killed += 1
    else:  # The run finished before its kill point.
      assert proc.returncode == 0, proc.stderr[-2000:]
  assert killed >= len(_KILL_POINTS) - 2
  final = _run(workdir, 0)
  assert final.returncode == 0, final.stderr[-2000:]
  chex.assert_trees_all_equal(
    _final_state(tmp_path / 'straight'), _final_state(workdir)
  )
  a = json.loads((tmp_path / 'straight' / 'results.json').read_text())
  b = json.loads((workdir / 'results.json').read_text())
  assert a['test_mse'] == b['test_mse'] and a['best_step'] == b['best_step']
  records = [
    json.loads(line)['step']
    for line in (workdir / 'metrics.jsonl').read_text().splitlines()
    if 'train/loss' in line
  ]
  assert records == sorted(set(records)) and records[-1] == 6
  assert not [n for n in os.listdir(workdir / 'checkpoints') if not n.isdigit()]
  assert np.isfinite(b['test_mse'])
