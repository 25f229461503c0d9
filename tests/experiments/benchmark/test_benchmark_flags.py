"""The benchmark refuses counts that cannot time anything, before compiling."""

import os
import subprocess
import sys

from absl import flags
import pytest

from experiments.benchmark import cli
from experiments.benchmark import configs
from experiments.benchmark import run
from support import REPO
from support.tiny_runs import tiny_benchmark_settings

_REPO = str(REPO)


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('num_steps', 0, r'--num_steps=0 must be an integer >= 1'),
    ('num_steps', -3, r'--num_steps=-3 must be an integer >= 1'),
    ('warmup_steps', -1, r'--warmup_steps=-1 must be an integer >= 0'),
    ('interleave_block', 0, r'--interleave_block=0 must be'),
    ('task_chunk_size', -2, r'--task_chunk_size=-2 must be'),
    ('seed', -1, r'--seed=-1 must be'),
    ('matmul_peak_size', -1, r'--matmul_peak_size=-1 must be'),
    ('max_seconds_per_row', float('nan'), r'--max_seconds_per_row=nan'),
    ('max_seconds_per_row', -1.0, r'--max_seconds_per_row=-1.0'),
    ('check_tol', 0.0, r'--check_tol=0.0 must be a finite number > 0'),
    ('check_tol', float('inf'), r'--check_tol=inf'),
  ],
)
def test_nonsense_counts_are_refused_before_any_work(
  tmp_path, monkeypatch, field, value, message
):
  settings = tiny_benchmark_settings(tmp_path, **{field: value})
  compiled = []
  monkeypatch.setattr(
    configs, 'resolve_conv_impls', lambda *a: compiled.append(a)
  )
  with pytest.raises(configs.BenchmarkError, match=message) as error:
    run.run_benchmark(settings)
  assert '\n' not in str(error.value) and 'Fix:' in str(error.value)
  assert not compiled and not (tmp_path / 'out').exists()


@pytest.mark.parametrize(
  'flag',
  [
    '--num_steps=0',
    '--warmup_steps=-1',
    '--seed=-1',
    '--matmul_peak_size=-1',
    '--task_chunk_size=-1',
    '--max_seconds_per_row=-1',
    '--check_tol=-1',
  ],
)
def test_nonsense_flags_are_usage_errors(flag):
  flag_values = flags.FlagValues()
  cli.define_flags(flag_values)
  with pytest.raises(flags.IllegalFlagValueError):
    flag_values(['benchmark', '--out=/tmp/unused', flag])


def test_the_program_says_it_in_one_line(tmp_path):
  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.benchmark',
      f'--out={tmp_path / "out"}',
      '--size=tiny',
      '--implementations=jaxmeta',
      '--num_steps=0',
    ],
    cwd=_REPO,
    env=dict(os.environ, PYTHONPATH=_REPO, JAXMETA_HUGE_PAGES='0'),
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert done.returncode == 1
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('Error: '), done.stderr
  assert '--num_steps' in lines[0]
  assert not (tmp_path / 'out').exists()
