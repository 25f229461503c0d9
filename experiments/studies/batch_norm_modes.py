r"""The batch-norm modes side by side, each scored both ways.

  python -m experiments.studies.batch_norm_modes --workdir=/tmp/bn_modes \
      --output_dir=benchmarks/batch_norm

trains the main job once per batch-norm mode (`jaxmeta.models.norms.MODES`)
for 5-way and 20-way 1-shot (1,000 and 150 iterations: a 20-way iteration
costs about four 5-way ones), and tests each on the same 600 test tasks
twice: all queries of a task scored together, and each alone. Writes
`results.json` and `table.md` to `--output_dir`; a finished run in the
workdir is reused.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from absl import app
from absl import flags
import ml_collections

from .. import common
from ..main import USER_ERRORS
from ..configs import default
from . import compare
from jaxmeta.models import norms


# What a run's results.json gives each (ways, mode) of the study.
RESULTS = (
  'test_accuracy test_ci95 test_accuracy_alone test_ci95_alone '
  'num_test_tasks iterations train_seconds eval_inner_steps'
).split()


def mode_config(
  mode: str,
  ways: int,
  iterations: int,
  base: ml_collections.ConfigDict | None = None,
) -> ml_collections.ConfigDict:
  """`base` (default: the main job) in batch-norm `mode`, `ways`-way,
  `iterations` meta-iterations (the learning rate decays over them)."""
  config = (
    default.get_config() if base is None else base.copy_and_resolve_references()
  )
  config.update(
    batch_norm=mode,
    ways=ways,
    num_iterations=iterations,
    eval_every=max(1, iterations // 2),
    checkpoint_every=max(1, iterations // 2),
    log_every=50,
  )
  return config


def run_modes(
  modes: Sequence[str],
  iterations: dict[int, int],
  workdir: str,
  progress: bool = False,
  base: ml_collections.ConfigDict | None = None,
) -> dict[str, Any]:
  """Trains and tests every (ways, mode); `iterations` maps ways to
  meta-iterations, `base` is the shared config (default: the main job's).
  Returns `{'<ways>-way': {mode: {...}}}`."""
  out = {}
  for ways, steps in iterations.items():
    rows = out.setdefault(f'{ways}-way', {})
    for mode in modes:
      results = compare.train_or_read(
        mode_config(mode, ways, steps, base),
        os.path.join(workdir, f'{ways}way_{mode}'),
        progress,
        f'{ways}-way 1-shot, {mode}: {steps} iterations',
      )
      rows[mode] = {k: results[k] for k in RESULTS}
  return out


def table(results: dict[str, Any]) -> str:
  """The results as a Markdown table: tasks by number of ways, modes in
  `norms.MODES` order, whatever the order of `results` (a JSON file read
  back has its keys sorted as strings)."""
  lines = [
    '| task | batch norm | all queries together | each query alone | '
    'iterations |',
    '| --- | --- | --- | --- | --- |',
  ]
  order = lambda m: (norms.MODES.index(m) if m in norms.MODES else 99, m)
  for task in sorted(results, key=lambda t: int(t.split('-')[0])):
    rows = results[task]
    for mode in sorted(rows, key=order):
      r = rows[mode]
      lines.append(
        f'| {task} 1-shot | {mode} | '
        f'{100 * r["test_accuracy"]:.1f}% +- {100 * r["test_ci95"]:.1f}% | '
        f'{100 * r["test_accuracy_alone"]:.1f}% +- '
        f'{100 * r["test_ci95_alone"]:.1f}% | {r["iterations"]} |'
      )
  return '\n'.join(lines) + '\n'


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the flags (only when run as a program)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('workdir', None, 'Where the runs go.', **fv)
  flags.DEFINE_string(
    'output_dir', None, 'Where results.json and table.md go.', **fv
  )
  flags.DEFINE_list('modes', list(norms.MODES), 'Batch-norm modes.', **fv)
  flags.DEFINE_integer(
    'iterations_5way', 1000, 'Meta-iterations of the 5-way runs.', **fv
  )
  flags.DEFINE_integer(
    'iterations_20way',
    150,
    'Meta-iterations of the 20-way runs (0: none).',
    **fv,
  )


def main(argv, flag_values: flags.FlagValues = FLAGS) -> None:
  """The program, once the flags are parsed."""
  compare.check_command_line(argv, flag_values, 'modes', norms.MODES)
  if flag_values.iterations_5way < 1 or flag_values.iterations_20way < 0:
    common.exit_with_one_line(
      '--iterations_5way must be >= 1 and --iterations_20way >= 0.'
    )
  iterations = {5: flag_values.iterations_5way}
  if flag_values.iterations_20way:
    iterations[20] = flag_values.iterations_20way
  try:
    results = run_modes(flag_values.modes, iterations, flag_values.workdir)
    output_dir = flag_values.output_dir or flag_values.workdir
    common.write_json(os.path.join(output_dir, 'results.json'), results)
    text = table(results)
    with open(os.path.join(output_dir, 'table.md'), 'w') as f:
      f.write(text)
    print(text, end='')
  except USER_ERRORS as e:  # A busy workdir, a full disk...: one line.
    common.exit_with_one_line(e)


if __name__ == '__main__':
  define_flags()
  app.run(main)
