"""Memory and time of one second-order MAML task with and without remat.

ResNet-12 (standard widths, 12.4M parameters) on one 5-way 1-shot task of
84x84x3 images with 15 queries per class, second-order MAML with 1 and 5
inner steps, its meta-gradient (`learner.task_update`) compiled on the CPU:
for each `jaxmeta.models.REMAT_POLICIES` entry (and 'none', no
rematerialisation) XLA's temporary memory (`xla_costs.task_costs`); for the
`--timed` policies also the wall time of the compiled step (median of
`--repeats` after one warm-up call) and the peak resident memory of the
process that ran it. Each configuration runs in a process of its own, so
that the peak resident memory is its own.

  python benchmarks/scaling/remat.py --out=benchmarks/scaling/remat.json

On a shared CPU the times are comparable only within one run.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

POLICIES = ('none', 'full', 'dots', 'dots_with_no_batch_dims')
WAYS, SHOTS, QUERIES, SIZE = 5, 1, 15, 84
INNER_LR = 0.01


def measure(inner_steps: int, policy: str, repeats: int) -> dict:
  """One configuration, in this process: compiled memory and, with
  `repeats > 0`, the time of the step and the peak resident memory."""
  import jax
  import jax.numpy as jnp

  import jaxmeta
  from experiments.benchmark import xla_costs

  model = jaxmeta.resnet12(WAYS, (SIZE, SIZE, 3), drop_rate=0.0)
  if policy != 'none':
    model = jaxmeta.models.rematerialised(model, policy)
  learner = jaxmeta.maml(
    model.init,
    jaxmeta.classification_loss(model.apply),
    inner_lr=INNER_LR,
    num_inner_steps=inner_steps,
  )
  params = jax.jit(learner.init)(jax.random.key(0))
  keys = jax.random.split(jax.random.key(1), 2)
  support, query = WAYS * SHOTS, WAYS * QUERIES
  task = jaxmeta.Task(
    jax.random.uniform(keys[0], (support, SIZE, SIZE, 3)),
    jnp.arange(support, dtype=jnp.int32) % WAYS,
    jax.random.uniform(keys[1], (query, SIZE, SIZE, 3)),
    jnp.arange(query, dtype=jnp.int32) % WAYS,
  )
  start = time.perf_counter()
  compiled = jax.jit(learner.task_update).lower(params, task).compile()
  result = {
    'inner_steps': inner_steps,
    'policy': policy,
    'compile_s': round(time.perf_counter() - start, 1),
    'temp_bytes': xla_costs.compiled_costs(compiled)['temp_bytes'],
  }
  if repeats:
    jax.block_until_ready(compiled(params, task))  # Warm-up.
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(params, task))
      times.append(time.perf_counter() - start)
    result['step_s'] = round(statistics.median(times), 2)
    result['step_s_all'] = [round(t, 2) for t in times]
    # Linux reports kilobytes.
    result['peak_rss_bytes'] = (
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--out', default='')
  parser.add_argument('--inner_steps', default='1,5')
  parser.add_argument('--policies', default=','.join(POLICIES))
  parser.add_argument('--timed', default='none,full')
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--one', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    steps, policy, repeats = args.one.split(',')
    print(json.dumps(measure(int(steps), policy, int(repeats))))
    return
  import jax

  timed = args.timed.split(',') if args.timed else []
  runs = []
  for steps in [int(s) for s in args.inner_steps.split(',')]:
    for policy in args.policies.split(','):
      repeats = args.repeats if policy in timed else 0
      env = dict(os.environ, PYTHONPATH=os.getcwd())
      out = subprocess.run(
        [sys.executable, __file__, f'--one={steps},{policy},{repeats}'],
        check=True,
        capture_output=True,
        text=True,
        env=env,
      ).stdout
      runs.append(json.loads(out.strip().splitlines()[-1]))
      print(json.dumps(runs[-1]), flush=True)
  record = {
    'command': 'python benchmarks/scaling/remat.py ' + ' '.join(sys.argv[1:]),
    'jax': jax.__version__,
    'machine': f'{platform.machine()}, {os.cpu_count()} CPU cores',
    'task': f'ResNet-12, {WAYS}-way {SHOTS}-shot, {QUERIES} queries per '
    f'class, {SIZE}x{SIZE}x3, float32, second-order MAML',
    'runs': runs,
  }
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(record, f, indent=1)
      f.write('\n')


if __name__ == '__main__':
  main()
