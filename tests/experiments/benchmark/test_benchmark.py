"""Smoke test of experiments/benchmark/ at --size=tiny, and of its check.

Never asserts a speed: only that the gradient cross-check passes for every
PyTorch implementation, that it fails when the gradients differ, and that the
three outputs are written with sane contents.
"""

import json
import os
import time

from absl import flags
import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('higher')

import jaxmeta
from experiments.benchmark import checks
from experiments.benchmark import cli
from experiments.benchmark import configs
from experiments.benchmark import jax_step
from experiments.benchmark import run
from experiments.benchmark import timing
from experiments.benchmark import torch_baselines
from experiments.benchmark import torch_step

TORCH_IMPLS = set(configs.TORCH_IMPLEMENTATIONS)


@pytest.fixture(autouse=True, scope='module')
def _one_torch_thread():
  """PyTorch on one thread: its pool spins while it waits, and on a busy
  2-core machine two threads made the tiny steps up to 50 times slower. No
  speed is asserted here."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def _run_cli(out_dir, *extra):
  """`python -m experiments.benchmark --size=tiny ...`, run in-process.

  The flags are parsed into a fresh `FlagValues`, handed to `main` in place
  of the global ones absl would parse at start-up. Returns `main`'s exit
  code (0 when it returns).
  """
  flag_values = flags.FlagValues()
  cli.define_flags(flag_values)
  argv = flag_values(
    [
      'benchmark',
      '--size=tiny',
      f'--out={out_dir}',
      '--num_steps=2',
      '--warmup_steps=1',
      *extra,
    ]
  )
  try:
    cli.main(argv, flag_values)
  except SystemExit as e:
    return e.code
  return 0


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp('bench')
  code = _run_cli(out_dir)
  return out_dir, code


@pytest.mark.slow
def test_tiny_benchmark_passes_cross_check(tiny_run):
  out_dir, code = tiny_run
  assert code == 0
  with open(out_dir / 'benchmark.json') as f:
    results = json.load(f)
  assert results['all_checks_passed'] is True
  checked = {
    (c['algorithm'], c['implementation'])
    for c in results['cross_checks']
    if c['passed']
  }
  for algorithm in configs.ALGORITHMS:
    for impl in TORCH_IMPLS:
      assert (algorithm, impl) in checked
  for check in results['cross_checks']:
    assert check['max_rel_err'] <= 1e-4
    # Each implementation's float32 result is within 1e-4 of the float64
    # meta-gradient, and in float64 each computes jaxmeta's function.
    assert check['vs_float64_max_rel_err'] <= 1e-4
    assert check['float64_agreement'] <= checks.FLOAT64_TOL
    assert check['verdict'] == 'float32'


@pytest.mark.slow
def test_tiny_benchmark_outputs(tiny_run):
  out_dir, _ = tiny_run
  with open(out_dir / 'benchmark.json') as f:
    results = json.load(f)
  rows = results['rows']
  impls = {r['implementation'] for r in rows}
  assert impls == set(configs.IMPLEMENTATIONS)
  assert len(rows) == len(configs.ALGORITHMS) * len(impls)
  for row in rows:
    assert row['status'] == 'ok'
    assert row['num_timed_steps'] == 2
    assert 0 < row['min_ms'] <= row['median_ms']
    assert row['tasks_per_s'] > 0
    assert row['device'] and row['versions']['jax']
    assert (
      row['settings']['meta_batch'] == configs.get_config('tiny').meta_batch
    )
    if row['implementation'] == 'jaxmeta':
      # From XLA's analysis of the step, on any backend.
      assert row['peak_memory_bytes'] > 0
    assert len(row['step_ms']) == 2
    assert row['turn_median_ms']
    assert row['paired_x_vs_torch_loop'] > 0
    if row['implementation'] == 'torch_loop':
      assert row['paired_x_vs_torch_loop'] == 1.0
    # The roofline: FLOPs over the median time, over the best fp32 matmul.
    assert row['flops'] > 0
    assert row['achieved_gflops'] == pytest.approx(
      row['flops'] / (row['median_ms'] / 1e3) / 1e9, rel=1e-12
    )
    assert row['fraction_of_fp32_peak'] == pytest.approx(
      row['achieved_gflops'] / results['fp32_peak_gflops'], rel=1e-12
    )
  # A torch row counts the FLOPs of jaxmeta's step of the same algorithm.
  jax_flops = {
    r['algorithm']: r['flops'] for r in rows if r['framework'] == 'jax'
  }
  assert len(set(jax_flops.values())) == len(configs.ALGORITHMS)
  for row in rows:
    assert row['flops'] == jax_flops[row['algorithm']]
  # The peak, measured at --size=tiny's matmul size by both frameworks.
  peaks = results['matmul_peak']
  size = configs.SIZES['tiny']['matmul_peak_size']
  assert {(p['framework'], p['dtype']) for p in peaks} == {
    (f, d) for f in ('xla', 'torch') for d in ('float32', 'bfloat16')
  }
  for p in peaks:
    assert p['size'] == size
    assert p['gflops'] == pytest.approx(
      2 * size**3 / p['seconds'] / 1e9, rel=1e-12
    )
  assert results['fp32_peak_gflops'] == max(
    p['gflops'] for p in peaks if p['dtype'] == 'float32'
  )
  markdown = (out_dir / 'benchmark.md').read_text()
  assert '| config | algorithm |' in markdown
  assert '| FLOPs per step | GFLOP/s | of fp32 peak |' in markdown
  assert f'- Matmul peak: n = {size}, GFLOP/s xla float32' in markdown
  assert results['environment']['cpu'] in markdown
  assert markdown.count('| tiny (mb 2) |') == len(rows)
  png = (out_dir / 'benchmark.png').read_bytes()
  assert png.startswith(b'\x89PNG') and len(png) > 1000


def test_cli_fails_when_a_torch_gradient_differs(tmp_path):
  # jaxmeta's meta-gradient is still computed, as the reference; leaving it
  # out of the implementations only skips timing it.
  code = _run_cli(
    tmp_path,
    '--algorithms=fomaml',
    '--implementations=torch_loop',
    '--debug_perturb_check=torch_loop',
  )
  assert code != 0
  with open(tmp_path / 'benchmark.json') as f:
    results = json.load(f)
  assert results['all_checks_passed'] is False
  (row,) = [r for r in results['rows'] if r['implementation'] == 'torch_loop']
  assert row['status'] == 'gradient_mismatch'
  assert 'median_ms' not in row
  assert (tmp_path / 'benchmark.md').exists()


def test_torch_row_without_jaxmeta_counts_jaxmetas_step(tmp_path):
  # jaxmeta not timed: the torch row's FLOPs come from its reference step,
  # counted without running it, the same count as its timer's.
  code = _run_cli(
    tmp_path,
    '--algorithms=reptile',
    '--implementations=torch_loop',
    '--matmul_peak_size=0',
  )
  assert code == 0
  with open(tmp_path / 'benchmark.json') as f:
    (row,) = json.load(f)['rows']
  config = configs.get_config('tiny')
  data_key, init_key = jax.random.split(jax.random.key(0))
  timer = jax_step.start_jax_timer(
    config,
    'reptile',
    'auto',
    init_key,
    jax_step.make_tasks(config, data_key),
    configs.settings(size='tiny'),
  )
  assert row['implementation'] == 'torch_loop' and row['status'] == 'ok'
  assert row['flops'] == timer.info['flops'] > 0
  assert row['flops_source'].startswith('jaxmeta[')


def _tiny_setup(algorithm):
  config = configs.get_config('tiny')
  data_key, init_key = jax.random.split(jax.random.key(0))
  tasks = jax_step.make_tasks(config, data_key)
  learner, optimizer = jax_step.jax_setup(config, algorithm, 'auto')
  params = jaxmeta.init_train_state(learner, optimizer, init_key).params
  reference = jax_step.jax_meta_gradient(
    config, algorithm, 'auto', params, tasks
  )
  model = torch_baselines.Conv4(
    config.ways, config.input_shape, config.num_filters, config.num_blocks
  )
  batch = torch_baselines.batch_from_numpy(*(np.asarray(a) for a in tasks))
  meta_grad = torch_baselines.make_meta_grad(
    'loop', algorithm, config.inner_lr, config.inner_steps
  )
  return params, reference, model, batch, meta_grad


def test_cross_check_detects_perturbed_and_mismatched_gradients():
  params, reference, model, batch, meta_grad = _tiny_setup('maml')
  torch_baselines.params_from_jax(model, params)
  meta_grad(model, batch)
  good = torch_baselines.grads_to_jax(model)
  assert checks.cross_check(reference, good, 1e-4)['passed']

  # One tensor off by 0.1%.
  perturbed = dict(good, **{'conv1/w': good['conv1/w'] * 1.001})
  result = checks.cross_check(reference, perturbed, 1e-4)
  assert not result['passed'] and result['worst_tensor'] == 'conv1/w'

  # The head weight transposed the wrong way round (same as loading weights
  # in NCHW flatten order): shapes differ.
  bad_shape = dict(good, **{'head/w': good['head/w'].T})
  assert not checks.cross_check(reference, bad_shape, 1e-4)['passed']

  # Mismatched weights: torch evaluated at different initial weights.
  other = jax.tree.map(lambda p: p * 1.01, params)
  torch_baselines.params_from_jax(model, other)
  for p in model.parameters():
    p.grad = None
  meta_grad(model, batch)
  mismatched = torch_baselines.grads_to_jax(model)
  assert not checks.cross_check(reference, mismatched, 1e-4)['passed']

  # A NaN is never a pass, nor is a missing tensor.
  nan = dict(good, **{'head/b': good['head/b'] * np.nan})
  assert not checks.cross_check(reference, nan, 1e-4)['passed']
  missing = {k: v for k, v in good.items() if k != 'head/b'}
  assert not checks.cross_check(reference, missing, 1e-4)['passed']


@pytest.mark.slow
def test_float64_check_separates_rounding_from_a_different_function():
  config = configs.get_config('tiny')
  params, reference, _, batch, _ = _tiny_setup('maml')
  data_key, _ = jax.random.split(jax.random.key(0))
  tasks = jax_step.make_tasks(config, data_key)
  truth = jax_step.jax_meta_gradient(
    config, 'maml', 'auto', params, tasks, float64=True
  )
  assert all(v.dtype == np.float64 for v in truth.values())
  # float32 jaxmeta is a rounding away from float64 ...
  assert checks.cross_check(truth, reference, 1e-4)['passed']
  # ... and every torch implementation in float64 is the same function.
  for impl in configs.TORCH_IMPLEMENTATIONS:
    got = torch_step.torch_meta_gradient(
      config, impl, 'maml', params, batch, 'cpu', float64=True
    )
    assert all(v.dtype == np.float64 for v in got.values())
    assert checks.cross_check(truth, got, 1e-12)['passed'], impl
  # An inner learning rate 0.1% off is a different function: 1e-3 apart in
  # float64, far beyond FLOAT64_TOL.
  other = configs.get_config('tiny')
  other.inner_lr = config.inner_lr * 1.001
  got = torch_step.torch_meta_gradient(
    other, 'torch_loop', 'maml', params, batch, 'cpu', float64=True
  )
  assert not checks.cross_check(truth, got, checks.FLOAT64_TOL)['passed']


def test_verdict():
  tol = 1e-4

  def entry(f32, vs64, agreement, problems=()):
    return {
      'max_rel_err': f32,
      'vs_float64_max_rel_err': vs64,
      'float64_agreement': agreement,
      'problems': list(problems),
    }

  verdict = lambda e, ref=3e-2: checks.verdict(e, tol, ref)
  assert verdict(entry(5e-5, 1e-5, 1e-14)) == (True, 'float32')
  # The reference's own float32 result is 3e-2 from float64: a candidate
  # within 3e-2 of float64, or of the reference, passes; one further from
  # both does not.
  assert verdict(entry(5e-2, 2e-2, 1e-14)) == (True, 'float64')
  assert verdict(entry(2e-3, 4e-2, 1e-14)) == (True, 'float64')
  assert verdict(entry(5e-2, 4e-2, 1e-14)) == (False, 'float32 mismatch')
  # With an exact reference the float32 tolerance is the bound.
  assert verdict(entry(2e-4, 2e-4, 1e-14), 1e-6) == (False, 'float32 mismatch')
  # A different function fails however close its float32 result.
  assert verdict(entry(5e-5, 1e-5, 1e-3)) == (False, 'float64 mismatch')
  assert verdict(entry(5e-5, 1e-5, float('nan'))) == (False, 'float64 mismatch')
  # Without the float64 check only the float32 rule applies.
  assert verdict(entry(5e-5, None, None), None) == (True, 'float32')
  assert verdict(entry(5e-2, None, None), None) == (False, 'float32 mismatch')
  assert verdict(entry(5e-5, 1e-5, 1e-14, ['shape'])) == (False, 'error')


@pytest.mark.slow
def test_cross_check_uses_the_timed_steps_task_chunking(tmp_path, monkeypatch):
  # The check must compute the meta-gradient the way the timed step does:
  # here two tasks vmapped at once, where a CPU's default would scan one at a
  # time (and an accelerator's would vmap all).
  chunks = []
  real = jaxmeta.meta_gradient

  def spy(learner, params, tasks, task_chunk_size=None):
    chunks.append(task_chunk_size)
    return real(learner, params, tasks, task_chunk_size=task_chunk_size)

  monkeypatch.setattr(jaxmeta, 'meta_gradient', spy)
  settings = configs.settings(
    out=str(tmp_path),
    configs=('tiny',),
    algorithms=('fomaml',),
    implementations=('jaxmeta',),
    conv_impls=('patches_cf', 'patches'),
    num_steps=1,
    warmup_steps=0,
    task_chunk_size=2,
    matmul_peak_size=0,
  )
  results, ok = run.run_benchmark(settings)
  assert ok
  # Reference and candidate, each in float32 and float64.
  assert chunks == [2, 2, 2, 2]
  assert [c['jax_task_chunk_size'] for c in results['cross_checks']] == [2]
  assert [r['task_chunk_size'] for r in results['rows']] == [2, 2]


def test_task_chunk_size_must_divide_the_meta_batch(tmp_path):
  settings = configs.settings(
    out=str(tmp_path),
    configs=('omniglot_5w1s_mb4',),
    algorithms=('reptile',),
    implementations=('jaxmeta',),
    conv_impls=('auto',),
    num_steps=1,
    warmup_steps=0,
    task_chunk_size=3,
  )
  with pytest.raises(
    ValueError,
    match='must divide the meta-batch size of '
    r'omniglot_5w1s_mb4 \(4\)',
  ):
    run.run_benchmark(settings)
  assert not os.listdir(tmp_path)  # Failed before any work.


def test_time_interleaved_takes_turns_in_blocks():
  calls = []

  def timer(name, seconds, fail_at=None):
    count = {'n': 0}

    def step():
      count['n'] += 1
      calls.append(name)
      if count['n'] == fail_at:
        raise RuntimeError('boom')
      time.sleep(seconds)

    return timing.Timer(
      step,
      {'first_run_s': seconds, 'compile_s': None},
      lambda: {'final_loss': name},
    )

  settings = configs.settings(
    num_steps=4,
    warmup_steps=1,
    max_seconds_per_row=0.5,
    interleave_block=2,
  )
  fast, slow = timer('fast', 0.0), timer('slow', 0.2)
  bad = timer('bad', 0.0, fail_at=3)
  results = timing.time_interleaved([fast, slow, bad], settings, 2)
  # A warm-up step each, then turns of one untimed + up to 2 timed steps;
  # 'bad' leaves the rotation when it raises, 'slow' after the 3 timed steps
  # that max_seconds_per_row affords it (0.5 s / 0.2 s, but at least 3).
  assert calls == (
    ['fast', 'slow', 'bad']
    + ['fast'] * 3
    + ['slow'] * 3
    + ['bad'] * 2
    + ['fast'] * 3
    + ['slow'] * 2
  )
  assert results[0]['num_timed_steps'] == 4
  assert results[0]['status'] == 'ok' and results[0]['final_loss'] == 'fast'
  assert results[0]['timing'] == 'interleaved blocks of 2'
  assert results[1]['num_timed_steps'] == 3
  assert results[1]['min_ms'] >= 200
  assert results[2] == {'status': 'error', 'error': 'RuntimeError: boom'}
  # Per turn: 'fast' 2 + 2 timed steps, 'slow' 2 + 1.
  assert len(results[0]['turn_median_ms']) == 2
  assert len(results[0]['step_ms']) == 4
  assert len(results[1]['turn_median_ms']) == 2
  assert results[1]['turn_median_ms'][1] == results[1]['step_ms'][2]


def test_paired_speedups_pair_turns_of_the_same_round():
  def row(impl, turns, config='c', algorithm='maml'):
    return {
      'config': config,
      'algorithm': algorithm,
      'implementation': impl,
      'status': 'ok',
      'turn_median_ms': turns,
    }

  rows = [
    row('jaxmeta', [50.0, 100.0, 400.0]),
    row('torch_loop', [100.0, 200.0, 400.0]),
    # Fewer turns (max_seconds_per_row): paired with the first rounds.
    row('torch_func', [200.0, 100.0]),
    # Another algorithm has its own loop.
    row('jaxmeta', [10.0, 10.0], algorithm='reptile'),
    row('torch_loop', [30.0, 30.0], algorithm='reptile'),
    {
      'config': 'c',
      'algorithm': 'maml',
      'implementation': 'torch_higher',
      'status': 'gradient_mismatch',
    },
  ]
  timing.add_paired_speedups(rows)
  # Ratios 2, 2, 1: median 2, quartiles (inclusive) 1.5 and 2.
  assert rows[0]['paired_x_vs_torch_loop'] == 2.0
  assert rows[0]['paired_x_vs_torch_loop_quartiles'] == [1.5, 2.0]
  assert rows[1]['paired_x_vs_torch_loop'] == 1.0
  # Ratios 0.5 and 2.
  assert rows[2]['paired_x_vs_torch_loop'] == 1.25
  assert rows[3]['paired_x_vs_torch_loop'] == 3.0
  assert 'paired_x_vs_torch_loop' not in rows[5]


def test_program_peak_bytes_counts_one_program():
  f = jax.jit(lambda x: (x @ x).sum())
  compiled = f.lower(jax.numpy.ones((256, 256))).compile()
  peak = jax_step.program_peak_bytes(compiled)
  # At least the 256x256 float32 argument; not a process-wide counter.
  assert 256 * 256 * 4 <= peak < 64 * 2**20


def test_torch_conv4_is_jaxmeta_conv4():
  config = configs.get_config('tiny')
  model = jaxmeta.conv4(
    config.ways, config.input_shape, config.num_filters, config.num_blocks
  )
  params = model.init(jax.random.key(1))
  x = np.asarray(
    jax.random.normal(jax.random.key(2), (6,) + config.input_shape)
  )
  with jax.default_matmul_precision('highest'):
    expected = np.asarray(jax.jit(model.apply)(params, x))
  torch_model = torch_baselines.Conv4(
    config.ways, config.input_shape, config.num_filters, config.num_blocks
  )
  torch_baselines.params_from_jax(torch_model, params)
  x_nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    got_module = torch_model(x_nchw).numpy()
    got_functional = torch_baselines.conv4_functional(
      list(torch_model.parameters()), x_nchw, config.num_blocks
    ).numpy()
  np.testing.assert_allclose(got_module, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got_functional, expected, rtol=1e-4, atol=1e-5)
