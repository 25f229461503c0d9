"""The benchmark's command line and outputs, without running a benchmark.

In-process and fast; needs no PyTorch (test_benchmark.py beside it runs it).
"""

import json
import sys

from absl import flags
import pytest

from experiments import benchmark as package
from experiments.benchmark import cli
from experiments.benchmark import configs
from experiments.benchmark import report
from experiments.benchmark import run
import jaxmeta
from support.tiny_runs import tiny_benchmark_settings


def _flags(*argv):
  flag_values = flags.FlagValues()
  cli.define_flags(flag_values)
  flag_values(['benchmark', *argv])
  return flag_values


def test_without_torch_one_line_says_what_to_install(
  tmp_path, monkeypatch, capsys
):
  # Before: a ModuleNotFoundError traceback from inside run_benchmark.
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` fails.
  for name in ('torch_step', 'torch_baselines'):
    monkeypatch.delitem(sys.modules, f'{package.__name__}.{name}', False)
    monkeypatch.delattr(package, name, raising=False)
  flag_values = _flags(
    f'--out={tmp_path / "out"}',
    '--size=tiny',
    '--algorithms=maml',
    '--implementations=jaxmeta,torch_loop',
  )
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['benchmark'], flag_values)
  assert exit_info.value.code == 1
  message = capsys.readouterr().err
  assert message.startswith('Error: ') and message.count('\n') == 1
  assert 'requirements-benchmark.txt' in message
  assert '--implementations=jaxmeta' in message
  assert not (tmp_path / 'out').exists()  # Refused before any work.


@pytest.mark.parametrize(
  'flag,valid',
  [
    ('configs', 'omniglot_5w1s'),
    ('algorithms', 'maml'),
    ('implementations', 'jaxmeta'),
    ('conv_impls', 'patches_cf_2pass'),
  ],
)
def test_unknown_names_are_usage_errors_naming_the_valid_ones(flag, valid):
  # Before: accepted by the flags, then a ValueError traceback mid-run.
  with pytest.raises(
    flags.IllegalFlagValueError,
    match=f"--{flag}: unknown \\['nope'\\]; choose from .*{valid}",
  ):
    _flags('--out=/tmp/unused', f'--{flag}={valid},nope')


def test_out_naming_an_existing_file_is_a_usage_error(tmp_path):
  path = tmp_path / 'results.json'
  path.write_text('{}')
  with pytest.raises(flags.IllegalFlagValueError, match='is an existing file'):
    _flags(f'--out={path}')
  with pytest.raises(configs.BenchmarkError, match='is an existing file'):
    run.run_benchmark(tiny_benchmark_settings(tmp_path, out=str(path)))


def test_valid_flags_parse():
  flag_values = _flags(
    '--out=/tmp/unused',
    '--configs=tiny',
    '--conv_impls=all',
    f'--algorithms={configs.ALGORITHMS[0]}',
  )
  assert flag_values.configs == ['tiny']


def test_matmul_peak_size_defaults_to_the_size_and_zero_turns_it_off():
  flag_values = _flags('--out=/tmp/unused')
  assert flag_values.matmul_peak_size is None  # --size's
  assert '0: no peak' in flag_values['matmul_peak_size'].help
  for size in configs.SIZES:
    assert configs.settings(size).matmul_peak_size > 0
  assert (
    _flags('--out=/tmp/unused', '--matmul_peak_size=0').matmul_peak_size == 0
  )
  assert configs.settings('tiny', matmul_peak_size=0).matmul_peak_size == 0


def test_all_and_both_expand_to_every_conv_impl():
  # Before: 'both' was xla and patches only, and the help named no patches_cf.
  expected = ('xla', 'patches', 'patches_cf', 'patches_cf_2pass')
  assert configs.ALL_CONV_IMPLS == expected
  assert configs.resolve_conv_impls(['both']) == expected
  assert configs.resolve_conv_impls(['patches_cf', 'all']) == (
    'patches_cf',
    'xla',
    'patches',
    'patches_cf_2pass',
  )
  help_text = _flags('--out=/tmp/unused')['conv_impls'].help
  assert 'patches_cf_2pass' in help_text


def test_algorithms_are_the_library_ones_with_a_pytorch_baseline():
  torch_baselines = pytest.importorskip('experiments.benchmark.torch_baselines')
  assert configs.ALGORITHMS == torch_baselines.ALGORITHMS
  assert set(configs.ALGORITHMS) <= set(jaxmeta.ALGORITHMS)
  assert set(configs.ALGORITHMS) == {'maml', 'fomaml', 'reptile'}


def _results(cross_checks, rows=()):
  return {
    'date': '2026-01-01T00:00:00+00:00',
    'command': 'benchmark',
    'environment': {
      'jax_device': 'cpu',
      'cpu': 'cpu',
      'cpu_count': 2,
      'versions': {'jax': '0'},
    },
    'settings': {'check_tol': 1e-4},
    'data': 'random',
    'check_precision': 'float32',
    'timing_precision': 'highest',
    'cross_checks': cross_checks,
    'rows': list(rows),
  }


def test_benchmark_json_is_strict_json_with_null_for_non_finite(tmp_path):
  # Before: json.dump(allow_nan=True) wrote Infinity and NaN.
  results = _results(
    [
      {
        'max_rel_err': float('inf'),
        'vs_float64_max_rel_err': float('nan'),
        'per_tensor': [1.0, float('-inf')],
      }
    ]
  )
  report.write_outputs(results, str(tmp_path), plot=False)

  def refuse(constant):
    raise ValueError(f'not JSON: {constant}')

  with open(tmp_path / 'benchmark.json') as f:
    written = json.loads(f.read(), parse_constant=refuse)
  assert written['cross_checks'] == [
    {
      'max_rel_err': None,
      'vs_float64_max_rel_err': None,
      'per_tensor': [1.0, None],
    }
  ]
  assert written['settings'] == {'check_tol': 1e-4}


def test_markdown_rows_have_as_many_cells_as_the_header():
  row = {
    'config': 'tiny',
    'algorithm': 'maml',
    'implementation': 'jaxmeta',
    'conv_impl': 'xla',
    'settings': {'meta_batch': 2},
    'cross_check_passed': True,
    'cross_check_max_rel_err': 0.0,
  }
  timed = dict(row, status='ok', median_ms=4.0, min_ms=3.0, flops=2e8)
  timed.update(achieved_gflops=50.0, fraction_of_fp32_peak=0.25)
  failed = dict(row, implementation='torch_loop', status='error')
  results = _results([], [timed, failed])
  results['matmul_peak'] = [
    {'framework': 'xla', 'dtype': 'float32', 'size': 64, 'gflops': 200.0}
  ]
  lines = report.markdown(results).splitlines()
  table = [line for line in lines if line.startswith('|')]
  assert len({line.count('|') for line in table}) == 1
  assert '| 2e+08 | 50.0 | 25.0% |' in table[2]
  assert '- Matmul peak: n = 64, GFLOP/s xla float32 200.0' in lines
