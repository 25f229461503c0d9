"""The README's library example against the harness's step, and evaluation
one task at a time against all tasks vmapped, in turns in one process.

  python benchmarks/cpu/library_defaults.py [--rounds=10]

The step of the README's example (`make_meta_train_step` with nothing but a
sampler: the library's defaults) and the harness's compiled step
(`experiments.build.make_train_step` on `experiments/configs/default.py`,
the main job) train the same model on the same kind of meta-batch; a user
calling the library as the README shows should get the harness's speed.
Evaluation compares `make_evaluate`'s default chunking with vmapping all of
a chunk of tasks at once (what the harness did before the default changed).
Times are medians over alternating turns, so a change of the machine's load
falls on both sides.
"""

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import jaxmeta  # noqa: E402
from experiments import build  # noqa: E402
from experiments import tasks  # noqa: E402
from experiments.configs import default  # noqa: E402
from jaxmeta.data import episodes  # noqa: E402


def _timed(fn, *args):
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rounds', type=int, default=10)
  parser.add_argument('--out', default=None)
  args = parser.parse_args()

  config = default.get_config()
  family = tasks.build(config, None, None)
  train = family.load('train')
  learner = build.build_learner(config, family, family.input_shape(train))
  optimizer = build.build_optimizer(config)
  harness_step = build.make_train_step(learner, optimizer, family, config)
  harness_state = jaxmeta.init_train_state(
    learner, optimizer, jax.random.key(0)
  )

  # The README's example, as written there.
  images = train  # uint8 [classes, 20, 28, 28, 1], on the device
  model = jaxmeta.conv4(num_classes=5, num_filters=32)
  readme_learner = jaxmeta.maml(
    model, jaxmeta.classification_loss, inner_lr=0.4, num_inner_steps=1
  )
  readme_optimizer = optax.adam(optax.linear_schedule(2e-3, 0.0, 2400))
  readme_state = jaxmeta.init_train_state(
    readme_learner, readme_optimizer, jax.random.key(0)
  )
  sample = lambda key: episodes.sample_tasks(key, images, 8, 5, 1, 5)
  readme_step = jax.jit(
    jaxmeta.make_meta_train_step(readme_learner, readme_optimizer, sample)
  )

  def run_harness(state):
    return harness_step(state, train)[0]

  def run_readme(state):
    return readme_step(state)[0]

  states = {'harness': harness_state, 'readme': readme_state}
  steps = {'harness': run_harness, 'readme': run_readme}
  for name in steps:  # Compile, and one untimed step.
    states[name] = steps[name](states[name])
    states[name] = steps[name](states[name])
  times = {name: [] for name in steps}
  for _ in range(args.rounds):
    for name in steps:
      start = time.perf_counter()
      states[name] = jax.block_until_ready(steps[name](states[name]))
      times[name].append(time.perf_counter() - start)

  eval_tasks = episodes.sample_tasks(
    jax.random.key(1), images, config.eval_batch_size, 5, 1, 5
  )
  params = readme_state.params
  evaluate = {
    'default': jax.jit(jaxmeta.make_evaluate(readme_learner, 3)),
    'vmap_all': jax.jit(
      jaxmeta.make_evaluate(
        readme_learner, 3, task_chunk_size=config.eval_batch_size
      )
    ),
  }
  for fn in evaluate.values():
    jax.block_until_ready(fn(params, eval_tasks))
  eval_times = {name: [] for name in evaluate}
  for _ in range(max(args.rounds // 2, 3)):
    for name, fn in evaluate.items():
      eval_times[name].append(_timed(fn, params, eval_tasks))

  median = {k: float(np.median(v)) for k, v in times.items()}
  eval_median = {k: float(np.median(v)) for k, v in eval_times.items()}
  report = {
    'device': jax.devices()[0].device_kind,
    'jax': jax.__version__,
    'jaxmeta': jaxmeta.__version__,
    'rounds': args.rounds,
    'step_ms': {k: 1e3 * v for k, v in median.items()},
    'readme_over_harness': median['readme'] / median['harness'],
    'eval_tasks': config.eval_batch_size,
    'eval_tasks_per_second': {
      k: config.eval_batch_size / v for k, v in eval_median.items()
    },
  }
  print(json.dumps(report, indent=1))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(report, indent=1) + '\n')


if __name__ == '__main__':
  main()
