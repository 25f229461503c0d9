"""Validation's program against the test's, in one process.

Validation chooses a checkpoint by the last inner step's score
(`Evaluator(..., by_step=False)`, `jaxmeta.algorithms.scoring_last_step`);
the test also scores the queries after every step and each query alone
(`Evaluator(..., alone=True)`), the program validation ran before. For each
`--configs` entry (a preset and overrides, as on the command line), both
score the same `--tasks` validation tasks under the same initial
parameters, in alternating turns, `--rounds` times, after a compiling call;
prints tasks per second and writes them to `--out`.

    python benchmarks/cpu/validation_speed.py --rounds=3 --tasks=100 \
        --out=benchmarks/cpu/validation_speed.json
"""

import json
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from jaxmeta.data import episodes
from experiments import build
from experiments import cli
from experiments import evaluation

_CONFIGS = flags.DEFINE_list(
  'configs',
  [
    'maml_omniglot:5w1s',
    'protonet_omniglot:20w1s --config.batch_norm=support',
  ],
  'Presets, each with its overrides after spaces.',
)
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Turns of each program.')
_TASKS = flags.DEFINE_integer('tasks', 100, 'Validation tasks per turn.')
_OUT = flags.DEFINE_string('out', None, 'JSON file for the results.')


def _time(evaluator, params, data, keys) -> float:
  start = time.perf_counter()
  values = evaluator(params, data, keys)[0]
  assert np.all(np.isfinite(values))
  return keys.shape[0] / (time.perf_counter() - start)


def main(argv):
  del argv
  rows = []
  for entry in _CONFIGS.value:
    preset, *overrides = entry.split()
    _, overrides = cli.split_overrides(['prog', *overrides])
    config = cli.load(preset, overrides)
    run = build.Run(config, tempfile.mkdtemp(), None, None, 'train')
    params = run.init_state().merged_params()
    data = run.load('val')
    keys = episodes.eval_task_keys(config.eval_seed + 1, _TASKS.value)
    programs = {
      'validation (last step)': evaluation.Evaluator(
        run.learner, run.family, config, run.mesh, by_step=False
      ),
      'test (every step, alone)': evaluation.Evaluator(
        run.learner, run.family, config, run.mesh, alone=True
      ),
    }
    chunk = keys[: config.eval_batch_size]
    for evaluator in programs.values():  # Compiles.
      evaluator(params, data, chunk)
    speeds = {name: [] for name in programs}
    for turn in range(_ROUNDS.value):
      order = list(programs) if turn % 2 == 0 else list(programs)[::-1]
      for name in order:
        speeds[name].append(_time(programs[name], params, data, keys))
    row = {
      'config': entry,
      'eval_inner_steps': config.eval_inner_steps,
      'tasks': _TASKS.value,
      'tasks_per_second': {k: float(np.median(v)) for k, v in speeds.items()},
      'turns': speeds,
    }
    row['speedup'] = (
      row['tasks_per_second']['validation (last step)']
      / row['tasks_per_second']['test (every step, alone)']
    )
    print(json.dumps(row), flush=True)
    rows.append(row)
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(rows, f, indent=2)
      f.write('\n')


if __name__ == '__main__':
  app.run(main)
