"""The benchmark's flags and `main` (`python -m experiments.benchmark`)."""

import sys
from typing import Sequence

from absl import flags
import ml_collections

import jaxmeta
from .. import common
from . import checks
from . import configs
from . import run

FLAGS = flags.FLAGS
# Flags whose value is the setting of the same name (`configs.settings`).
SETTINGS = (
  'out',
  'configs',
  'algorithms',
  'implementations',
  'conv_impls',
  'num_steps',
  'warmup_steps',
  'max_seconds_per_row',
  'timing_precision',
  'check_tol',
  'float64_check',
  'task_chunk_size',
  'interleave_block',
  'seed',
  'torch_device',
  'debug_perturb_check',
)


def _validator(problem):
  """An absl validator from a `configs.*_problem` function."""

  def check(value):
    message = problem(value)
    if message:
      raise flags.ValidationError(message)
    return True

  return check


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the flags; only when run as a program, so that the experiment
  modules can be imported together (absl flags are global)."""
  fv = dict(flag_values=flag_values)
  d = configs.settings()
  names = lambda known: ', '.join(known)
  flags.DEFINE_string('out', None, 'Output directory.', required=True, **fv)
  flags.DEFINE_enum(
    'size',
    'full',
    list(configs.SIZES),
    'full: the paper configurations; tiny: CI shapes.',
    **fv,
  )
  flags.DEFINE_list(
    'configs',
    [],
    'Configurations to run (default: those of --size). Known: '
    f'{sorted(configs.PRESETS)}.',
    **fv,
  )
  for name, known in (
    ('algorithms', configs.ALGORITHMS),
    ('implementations', configs.IMPLEMENTATIONS),
  ):
    flags.DEFINE_list(
      name,
      list(known),
      f'{name.capitalize()} to run, any of {names(known)}.',
      **fv,
    )
  flags.DEFINE_list(
    'conv_impls',
    list(d.conv_impls),
    'jaxmeta conv implementations to time: any of '
    f'{names(jaxmeta.models.CONV_IMPLS)}; '
    f"'all' (or 'both') = {','.join(configs.ALL_CONV_IMPLS)}.",
    **fv,
  )
  full, tiny = configs.SIZES['full'], configs.SIZES['tiny']
  flags.DEFINE_integer(
    'num_steps',
    None,
    f'Timed meta-steps per row (default {full["num_steps"]}; '
    f'{tiny["num_steps"]} at --size=tiny).',
    lower_bound=1,
    **fv,
  )
  flags.DEFINE_integer(
    'warmup_steps',
    None,
    f'Untimed steps after the first (default {full["warmup_steps"]}; '
    f'{tiny["warmup_steps"]} at --size=tiny).',
    lower_bound=0,
    **fv,
  )
  flags.DEFINE_float(
    'max_seconds_per_row',
    d.max_seconds_per_row,
    'If > 0, time fewer than --num_steps steps (at least 3) where the '
    'warm-up says they would take longer than this; the row records the '
    'count.',
    lower_bound=0.0,
    **fv,
  )
  flags.DEFINE_enum(
    'timing_precision',
    d.timing_precision,
    configs.PRECISIONS,
    'Matmul precision of the TIMED steps on both sides: highest (float32, '
    'no TF32: what the cross-check uses) or default (JAX default precision; '
    'TF32 allowed in torch on CUDA).',
    **fv,
  )
  flags.DEFINE_float(
    'check_tol',
    d.check_tol,
    'Largest relative error of the float32 meta-gradient against the '
    'reference, per parameter tensor (see `checks.verdict` for the float64 '
    'rule).',
    lower_bound=0.0,
    **fv,
  )
  flags.DEFINE_bool(
    'float64_check',
    d.float64_check,
    'Also compute the meta-gradient in float64 (jaxmeta, and every PyTorch '
    "implementation): reports each float32 result's error against it, and "
    'fails a PyTorch implementation whose float64 gradient differs from '
    f"jaxmeta's by more than {checks.FLOAT64_TOL:g}.",
    **fv,
  )
  flags.DEFINE_integer(
    'task_chunk_size',
    d.task_chunk_size,
    'jaxmeta: tasks vmapped at once in the timed meta-step and its '
    'cross-check; 0: jaxmeta.default_task_chunk_size (one task at a time on '
    'CPUs, the whole meta-batch on accelerators).',
    lower_bound=0,
    **fv,
  )
  flags.DEFINE_integer(
    'interleave_block',
    d.interleave_block,
    'Timed steps of one implementation per turn (each turn starts with one '
    'untimed step); see `timing.time_interleaved`.',
    lower_bound=1,
    **fv,
  )
  flags.DEFINE_integer(
    'seed',
    d.seed,
    'Seed of the initial weights and the batch.',
    lower_bound=0,
    **fv,
  )
  flags.DEFINE_string(
    'torch_device',
    d.torch_device,
    "'auto' (cuda if available), 'cpu' or 'cuda'.",
    **fv,
  )
  flags.DEFINE_list(
    'debug_perturb_check',
    [],
    'Testing aid: torch implementations whose gradients are scaled by '
    '1 + 1e-3 before the cross-check, which must then fail.',
    **fv,
  )
  for name in ('configs', 'algorithms', 'implementations', 'conv_impls'):
    problem = lambda values, name=name: configs.name_problem(name, values)
    flags.register_validator(name, _validator(problem), **fv)
  flags.register_validator('out', _validator(configs.out_problem), **fv)


def settings_from_flags(
  flag_values: flags.FlagValues = FLAGS,
) -> ml_collections.ConfigDict:
  """The run's settings: `--size`'s defaults, then the flags given."""
  values = {name: flag_values[name].value for name in SETTINGS}
  values['configs'] = values['configs'] or None  # [] is --size's.
  return configs.settings(flag_values.size, **values)


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
  """The program, once the flags are parsed: exits 1 if a check failed."""
  del argv
  try:
    _, ok = run.run_benchmark(settings_from_flags(flag_values))
  except configs.BenchmarkError as e:
    common.exit_with_one_line(e)
  if not ok:
    print(
      'FAILED: a meta-gradient cross-check failed or an implementation '
      'raised; see benchmark.json.',
      file=sys.stderr,
    )
    sys.exit(1)
