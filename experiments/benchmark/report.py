"""What a run writes (benchmark.json, .md, .png), and the machine facts."""

import importlib.metadata
import math
import os
import platform
from typing import Any, Sequence

import jax
import numpy as np

import jaxmeta
from .. import common
from .checks import FLOAT64_TOL

BYTES_PER_MIB = 2**20
# The table's columns of a timed row: (row field, format, header).
TIMED_COLUMNS = [
  ('median_ms', '.1f', 'median ms'),
  ('min_ms', '.1f', 'min ms'),
  ('num_timed_steps', 'd', 'steps'),
  ('tasks_per_s', '.2f', 'tasks/s'),
  ('compile_s', '.2f', 'compile s'),
  ('first_step_s', '.2f', 'first step s'),
  ('peak_mib', '.0f', 'peak MiB'),
  ('flops', '.3g', 'FLOPs per step'),
  ('achieved_gflops', '.1f', 'GFLOP/s'),
  ('fraction_of_fp32_peak', '.1%', 'of fp32 peak'),
]


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo, else `platform.processor()`."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
  """The installed version of distribution `name`, or None."""
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def environment(torch_device: str | None) -> dict[str, Any]:
  """Device names, library versions and machine facts for every row."""
  jax_device = jax.devices()[0]
  env = {
    'jax_backend': jax.default_backend(),
    'jax_device': f'{jax_device.platform}:{jax_device.device_kind}',
    'cpu': cpu_name(),
    'cpu_count': os.cpu_count(),
    'python': platform.python_version(),
    'platform': platform.platform(),
    'versions': {
      p: package_version(p)
      for p in ('jax', 'jaxlib', 'optax', 'numpy', 'torch', 'higher')
    },
    'jaxmeta': getattr(jaxmeta, '__version__', None),
    # Set by `common.reexec_with_huge_pages` (both JAX and PyTorch run in
    # this one process, under the same allocator settings).
    'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
  }
  if torch_device is not None:
    import torch

    env['torch_device'] = (
      torch.cuda.get_device_name(0)
      if torch_device == 'cuda'
      else f'cpu:{cpu_name()}'
    )
    env['torch_num_threads'] = torch.get_num_threads()
  return env


def load_average() -> list[float] | None:
  """The 1, 5 and 15 minute load averages, or None where unknown."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def row_label(row: dict[str, Any]) -> str:
  """'jaxmeta [conv impl]' or the torch implementation's name."""
  if row['implementation'] == 'jaxmeta':
    return f'jaxmeta [{row["conv_impl"]}]'
  return row['implementation'].replace('_', ' ')


