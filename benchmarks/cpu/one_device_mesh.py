"""The README's step on its default one-device mesh against the same step of
a jaxmeta without a mesh, in paired rounds in one process.

  git archive BASE jaxmeta | tar -x -C /tmp/before
  python benchmarks/cpu/one_device_mesh.py --before=/tmp/before [--rounds=20]

Both copies of the library are imported side by side (`--before` holds the
other's `jaxmeta/`; the data modules and the sampler are this checkout's)
and run the README's example as written there (MAML,
Omniglot 5-way 1-shot, meta-batches of 8 tasks, drawn inside the step) from
the same initial state. Each round times a block of steps of each, in turns
whose order alternates, so a change of the machine's load falls on both; the
ratio of a round is this library's time over the other's. Also reported: the
largest difference of the parameters after the same steps.
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


def _import_jaxmeta(root):
  """The jaxmeta under `root`, as a copy of its own (without jaxmeta.data,
  whose dataset builders register once per process)."""
  for name in [n for n in sys.modules if n.split('.')[0] == 'jaxmeta']:
    del sys.modules[name]
  sys.path.insert(0, str(root))
  try:
    import jaxmeta
  finally:
    sys.path.remove(str(root))
  assert pathlib.Path(jaxmeta.__file__).is_relative_to(root), jaxmeta.__file__
  assert not any(n.startswith('jaxmeta.data') for n in sys.modules)
  return jaxmeta


def _readme_step(jaxmeta, episodes, train):
  """The README's model, learner, optimiser, state and jitted step."""
  model = jaxmeta.conv4(num_classes=5, num_filters=32)
  learner = jaxmeta.maml(
    model, jaxmeta.classification_loss, inner_lr=0.4, num_inner_steps=1
  )
  optimizer = optax.adam(optax.linear_schedule(2e-3, 0.0, 2400))
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  sample_train = lambda key: episodes.sample_tasks(key, train, 8, 5, 1, 5)
  step = jax.jit(
    jaxmeta.make_meta_train_step(learner, optimizer, sample_train),
    donate_argnums=0,
  )
  return state, step


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--before', required=True)
  parser.add_argument('--rounds', type=int, default=20)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--out', default=None)
  args = parser.parse_args()

  libraries = {
    'before': _import_jaxmeta(pathlib.Path(args.before).resolve()),
    'after': _import_jaxmeta(ROOT),
  }
  # The sampler and the data are this checkout's, for both.
  from jaxmeta.data import episodes
  from jaxmeta.data import omniglot

  train = jax.device_put(omniglot.load('train').images)
  runs = {}
  for name, jaxmeta in libraries.items():
    state, step = _readme_step(jaxmeta, episodes, train)
    state, _ = step(state)  # Compiles.
    runs[name] = [jax.block_until_ready(state), step]

  def timed(name):
    state, step = runs[name]
    start = time.perf_counter()
    for _ in range(args.steps):
      state, _ = step(state)
    runs[name][0] = jax.block_until_ready(state)
    return (time.perf_counter() - start) / args.steps

  times = {name: [] for name in runs}
  for r in range(args.rounds):
    for name in ('before', 'after') if r % 2 == 0 else ('after', 'before'):
      times[name].append(timed(name))
  ratios = np.array(times['after']) / np.array(times['before'])
  before, after = (jax.device_get(runs[n][0].params) for n in runs)
  difference = max(
    float(np.max(np.abs(a - b)))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))
  )
  report = {
    'device': jax.devices()[0].device_kind,
    'jax': jax.__version__,
    'rounds': args.rounds,
    'steps_per_round': args.steps,
    'step_ms_median': {n: 1e3 * float(np.median(t)) for n, t in times.items()},
    'after_over_before': {
      'median': float(np.median(ratios)),
      'quartiles': [float(q) for q in np.percentile(ratios, [25, 75])],
      'min': float(ratios.min()),
      'max': float(ratios.max()),
    },
    'steps_taken': int(runs['after'][0].step),
    'max_abs_param_difference': difference,
  }
  print(json.dumps(report, indent=1))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(report, indent=1) + '\n')


if __name__ == '__main__':
  main()
