"""The run: cross-check every implementation, then time those that pass."""

import datetime
import os
import sys
import traceback
from typing import Any, NamedTuple

import jax
import ml_collections

import jaxmeta
from . import checks
from . import configs
from . import jax_step
from . import report
from . import roofline
from . import timing
from . import xla_costs

Config = ml_collections.ConfigDict


class Job(NamedTuple):
  """One configuration and algorithm: what every implementation gets."""

  config: Config
  algorithm: str
  params: Any  # jaxmeta's initial weights, the same for everyone.
  init_key: jax.Array
  tasks: jaxmeta.Task  # [meta_batch, ...] per field.
  batch: Any  # The same tasks as a TorchBatch, or None.
  chunk: int | None  # jaxmeta's task chunking, checked and timed.


class Harness(NamedTuple):
  """What stays the same over a run."""

  settings: Config
  conv_impls: tuple[str, ...]  # jaxmeta's; the first is the reference.
  torch_impls: tuple[str, ...]
  torch_step: Any  # The `torch_step` module, or None.
  device: str | None  # torch's.
  fp32_peak: float | None  # The best float32 matmul GFLOP/s measured.


def label(impl: str, conv_impl: str | None) -> str:
  """'jaxmeta[conv impl]' or the torch implementation's name."""
  return impl + (f'[{conv_impl}]' if conv_impl else '')


def implementations(h: Harness, with_reference: bool) -> list[tuple]:
  """`(implementation, conv impl or None)` in order: jaxmeta's (with the
  reference if `with_reference`), then PyTorch's."""
  conv_impls = h.conv_impls if with_reference else h.conv_impls[1:]
  if 'jaxmeta' not in h.settings.implementations:
    conv_impls = ()
  return [('jaxmeta', c) for c in conv_impls] + [
    (i, None) for i in h.torch_impls
  ]


def cross_checks(h: Harness, job: Job) -> tuple[dict, list[dict]]:
  """Every implementation's meta-gradient against the reference's.

  Returns:
    `({(impl, conv_impl): entry}, new entries)`; the reference's entry is
    in the dict only.
  """
  s, ref_impl = h.settings, h.conv_impls[0]

  def grad(impl, conv_impl, float64=False):
    if impl == 'jaxmeta':
      return jax_step.jax_meta_gradient(
        job.config,
        job.algorithm,
        conv_impl,
        job.params,
        job.tasks,
        float64=float64,
        task_chunk_size=job.chunk,
      )
    return h.torch_step.torch_meta_gradient(
      job.config,
      impl,
      job.algorithm,
      job.params,
      job.batch,
      h.device,
      float64=float64,
      perturb=impl in s.debug_perturb_check and not float64,
    )

  reference = grad('jaxmeta', ref_impl)
  # The float64 meta-gradient: what every float32 result approximates.
  truth = grad('jaxmeta', ref_impl, float64=True) if s.float64_check else None
  found = {
    ('jaxmeta', ref_impl): {
      'passed': True,
      'max_rel_err': 0.0,
      'reference': True,
      **checks.float64_errors(truth, reference),
    }
  }
  entries = []
  for impl, conv_impl in implementations(h, with_reference=False):
    entry = {
      'config': job.config.name,
      'algorithm': job.algorithm,
      'implementation': impl,
      'conv_impl': conv_impl,
      'reference': f'jaxmeta[{ref_impl}]',
      'jax_task_chunk_size': job.chunk,
    }
    try:
      got = grad(impl, conv_impl)
      entry.update(checks.cross_check(reference, got, s.check_tol))
      entry.update(checks.float64_errors(truth, got))
      if truth is not None:
        entry['float64_agreement'] = checks.cross_check(
          truth, grad(impl, conv_impl, float64=True), checks.FLOAT64_TOL
        )['max_rel_err']
      entry['passed'], entry['verdict'] = checks.verdict(
        entry,
        s.check_tol,
        found[('jaxmeta', ref_impl)].get('vs_float64_max_rel_err'),
      )
    except Exception as e:
      entry.update(
        passed=False,
        verdict='error',
        max_rel_err=None,
        problems=[f'{type(e).__name__}: {e}'],
        traceback=traceback.format_exc(),
      )
    entries.append(entry)
    found[(impl, conv_impl)] = entry
    print(
      f'[check] {job.config.name} {job.algorithm} {label(impl, conv_impl)}: '
      f'{"ok" if entry["passed"] else "MISMATCH"} ({entry["verdict"]}) '
      f'max_rel_err={entry.get("max_rel_err")} '
      f'({entry.get("worst_tensor")}); vs float64 '
      f'{entry.get("vs_float64_max_rel_err")}, float64 agreement '
      f'{entry.get("float64_agreement")}',
      flush=True,
    )
  return found, entries


