"""Conv/precision variants of one jaxmeta meta-step, timed interleaved, and
the kernel time of each from a JAX profiler trace.

The script behind `probe_omniglot_5w1s_maml.json` (and the earlier
`earlier/probe.log` and `earlier/probe_omniglot_5w1s_maml.json`; see
NOTES.md), kept to reproduce them; `device_run.sh` runs it. From the repository root:

  PYTHONPATH=. python benchmarks/h200/gpu_probe.py OUTDIR [config] [algorithm]

Environment: PROBE_ROUNDS (15), PROBE_VARIANTS (indices into VARIANTS),
PROBE_BUILD_BUDGET (seconds of compiling before further variants are
skipped, 80), PROBE_PROFILE (1).
"""

import collections
import glob
import gzip
import json
import os
import statistics
import sys
import time

import jax

import jaxmeta
from experiments.benchmark import configs
from experiments.benchmark import jax_step

out = sys.argv[1]
config_name = sys.argv[2] if len(sys.argv) > 2 else 'omniglot_5w1s'
algorithm = sys.argv[3] if len(sys.argv) > 3 else 'maml'
rounds = int(os.environ.get('PROBE_ROUNDS', '15'))
os.makedirs(out, exist_ok=True)
cfg = configs.get_config(config_name)
data_key, init_key = jax.random.split(jax.random.key(0))
tasks = jax_step.make_tasks(cfg, data_key)
print('devices', jax.devices(), jax.__version__, flush=True)

VARIANTS = [
  # (conv, precision, chunk)
  ('patches', None, None),
  ('patches_cf', None, None),
  ('xla', None, None),
  ('patches', 'highest', None),
  ('xla', 'highest', None),
  ('patches', None, 8),
  ('xla', None, 8),
  # The CPU default (added after the run in earlier/probe.log).
  ('patches_cf_2pass', None, None),
]
only = os.environ.get('PROBE_VARIANTS')
if only:
  VARIANTS = [VARIANTS[int(i)] for i in only.split(',')]


def name(v):
  return f'{v[0]}/{v[1] or "default"}/chunk{v[2] or "all"}'


built = {}
build_budget = float(os.environ.get('PROBE_BUILD_BUDGET', '80'))
start_builds = time.perf_counter()
for v in VARIANTS:
  if time.perf_counter() - start_builds > build_budget:
    print(f'[build] {name(v)} skipped: build budget spent', flush=True)
    continue
  conv, prec, chunk = v
  learner, opt = jax_step.jax_setup(cfg, algorithm, conv)
  state = jaxmeta.init_train_state(learner, opt, init_key)
  step = jax.jit(
    jaxmeta.make_meta_train_step(learner, opt, task_chunk_size=chunk)
  )
  t0 = time.perf_counter()
  try:
    with jax.default_matmul_precision(prec):
      compiled = step.lower(state, tasks).compile()
    t1 = time.perf_counter()
    res = compiled(state, tasks)
    jax.block_until_ready(res)
    t2 = time.perf_counter()
  except Exception as e:
    print(f'[build] {name(v)} FAILED {type(e).__name__}: {e}', flush=True)
    continue
  built[v] = (compiled, state)
  print(
    f'[build] {name(v)} compile {t1 - t0:.1f}s first {t2 - t1:.3f}s '
    f'loss {float(res[1]["loss"]):.5f}',
    flush=True,
  )

for v, (c, s) in built.items():
  for _ in range(2):
    jax.block_until_ready(c(s, tasks))
times = collections.defaultdict(list)
for _ in range(rounds):
  for v, (c, s) in built.items():
    t0 = time.perf_counter()
    jax.block_until_ready(c(s, tasks))
    times[v].append(time.perf_counter() - t0)
summary = {}
for v in built:
  ms = [1e3 * t for t in times[v]]
  summary[name(v)] = {'median_ms': statistics.median(ms), 'min_ms': min(ms)}
  print(
    f'[time] {config_name} {algorithm} {name(v)}: median '
    f'{statistics.median(ms):.2f} ms min {min(ms):.2f} ms',
    flush=True,
  )


def profile(v, steps=3):
  c, s = built[v]
  logdir = os.path.join('/tmp/probe_trace', name(v).replace('/', '_'))
  with jax.profiler.trace(logdir, create_perfetto_trace=True):
    t0 = time.perf_counter()
    for _ in range(steps):
      jax.block_until_ready(c(s, tasks))
    wall = (time.perf_counter() - t0) / steps
  path = glob.glob(
    os.path.join(logdir, '**', 'perfetto_trace.json.gz'), recursive=True
  )[0]
  with gzip.open(path) as f:
    d = json.load(f)
  events = d['traceEvents'] if isinstance(d, dict) else d
  pnames = {
    e['pid']: e['args']['name']
    for e in events
    if e.get('ph') == 'M' and e.get('name') == 'process_name'
  }
  gpu_pids = {p for p, n in pnames.items() if 'GPU' in n or 'gpu' in n}
  kern = collections.Counter()
  count = collections.Counter()
  busy = 0.0
  for e in events:
    if e.get('ph') == 'X' and e.get('pid') in gpu_pids:
      kern[e['name']] += e.get('dur', 0) / steps
      count[e['name']] += 1 / steps
      busy += e.get('dur', 0) / steps
  print(
    f'[profile] {name(v)}: wall {1e3 * wall:.2f} ms/step, gpu pids '
    f'{[pnames[p] for p in gpu_pids]}, summed GPU event time '
    f'{busy / 1e3:.2f} ms/step over {sum(count.values()):.0f} events',
    flush=True,
  )
  for k, us in kern.most_common(25):
    print(f'   {us / 1e3:8.3f} ms  x{count[k]:5.0f}  {k[:110]}')
  return {
    'wall_ms': 1e3 * wall,
    'gpu_ms': busy / 1e3,
    'top': [(k, us / 1e3, count[k]) for k, us in kern.most_common(60)],
  }


profiles = {}
if os.environ.get('PROBE_PROFILE', '1') == '1':
  for v in built:
    if v[1] is None and v[2] is None:
      try:
        profiles[name(v)] = profile(v)
      except Exception as e:
        print(f'[profile] {name(v)} FAILED {type(e).__name__}: {e}', flush=True)
with open(os.path.join(out, f'probe_{config_name}_{algorithm}.json'), 'w') as f:
  json.dump(
    {
      'summary': summary,
      'profiles': profiles,
      'device': str(jax.devices()[0].device_kind),
      'jax': jax.__version__,
    },
    f,
    indent=1,
  )
