"""The benchmark's presets (one model, task shape and meta-batch each) and
one run's settings (its flags), as ml_collections ConfigDicts."""

from __future__ import annotations

import math
import os
from typing import Sequence

import ml_collections

import jaxmeta


class BenchmarkError(ValueError):
  """A bad request or a missing dependency: one line, printed without a trace."""


# The algorithms with a PyTorch baseline (see torch_baselines.ALGORITHMS).
ALGORITHMS = ('maml', 'fomaml', 'reptile')
# Concrete conv implementations (`--conv_impls=all` expands to them).
ALL_CONV_IMPLS = tuple(i for i in jaxmeta.models.CONV_IMPLS if i != 'auto')
TORCH_IMPLEMENTATIONS = ('torch_loop', 'torch_func', 'torch_higher')
IMPLEMENTATIONS = ('jaxmeta',) + TORCH_IMPLEMENTATIONS
PRECISIONS = ('highest', 'default')

# name -> (ways, shots, queries per class, meta_batch (tasks per meta-step),
# inner_steps, inner_lr, input_shape (H, W, C), Conv-4 num_filters).
PRESETS = {
  'omniglot_5w1s': (5, 1, 15, 32, 1, 0.4, (28, 28, 1), 64),
  # The CPU anchor: omniglot_5w1s at meta-batch 4 (2-core CPUs).
  'omniglot_5w1s_mb4': (5, 1, 15, 4, 1, 0.4, (28, 28, 1), 64),
  'omniglot_20w1s': (20, 1, 15, 16, 5, 0.1, (28, 28, 1), 64),
  'miniimagenet_5w1s': (5, 1, 15, 4, 5, 0.01, (84, 84, 3), 32),
  # CI size: two tasks, 8 filters, two inner steps (so that second-order
  # terms through more than one step are cross-checked).
  'tiny': (5, 1, 3, 2, 2, 0.4, (28, 28, 1), 8),
}
FIELDS = (
  'ways shots queries meta_batch inner_steps inner_lr input_shape num_filters'
)
# --size -> the presets it runs, timed and untimed steps per row, the side
# of the square matmul that measures the machine's peak.
SIZES = {
  'full': dict(
    configs=('omniglot_5w1s', 'omniglot_20w1s', 'miniimagenet_5w1s'),
    num_steps=20,
    warmup_steps=2,
    matmul_peak_size=4096,
  ),
  'tiny': dict(
    configs=('tiny',), num_steps=3, warmup_steps=1, matmul_peak_size=256
  ),
}
# Settings that count something: (lowest value, what it counts).
LOWER_BOUNDS = {
  'num_steps': (1, 'the timings are medians over the timed steps'),
  'warmup_steps': (0, 'untimed steps after the first'),
  'interleave_block': (1, 'timed steps per turn'),
  'task_chunk_size': (0, '0: the default'),
  'seed': (0, 'a PRNG seed'),
  'matmul_peak_size': (0, '0: no peak measurement'),
}


def get_config(name: str) -> ml_collections.ConfigDict:
  """The preset `name` of `PRESETS`, with its Conv-4 depth and Adam rate."""
  if name not in PRESETS:
    raise BenchmarkError(name_problem('configs', [name]))
  fields = dict(zip(FIELDS.split(), PRESETS[name]))
  return ml_collections.ConfigDict(
    dict(name=name, num_blocks=4, outer_lr=1e-3, **fields)
  )


def settings(size: str = 'full', **overrides) -> ml_collections.ConfigDict:
  """One run's settings: `size`'s defaults, then `overrides` (None: keep);
  each is the flag of the same name (`cli.HELP`)."""
  c = ml_collections.ConfigDict(
    dict(
      out='',
      algorithms=ALGORITHMS,
      implementations=IMPLEMENTATIONS,
      conv_impls=('auto',),
      max_seconds_per_row=0.0,
      timing_precision='highest',
      check_tol=1e-4,
      float64_check=True,
      task_chunk_size=0,
      interleave_block=5,
      seed=0,
      torch_device='auto',
      debug_perturb_check=(),
      **SIZES[size],
    )
  )
  c.lock()  # A misspelt setting is an error, not a new field.
  for name, value in overrides.items():
    if value is not None:
      c[name] = tuple(value) if isinstance(value, list) else value
  return c


def name_problem(field: str, values: Sequence[str]) -> str | None:
  """What is wrong with the names of list setting `field`, or None."""
  known = {
    'configs': tuple(PRESETS),
    'algorithms': ALGORITHMS,
    'implementations': IMPLEMENTATIONS,
    'conv_impls': jaxmeta.models.CONV_IMPLS + ('all', 'both'),
  }[field]
  unknown = [v for v in values or () if v not in known]
  if unknown:
    return f'--{field}: unknown {unknown}; choose from {", ".join(known)}.'
  return None


def out_problem(out: str | None) -> str | None:
  """What is wrong with `--out`, or None."""
  if out and os.path.exists(out) and not os.path.isdir(out):
    return (
      f'--out={out} is an existing file; the benchmark writes a folder '
      '(benchmark.json, .md, .png). Fix: name a new or existing folder.'
    )
  return None


def check_settings(s: ml_collections.ConfigDict) -> None:
  """Refuses settings that cannot time or check anything, before any work.

  Raises:
    BenchmarkError: naming the setting, its value and the fix.
  """
  for name, (lowest, why) in LOWER_BOUNDS.items():
    value = s[name]
    if not isinstance(value, int) or value < lowest:
      raise BenchmarkError(
        f'--{name}={value} must be an integer >= {lowest} ({why}). Fix: '
        f'pass --{name}={max(lowest, 1)} or more.'
      )
  if not (math.isfinite(s.max_seconds_per_row) and s.max_seconds_per_row >= 0):
    raise BenchmarkError(
      f'--max_seconds_per_row={s.max_seconds_per_row} must be a finite '
      'number >= 0 (0: no limit). Fix: pass --max_seconds_per_row=0.'
    )
  if not (math.isfinite(s.check_tol) and s.check_tol > 0):
    raise BenchmarkError(
      f'--check_tol={s.check_tol} must be a finite number > 0. Fix: pass '
      '--check_tol=1e-4 (the default).'
    )
  problems = [
    name_problem(field, s[field])
    for field in ('configs', 'algorithms', 'implementations', 'conv_impls')
  ]
  problems.append(out_problem(s.out))
  for name in s.configs if not any(problems) else ():
    meta_batch, chunk = get_config(name).meta_batch, s.task_chunk_size
    if 0 < chunk < meta_batch and meta_batch % chunk:
      problems.append(
        f'--task_chunk_size={chunk} must divide the meta-batch size of '
        f'{name} ({meta_batch}). Fix: pass a divisor, or 0.'
      )
  for problem in problems:
    if problem:
      raise BenchmarkError(problem)


def resolve_conv_impls(conv_impls: Sequence[str]) -> tuple[str, ...]:
  """Expands 'all' (alias 'both') and keeps the order, without duplicates."""
  expand = lambda impl: ALL_CONV_IMPLS if impl in ('all', 'both') else (impl,)
  return tuple(dict.fromkeys(i for impl in conv_impls for i in expand(impl)))