def reference_flops(h: Harness, job: Job) -> float:
  """XLA's FLOP count of jaxmeta's timed step with the reference conv impl,
  neither compiled nor run."""
  step, state, _ = jax_step.meta_step(
    job.config, job.algorithm, h.conv_impls[0], job.init_key, h.settings
  )
  return xla_costs.unrolled_flops(step, state, job.tasks)


def timings(h: Harness, job: Job, found: dict, env: dict) -> list[dict]:
  """One row per implementation: timed if its cross-check passed."""
  s = h.settings
  rows, timers, timed_rows = [], [], []
  if h.torch_step:
    h.torch_step.set_precision(s.timing_precision == 'highest')
  for impl, conv_impl in implementations(h, with_reference=True):
    entry = found[(impl, conv_impl)]
    jax_side = impl == 'jaxmeta'
    row = {
      'config': job.config.name,
      'algorithm': job.algorithm,
      'implementation': impl,
      'conv_impl': jaxmeta.resolve_conv_impl(conv_impl) if jax_side else None,
      'framework': 'jax' if jax_side else 'torch',
      'device': env['jax_device' if jax_side else 'torch_device'],
      'settings': dict(
        job.config.to_dict(),
        outer_optimizer='adam',
        timing_precision=s.timing_precision,
      ),
      'versions': env['versions'],
      'cross_check_passed': entry['passed'],
      'cross_check_verdict': entry.get('verdict', 'reference'),
      'cross_check_max_rel_err': entry.get('max_rel_err'),
      'cross_check_vs_float64': entry.get('vs_float64_max_rel_err'),
      'float64_agreement': entry.get('float64_agreement'),
      'load_average_before': report.load_average(),
    }
    rows.append(row)
    if not entry['passed']:
      row['status'] = 'gradient_mismatch'
      continue
    try:
      if jax_side:
        timer = jax_step.start_jax_timer(
          job.config, job.algorithm, conv_impl, job.init_key, job.tasks, s
        )
      else:
        timer = h.torch_step.start_torch_timer(
          job.config, impl, job.algorithm, job.params, job.batch, h.device
        )
      timers.append(timer)
      timed_rows.append(row)
    except Exception as e:
      row.update(status='error', error=f'{type(e).__name__}: {e}')
  measured = timing.time_interleaved(timers, s, job.config.meta_batch)
  for row, measurement in zip(timed_rows, measured):
    row.update(measurement)
  timing.add_paired_speedups(rows)
  torch_rows = [r for r in rows if r['framework'] == 'torch']
  if any(r['status'] == 'ok' for r in torch_rows):
    # The same computation as jaxmeta's reference step (their meta-gradients
    # agree): its row's count, or its step's lowered without running it.
    reference = rows[0] if rows[0]['framework'] == 'jax' else {}
    flops = reference.get('flops') or reference_flops(h, job)
    source = label('jaxmeta', jaxmeta.resolve_conv_impl(h.conv_impls[0]))
    for row in torch_rows:
      row.update(flops=flops, flops_source=f'{source}: {jax_step.FLOPS_SOURCE}')
  roofline.add_achieved(rows, h.fp32_peak)
  if h.torch_step:
    h.torch_step.set_precision(True)
  for row in rows:
    print(
      f'[time] {job.config.name} {job.algorithm} '
      f'{label(row["implementation"], row["conv_impl"])}: '
      + (
        f'median {row["median_ms"]:.1f} ms, min {row["min_ms"]:.1f} '
        f'ms over {row["num_timed_steps"]} steps'
        if row['status'] == 'ok'
        else row['status']
      ),
      flush=True,
    )
  return rows


