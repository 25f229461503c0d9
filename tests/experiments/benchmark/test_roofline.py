"""The matmul peak and each row's achieved GFLOP/s, from their own fields.

Never asserts a speed: only that the numbers are the recorded FLOPs over the
recorded times, and what is measured when.
"""

import sys

import pytest

from experiments import benchmark as package
from experiments.benchmark import roofline
from experiments.benchmark import run
from support.tiny_runs import tiny_benchmark_settings


def _assert_two_n_cubed_over_own_time(peaks, size, frameworks):
  assert [(p['framework'], p['dtype']) for p in peaks] == [
    (f, d) for f in frameworks for d in ('float32', 'bfloat16')
  ]
  for p in peaks:
    assert p['size'] == size and p['seconds'] > 0
    assert p['gflops'] == pytest.approx(
      2 * size**3 / (p['seconds'] * 1e9), rel=1e-12
    )


def test_matmul_peak_is_two_n_cubed_over_its_own_time():
  peaks = roofline.matmul_peaks(16, highest=True)
  _assert_two_n_cubed_over_own_time(peaks, 16, ['xla'])


def test_matmul_peak_by_torch_too_when_installed():
  torch_step = pytest.importorskip('experiments.benchmark.torch_step')
  peaks = roofline.matmul_peaks(16, False, torch_step, 'cpu')
  _assert_two_n_cubed_over_own_time(peaks, 16, ['xla', 'torch'])
  # The checks' full float32 precision is back after the measurement.
  assert not torch_step.torch.backends.cuda.matmul.allow_tf32


def test_matmul_peak_size_zero_times_nothing(monkeypatch):
  def refuse(*args):
    raise AssertionError('timed a matmul')

  monkeypatch.setattr(roofline, 'best_seconds', refuse)
  assert roofline.matmul_peaks(0, highest=True) == []


def test_fp32_peak_is_the_best_float32_matmul():
  peaks = [
    {'framework': 'xla', 'dtype': 'float32', 'gflops': 50.0},
    {'framework': 'xla', 'dtype': 'bfloat16', 'gflops': 400.0},
    {'framework': 'torch', 'dtype': 'float32', 'gflops': 80.0},
  ]
  assert roofline.fp32_peak(peaks) == 80.0
  assert roofline.fp32_peak([]) is None


def test_achieved_gflops_and_fraction_of_peak():
  rows = [
    {'status': 'ok', 'flops': 3e9, 'median_ms': 500.0},
    {'status': 'gradient_mismatch', 'flops': 3e9},
    {'status': 'ok', 'median_ms': 10.0},
  ]
  roofline.add_achieved(rows, peak=12.0)
  # 3e9 FLOPs in 0.5 s: 6 GFLOP/s, half of 12.
  assert rows[0]['achieved_gflops'] == pytest.approx(6.0, rel=1e-12)
  assert rows[0]['fraction_of_fp32_peak'] == pytest.approx(0.5, rel=1e-12)
  assert 'achieved_gflops' not in rows[1] and 'achieved_gflops' not in rows[2]
  roofline.add_achieved(rows, peak=None)
  assert rows[0]['fraction_of_fp32_peak'] is None


def test_peak_off_leaves_achieved_gflops_without_a_fraction(
  tmp_path, monkeypatch
):
  def refuse(*args):
    raise AssertionError('timed a matmul')

  monkeypatch.setattr(roofline, 'best_seconds', refuse)
  settings = tiny_benchmark_settings(
    tmp_path, algorithms=('reptile',), matmul_peak_size=0
  )
  results, ok = run.run_benchmark(settings)
  assert ok
  assert results['matmul_peak'] == [] and results['fp32_peak_gflops'] is None
  (row,) = results['rows']
  assert row['flops'] > 0 and row['fraction_of_fp32_peak'] is None
  assert row['achieved_gflops'] == pytest.approx(
    row['flops'] / (row['median_ms'] / 1e3) / 1e9, rel=1e-12
  )
  markdown = (tmp_path / 'out' / 'benchmark.md').read_text()
  assert '- Matmul peak: not measured' in markdown
  assert '| FLOPs per step | GFLOP/s | of fp32 peak |' in markdown


def test_without_torch_the_peak_is_xlas_alone(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` fails.
  for name in ('torch_step', 'torch_baselines'):
    monkeypatch.delitem(sys.modules, f'{package.__name__}.{name}', False)
    monkeypatch.delattr(package, name, raising=False)
  settings = tiny_benchmark_settings(
    tmp_path, algorithms=('reptile',), matmul_peak_size=16
  )
  results, ok = run.run_benchmark(settings)
  assert ok
  _assert_two_n_cubed_over_own_time(results['matmul_peak'], 16, ['xla'])
  (row,) = results['rows']
  assert row['fraction_of_fp32_peak'] == pytest.approx(
    row['achieved_gflops'] / results['matmul_peak'][0]['gflops'], rel=1e-12
  )
