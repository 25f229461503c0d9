r"""Every method on equal terms: the same tasks, backbone and training time.

  python -m experiments.studies.compare --workdir=/tmp/compare \
      --output_dir=benchmarks/methods --budget_s=300

trains each method of `METHODS` with its own recipe (`compare_recipes`) on
the main job's data and backbone (Omniglot 5-way 1-shot) for the same
training time, then tests each on the main job's 600 test tasks. The budget
becomes `budget_s * steps_per_second` iterations, the speed measured on the
compiled step first, so that a busy machine changes how long the comparison
takes, not what it trains (MAML++ is timed in its slowest phase, so it
trains somewhat less). Writes `results.json` (per method: test accuracy and
95% CI, iterations, training seconds, the validation curve, the config) and
`comparison.png` to `--output_dir`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections

from .. import common
from ..main import USER_ERRORS
from .. import build
from .. import train
from . import compare_recipes


# The methods compared, each with its recipe (`compare_recipes`).
METHODS = compare_recipes.PRESETS
# What a run's results.json gives each method of the study.
RESULTS = (
  'test_accuracy test_ci95 num_test_tasks iterations config train_seconds '
  'eval_inner_steps'
).split()


def check_command_line(
  argv, flag_values: flags.FlagValues, what: str, known: Sequence[str]
) -> None:
  """Exits with one line on a stray argument, no --workdir, or a name in list
  flag `what` not in `known`; then silences library logs below errors."""
  if len(argv) > 1 or not flag_values.workdir:
    common.exit_with_one_line(
      '--workdir is required and flags are --name=value; --helpfull lists them.'
    )
  unknown = sorted(set(flag_values[what].value) - set(known))
  if unknown:
    common.exit_with_one_line(
      f'Unknown {what} {unknown}; choose from {list(known)}.'
    )
  logging.set_verbosity(min(logging.get_verbosity(), logging.ERROR))


def train_or_read(
  config: ml_collections.ConfigDict, run_dir: str, progress: bool, what: str
) -> dict[str, Any]:
  """The results of the finished run in `run_dir`, else of training and
  testing `config` there (after printing `what`)."""
  path = os.path.join(run_dir, 'results.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  print(what)
  return train.train_and_evaluate(config, run_dir, progress=progress)


def method_config(
  method: str, base: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
  """The main job's config (or `base`) with `method`'s recipe."""
  return compare_recipes.get_config(method, base)


def _schedule(c: ml_collections.ConfigDict, iterations: int) -> None:
  """Sets the run's length and what scales with it."""
  c.num_iterations = iterations
  c.eval_every = c.checkpoint_every = max(1, iterations // 5)
  if c.algorithm == 'maml_plus_plus':
    c.method = ml_collections.ConfigDict(
      {
        'msl_iterations': max(1, iterations // 15),
        'first_order_iterations': iterations // 3,
      }
    )


def steps_per_second(
  config: ml_collections.ConfigDict, min_seconds: float = 5.0
) -> float:
  """Compiled meta-steps per second of `config`: 2 warm-up steps, then at
  least 3 and `min_seconds` of timed ones."""
  with tempfile.TemporaryDirectory() as workdir:
    run = build.Run(config, workdir, None, None, 'train')
    step = build.make_train_step(
      run.learner, run.optimizer, run.family, config, run.mesh
    )
    state, data = run.init_state(), run.load('train')
    for _ in range(2):
      state, _ = step(state, data)
    jax.block_until_ready(state)
    start, count = time.perf_counter(), 0
    while count < 3 or time.perf_counter() - start < min_seconds:
      state, _ = step(state, data)
      count += 1
      if count % 5 == 0:
        jax.block_until_ready(state)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    run.checkpoints.close()
  return count / seconds


def _curve(workdir: str, rate: float) -> list[list[float]]:
  """[[training seconds, validation accuracy], ...] of a finished run."""
  points = []
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      if 'val/accuracy' in record:
        points.append([record['step'] / rate, record['val/accuracy']])
  return points


def compare(
  methods: Sequence[str],
  budget_s: float,
  workdir: str,
  base: ml_collections.ConfigDict | None = None,
  calibration_s: float = 5.0,
  progress: bool = False,
  overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
  """Trains and tests every method for the same training time.

  Args:
    methods: names in `METHODS`.
    budget_s: training seconds per method.
    workdir: runs go to `workdir/<method>` (an existing finished run is
      reused: its results are read back).
    base: the shared config (default: the main job's); each method's recipe
      is applied on top.
    calibration_s: seconds of timed steps to measure a method's speed.
    progress: progress bars.
    overrides: `{method: {field: value}}` applied after the recipe (e.g. a
      smaller `train_ways` for a dataset with fewer classes).

  Returns:
    `{'budget_s', 'methods': {method: {...}}}` (see the module docstring).
  """
  out = {'budget_s': budget_s, 'backend': jax.default_backend(), 'methods': {}}
  configs, rates = {}, {}
  # Every speed is measured first, one method after another, so that all
  # are timed in the same conditions (and before the long training runs).
  calibration_path = os.path.join(workdir, 'calibration.json')
  if os.path.exists(calibration_path):
    with open(calibration_path) as f:
      rates = json.load(f)
  for method in methods:
    config = method_config(method, base)
    config.update((overrides or {}).get(method, {}))
    configs[method] = config
    if method not in rates:
      rates[method] = steps_per_second(config, calibration_s)
      print(f'{method}: {rates[method]:.2f} steps/s')
      common.write_json(calibration_path, rates)
  for method in methods:
    config, rate = configs[method], rates[method]
    method_dir = os.path.join(workdir, method)
    _schedule(config, max(1, int(budget_s * rate)))
    results = train_or_read(
      config,
      method_dir,
      progress,
      f'{method}: {config.num_iterations} iterations',
    )
    out['methods'][method] = {
      **{k: results[k] for k in RESULTS},
      'calibrated_steps_per_second': rate,
      'val_curve': _curve(method_dir, rate),
      'recipe': compare_recipes.RECIPES[method][0],
    }
  return out


def plot(results: dict[str, Any], path: str | None = None):
  """Test accuracy with 95% CIs, and validation accuracy against training
  time; saved to `path` if given. Returns the figure."""
  import matplotlib.pyplot as plt

  methods = list(results['methods'])
  fig, (bars, curves) = plt.subplots(1, 2, figsize=(12, 4.2))
  means = [100 * results['methods'][m]['test_accuracy'] for m in methods]
  cis = [100 * results['methods'][m]['test_ci95'] for m in methods]
  # The axis starts at chance (one in `ways`), where a method learned nothing.
  ways = {results['methods'][m]['config']['ways'] for m in methods}
  chance = 100 / min(ways)
  bars.barh(
    methods, [m - chance for m in means], left=chance, xerr=cis, capsize=3
  )
  bars.invert_yaxis()
  bars.set_xlim(chance, 100)
  bars.set_xlabel(
    f'test accuracy (%), 600 tasks, 95% CI; the axis starts at chance, '
    f'{chance:.0f}%'
  )
  for y, (mean, ci) in enumerate(zip(means, cis)):
    bars.text(mean + ci + 0.3, y, f'{mean:.1f}', va='center', fontsize=8)
  for m in methods:
    curve = results['methods'][m]['val_curve']
    if curve:
      t, acc = zip(*curve)
      curves.plot(t, [100 * a for a in acc], marker='o', ms=3, label=m)
  curves.set_xlabel('training time (s, compiled steps)')
  curves.set_ylabel('validation accuracy (%)')
  curves.legend(fontsize=7, ncol=2)
  curves.grid(alpha=0.3)
  fig.suptitle(
    f'Omniglot 5-way 1-shot, {results["budget_s"]:.0f} s of training each '
    f'({results["backend"]})'
  )
  fig.tight_layout()
  if path:
    fig.savefig(path, dpi=110)
  return fig


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the flags (only when run as a program: absl flags are global)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('workdir', None, 'Where the runs go, one a method.', **fv)
  flags.DEFINE_string(
    'output_dir', None, 'Where results.json and comparison.png go.', **fv
  )
  flags.DEFINE_float('budget_s', 300.0, 'Training seconds per method.', **fv)
  flags.DEFINE_list('methods', list(METHODS), 'Methods to compare.', **fv)


def main(argv, flag_values: flags.FlagValues = FLAGS) -> None:
  """The program, once the flags are parsed."""
  check_command_line(argv, flag_values, 'methods', METHODS)
  if flag_values.budget_s <= 0:
    common.exit_with_one_line('--budget_s must be > 0.')
  try:
    results = compare(
      flag_values.methods, flag_values.budget_s, flag_values.workdir
    )
    output_dir = flag_values.output_dir or flag_values.workdir
    common.write_json(os.path.join(output_dir, 'results.json'), results)
    plot(results, os.path.join(output_dir, 'comparison.png'))
    for method, r in results['methods'].items():
      print(
        f'{method:>20}: {100 * r["test_accuracy"]:.1f}% +- '
        f'{100 * r["test_ci95"]:.1f}% ({r["iterations"]} iterations)'
      )
  except USER_ERRORS as e:  # A busy workdir, a full disk...: one line.
    common.exit_with_one_line(e)


if __name__ == '__main__':
  define_flags()
  app.run(main)
