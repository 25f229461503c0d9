"""SIGKILL at many points of a run, rerun each time: the same result, bit for bit."""

import json
import os
import signal

import chex
import numpy as np
import pytest

from experiments import build
from support import forked
from support import kill_driver

# Kill points of the successive runs of one workdir: the N-th file-system
# event of that run (each resumed run counts from its own start). An
# uninterrupted run has about 290 events, most of them inside checkpoint
# saves (temporary directories, array and metadata files, the final rename).
_KILL_POINTS = (7, 23, 41, 58, 96, 150, 33, 211, 120)


def _runs(*runs):
  """`(exit status, output)` of each `(workdir, kill_at)` run, in order.

  One driver process forks each run in turn: every run is a process of its
  own, killed or not, as if started from the command line.
  """
  args = [str(a) for run in runs for a in run]
  return forked.launch('kill_driver.py', *args, timeout=300 * len(runs))


def _final_state(workdir):
  built = build.Run(kill_driver.config(), str(workdir), None, None, 'train')
  state, _ = built.checkpoints.restore(built.init_state(), 6)
  built.checkpoints.close()
  return state


@pytest.mark.slow
def test_every_kill_leaves_a_workdir_that_resumes_to_the_same_result(tmp_path):
  workdir = tmp_path / 'killed'
  (straight, straight_out), *killed_runs, (final, final_out) = _runs(
    (tmp_path / 'straight', 0),
    *((workdir, kill_at) for kill_at in _KILL_POINTS),
    (workdir, 0),
  )
  assert straight == 0, straight_out[-2000:]
  total = int(straight_out.split('EVENTS ')[-1].split()[0])
  assert total > max(_KILL_POINTS)
  killed = 0
  for status, output in killed_runs:
    if status == -signal.SIGKILL:
      killed += 1
    else:  # The run finished before its kill point.
      assert status == 0, output[-2000:]
  assert killed >= len(_KILL_POINTS) - 2
  assert final == 0, final_out[-2000:]
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