def run_benchmark(settings: Config) -> tuple[dict[str, Any], bool]:
  """Runs the cross-checks and the timings, writing outputs as it goes.

  Args:
    settings: `configs.settings(...)`.

  Returns:
    `(results, ok)`: the content of `benchmark.json` and whether every
    cross-check passed and every implementation ran.

  Raises:
    BenchmarkError: settings that cannot run, before any compilation.
  """
  s = settings
  configs.check_settings(s)
  torch_impls = tuple(
    i for i in s.implementations if i in configs.TORCH_IMPLEMENTATIONS
  )
  ts = device = None
  try:  # Optional without PyTorch implementations: for the matmul peak.
    from . import torch_step as ts
  except ImportError as e:
    if torch_impls:
      raise configs.BenchmarkError(
        'the PyTorch implementations need torch and higher. Fix: pip install '
        '-r requirements-benchmark.txt, or pass --implementations=jaxmeta '
        f'({e}).'
      ) from e
  if ts:
    device = ts.device_name(s.torch_device)
    ts.set_precision(True)
  os.makedirs(s.out, exist_ok=True)
  env = report.environment(device)
  peaks = roofline.matmul_peaks(
    s.matmul_peak_size, s.timing_precision == 'highest', ts, device
  )
  h = Harness(
    s,
    configs.resolve_conv_impls(s.conv_impls),
    torch_impls,
    ts,
    device,
    roofline.fp32_peak(peaks),
  )
  results = {
    'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds'
    ),
    'command': 'python -m experiments.benchmark ' + ' '.join(sys.argv[1:]),
    'environment': env,
    'settings': s.to_dict(),
    'data': (
      'random [0, 1] images (Bernoulli(0.2) strokes for 1 channel, '
      'uniform for 3) and balanced labels from '
      f'jax.random.key({s.seed}); weights: jaxmeta.conv4 init '
      'from the same seed, identical for every implementation'
    ),
    'check_precision': 'float32; JAX matmul precision highest; torch TF32 '
    'off' + ('; and float64' if s.float64_check else ''),
    'timing_precision': s.timing_precision,
    'matmul_peak': peaks,
    'fp32_peak_gflops': h.fp32_peak,
    'cross_checks': [],
    'rows': [],
  }
  ok = True
  for name in s.configs:
    config = configs.get_config(name)
    data_key, init_key = jax.random.split(jax.random.key(s.seed))
    tasks = jax_step.make_tasks(config, data_key)
    batch = ts.batch_from_tasks(tasks, device) if torch_impls else None
    chunk = jax_step.jax_task_chunk_size(config, s)
    for algorithm in s.algorithms:
      # Same initial weights as init_train_state gives the timed JAX step.
      learner, optimizer = jax_step.jax_setup(
        config, algorithm, h.conv_impls[0]
      )
      params = jaxmeta.init_train_state(
        learner, optimizer, init_key
      ).merged_params()
      job = Job(config, algorithm, params, init_key, tasks, batch, chunk)
      found, entries = cross_checks(h, job)
      results['cross_checks'] += entries
      rows = timings(h, job, found, env)
      ok = ok and all(row['status'] == 'ok' for row in rows)
      results['rows'] += rows
      report.write_outputs(results, s.out, plot=False)
  results['all_checks_passed'] = ok
  report.write_outputs(results, s.out, plot=True)
  return results, ok
