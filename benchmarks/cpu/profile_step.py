"""Where the CPU MAML meta-step's time goes: XLA ops by total time.

The step of `python -m experiments.benchmark --configs=omniglot_5w1s`
(Omniglot 5-way 1-shot, 15 queries per class, Conv-4 with 64 filters, one
inner step at 0.4, Adam) on random images, at `--meta_batch` tasks, traced
with `jax.profiler` over `--steps` steps after a warm-up step; prints the
ops that took longest (milliseconds per step, calls per step).

    python benchmarks/cpu/profile_step.py --meta_batch=8 --top=25

Op names are those of the optimised HLO: run with
`XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text` to read what an op
computes (its shapes are in `DIR/*jit_step*after_optimizations.txt`).
"""

import collections
import glob
import gzip
import json
import tempfile

from absl import app
from absl import flags
import jax
import numpy as np
import optax

import jaxmeta
from jaxmeta.data import episodes

_META_BATCH = flags.DEFINE_integer('meta_batch', 8, 'Tasks per meta-step.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Traced steps.')
_TOP = flags.DEFINE_integer('top', 25, 'Ops to print.')


def main(argv):
  del argv
  images = np.random.default_rng(0).integers(
    0, 256, (1200, 20, 28, 28, 1), dtype=np.uint8
  )
  model = jaxmeta.conv4(num_classes=5, num_filters=64)
  learner = jaxmeta.maml(
    model, jaxmeta.classification_loss, inner_lr=0.4, num_inner_steps=1
  )
  optimizer = optax.adam(1e-3)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  tasks = episodes.sample_tasks(
    jax.random.key(1), jax.device_put(images), _META_BATCH.value, 5, 1, 15
  )
  step = jax.jit(
    jaxmeta.make_meta_train_step(learner, optimizer, lambda _: tasks)
  )
  state = jax.block_until_ready(step(state)[0])
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for _ in range(_STEPS.value):
      state = jax.block_until_ready(step(state)[0])
    jax.profiler.stop_trace()
    (path,) = glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)['traceEvents']
  total, calls = collections.Counter(), collections.Counter()
  for e in events:
    # Skip the Python frames ('$...') and the executor's own spans.
    name = e.get('name', '')
    if e.get('ph') == 'X' and not name.startswith(('$', 'ThunkExecutor')):
      total[name] += e['dur']
      calls[name] += 1
  per_step = lambda v: v / _STEPS.value
  for name, micros in total.most_common(_TOP.value):
    print(
      f'{per_step(micros) / 1e3:9.1f} ms {per_step(calls[name]):6.0f}  {name}'
    )


if __name__ == '__main__':
  app.run(main)