def finite_or_null(value: Any) -> Any:
  """`value` with every non-finite float replaced by None: strict JSON
  parsers refuse the NaN and Infinity that Python's `json` writes."""
  if isinstance(value, dict):
    return {k: finite_or_null(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite_or_null(v) for v in value]
  if isinstance(value, (float, np.floating)) and not math.isfinite(value):
    return None
  return value


def write_outputs(results: dict[str, Any], out: str, plot: bool) -> None:
  """Writes benchmark.json (strict JSON), benchmark.md and, if `plot`,
  benchmark.png."""
  common.write_json(
    os.path.join(out, 'benchmark.json'),
    finite_or_null(common.to_python(results)),
  )
  with open(os.path.join(out, 'benchmark.md'), 'w') as f:
    f.write(markdown(results))
  if plot:
    plot_rows(results['rows'], os.path.join(out, 'benchmark.png'))


def _fmt(value, spec: str) -> str:
  """`value` formatted, or '-' for None."""
  return '-' if value is None else format(value, spec)


def peak_summary(peaks: Sequence[dict[str, Any]] | None) -> str:
  """`roofline.matmul_peaks` in one line, or 'not measured'."""
  if not peaks:
    return 'not measured'
  return f'n = {peaks[0]["size"]}, GFLOP/s ' + ', '.join(
    f'{p["framework"]} {p["dtype"]} {p["gflops"]:.1f}' for p in peaks
  )


def markdown(results: dict[str, Any]) -> str:
  """The results as a markdown table with the machine and the date."""
  env = results['environment']
  lines = [
    '# jaxmeta meta-step benchmark',
    '',
    f'- Date (UTC): {results["date"]}',
    f'- JAX device: {env["jax_device"]}; CPU: {env["cpu"]} '
    f'({env["cpu_count"]} logical cores)',
    f'- torch device: {env.get("torch_device", "-")}; torch threads: '
    f'{env.get("torch_num_threads", "-")}',
    '- Versions: '
    + ', '.join(f'{k} {v}' for k, v in env['versions'].items() if v),
    f'- GLIBC_TUNABLES: {env.get("glibc_tunables") or "-"}',
    f'- Timed precision: {results["timing_precision"]}; cross-check: '
    f'{results["check_precision"]}, tolerance '
    f'{results["settings"]["check_tol"]:g} relative per tensor',
    f'- Data: {results["data"]}',
    f'- Command: `{results["command"]}`',
    '- ms per meta-step = the whole step (meta-gradient over the meta-batch '
    '+ Adam update); median and min over the timed steps after warm-up. '
    'first step = JAX compile + first run; torch first run.',
    "- x vs torch loop: the loop's median over this row's. paired: the "
    "implementations take turns; the median over turns of the loop's "
    "turn time over this row's in the same round, with its quartiles "
    '(less moved by a burst of load on a shared machine).',
    '- grad check: max relative error per tensor of the float32 '
    'meta-gradient against the reference; vs float64: its error against '
    'the float64 meta-gradient, and in brackets the float64 agreement (that '
    f'implementation in float64 against jaxmeta in float64, <= {FLOAT64_TOL:g} '
    'required). Pass: float64 agreement, and float32 error within the '
    'tolerance or "(f64 rule)": within the reference\'s own float32 error '
    '(its distance from float64) of the reference or of float64.',
    "- FLOPs per step: XLA's count of the jaxmeta step, every loop "
    "unrolled (a torch row: the same algorithm's reference jaxmeta step); "
    'GFLOP/s: FLOPs over the median step time; of fp32 peak: that over the '
    'best float32 matmul below.',
    f'- Matmul peak: {peak_summary(results.get("matmul_peak"))}',
    '',
  ]
  headers = (
    ['config', 'algorithm', 'implementation']
    + [header for _, _, header in TIMED_COLUMNS]
    + ['x vs torch loop', 'paired x vs loop [quartiles]']
    + ['grad check (max rel err)', 'vs float64 (f64 agreement)']
  )
  lines += [
    '| ' + ' | '.join(headers) + ' |',
    '|' + '---|' * len(headers),
  ]
  loop_ms = {
    (r['config'], r['algorithm']): r['median_ms']
    for r in results['rows']
    if r['implementation'] == 'torch_loop' and r['status'] == 'ok'
  }
  for r in results['rows']:
    ok = r['status'] == 'ok'
    untimed = [r['status']] + [''] * (len(TIMED_COLUMNS) + 1)
    base = loop_ms.get((r['config'], r['algorithm']))
    speedup = f'{base / r["median_ms"]:.2f}' if ok and base else '-'
    paired = '-'
    if ok and r.get('paired_x_vs_torch_loop') is not None:
      q1, q3 = r['paired_x_vs_torch_loop_quartiles']
      paired = f'{r["paired_x_vs_torch_loop"]:.2f} [{q1:.2f}, {q3:.2f}]'
    peak = r.get('peak_memory_bytes')
    r = dict(r, peak_mib=peak / BYTES_PER_MIB if peak else None)
    check = (
      'ref'
      if r['implementation'] == 'jaxmeta'
      and r['cross_check_max_rel_err'] == 0.0
      else _fmt(r['cross_check_max_rel_err'], '.1e')
    )
    check = ('pass ' if r['cross_check_passed'] else 'FAIL ') + check
    if r.get('cross_check_verdict') == 'float64':
      check += ' (f64 rule)'
    vs64 = _fmt(r.get('cross_check_vs_float64'), '.1e')
    if r.get('float64_agreement') is not None:
      vs64 += f' ({r["float64_agreement"]:.0e})'
    timed = [_fmt(r.get(k), spec) for k, spec, _ in TIMED_COLUMNS]
    lines.append(
      f'| {r["config"]} (mb {r["settings"]["meta_batch"]}) | '
      f'{r["algorithm"]} | {row_label(r)} | '
      + (' | '.join(timed + [speedup, paired] if ok else untimed))
      + f' | {check} | {vs64} |'
    )
  return '\n'.join(lines) + '\n'


def plot_rows(rows: Sequence[dict[str, Any]], path: str) -> None:
  """Bar chart: ms per meta-step, one group per config x algorithm."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  ok_rows = [r for r in rows if r['status'] == 'ok']
  group = lambda r: f'{r["config"]}\n{r["algorithm"]}'
  groups = list(dict.fromkeys(map(group, rows)))
  labels = list(dict.fromkeys(map(row_label, rows)))
  width = 0.8 / max(len(labels), 1)
  fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups)), 4.5))
  for j, label in enumerate(labels):
    mine = [r for r in ok_rows if row_label(r) == label]
    offset = (j - (len(labels) - 1) / 2) * width
    xs = [groups.index(group(r)) + offset for r in mine]
    ax.bar(xs, [r['median_ms'] for r in mine], width=width, label=label)
  ax.set_xticks(range(len(groups)))
  ax.set_xticklabels(groups, fontsize=8)
  if ok_rows:
    ax.set_yscale('log')
  ax.set_ylabel('ms per meta-step (median, log scale)')
  ax.set_title('Meta-step time (lower is better)')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
