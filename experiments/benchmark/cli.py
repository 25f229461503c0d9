"""The benchmark's flags and `main` (`python -m experiments.benchmark`)."""

import sys
from typing import Sequence

from absl import flags

import jaxmeta
from .. import common
from . import checks
from . import configs
from . import run

FLAGS = flags.FLAGS
_FULL, _TINY = configs.SIZES['full'], configs.SIZES['tiny']
# Every setting of `configs.settings` is the flag of the same name; its
# default there is the flag's, its type the flag's type.
HELP = {
  'out': 'Output directory.',
  'configs': 'Configurations to run (default: those of --size). Known: '
  f'{sorted(configs.PRESETS)}.',
  'algorithms': f'Algorithms to run, any of {", ".join(configs.ALGORITHMS)}.',
  'implementations': 'Implementations to run, any of '
  f'{", ".join(configs.IMPLEMENTATIONS)}.',
  'conv_impls': 'jaxmeta conv implementations to time: any of '
  f'{", ".join(jaxmeta.models.CONV_IMPLS)}; '
  f"'all' (or 'both') = {','.join(configs.ALL_CONV_IMPLS)}.",
  'num_steps': f'Timed meta-steps per row (default {_FULL["num_steps"]}; '
  f'{_TINY["num_steps"]} at --size=tiny).',
  'warmup_steps': 'Untimed steps after the first (default '
  f'{_FULL["warmup_steps"]}; {_TINY["warmup_steps"]} at --size=tiny).',
  'max_seconds_per_row': 'If > 0, time fewer than --num_steps steps (at '
  'least 3) where the warm-up says they would take longer than this; the '
  'row records the count.',
  'timing_precision': 'Matmul precision of the TIMED steps on both sides: '
  'highest (float32, no TF32: what the cross-check uses) or default (JAX '
  'default precision; TF32 allowed in torch on CUDA).',
  'check_tol': 'Largest relative error of the float32 meta-gradient against '
  'the reference, per parameter tensor (see `checks.verdict` for the '
  'float64 rule).',
  'float64_check': 'Also compute the meta-gradient in float64 (jaxmeta, and '
  "every PyTorch implementation): reports each float32 result's error "
  'against it, and fails a PyTorch implementation whose float64 gradient '
  f"differs from jaxmeta's by more than {checks.FLOAT64_TOL:g}.",
  'task_chunk_size': 'jaxmeta: tasks vmapped at once in the timed meta-step '
  'and its cross-check; 0: jaxmeta.default_task_chunk_size (one task at a '
  'time on CPUs, the whole meta-batch on accelerators).',
  'interleave_block': 'Timed steps of one implementation per turn (each '
  'turn starts with one untimed step); see `timing.time_interleaved`.',
  'seed': 'Seed of the initial weights and the batch.',
  'matmul_peak_size': 'Side n of the square matmul timed at the start (XLA '
  "and PyTorch, float32 and bfloat16) for the peak that each row's "
  f'achieved GFLOP/s is a fraction of (default {_FULL["matmul_peak_size"]}; '
  f'{_TINY["matmul_peak_size"]} at --size=tiny); 0: no peak.',
  'torch_device': "'auto' (cuda if available), 'cpu' or 'cuda'.",
  'debug_perturb_check': 'Testing aid: torch implementations whose '
  'gradients are scaled by 1 + 1e-3 before the cross-check, which must '
  'then fail.',
}
# Settings whose flag has no default: --size's.
BY_SIZE = ('configs', 'num_steps', 'warmup_steps', 'matmul_peak_size')


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
  flags.DEFINE_enum(
    'size',
    'full',
    list(configs.SIZES),
    'full: the paper configurations; tiny: CI shapes.',
    **fv,
  )
  defaults = configs.settings()
  for name, help_ in HELP.items():
    value = defaults[name]
    default = None if name in BY_SIZE else value
    if name == 'timing_precision':
      flags.DEFINE_enum(name, value, configs.PRECISIONS, help_, **fv)
    elif isinstance(value, bool):
      flags.DEFINE_bool(name, value, help_, **fv)
    elif isinstance(value, int):
      lowest = configs.LOWER_BOUNDS[name][0]
      flags.DEFINE_integer(name, default, help_, lower_bound=lowest, **fv)
    elif isinstance(value, float):
      flags.DEFINE_float(name, value, help_, lower_bound=0.0, **fv)
    elif isinstance(value, tuple):
      flags.DEFINE_list(name, list(default or ()), help_, **fv)
    else:
      required = name == 'out'
      flags.DEFINE_string(name, value or None, help_, required=required, **fv)
  for name in ('configs', 'algorithms', 'implementations', 'conv_impls'):
    problem = lambda values, name=name: configs.name_problem(name, values)
    flags.register_validator(name, _validator(problem), **fv)
  flags.register_validator('out', _validator(configs.out_problem), **fv)


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
  """The program, once the flags are parsed: exits 1 if a check failed."""
  del argv
  # The settings: --size's defaults, then the flags given.
  values = {name: flag_values[name].value for name in HELP}
  values['configs'] = values['configs'] or None  # [] is --size's.
  try:
    _, ok = run.run_benchmark(configs.settings(flag_values.size, **values))
  except configs.BenchmarkError as e:
    common.exit_with_one_line(e)
  if not ok:
    print(
      'FAILED: a meta-gradient cross-check failed or an implementation '
      'raised; see benchmark.json.',
      file=sys.stderr,
    )
    sys.exit(1)
