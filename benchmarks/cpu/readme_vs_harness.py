"""The README's library step against the harness's, in one process.

Builds the README example's meta-step (`jaxmeta.make_meta_train_step` on
the tasks drawn by `episodes.sample_tasks`) and the main job's
(`experiments.build.make_train_step`, with its non-finite guard and model
keys) for the same learner and data, then times them in alternating turns
of `--steps` steps, `--rounds` times; prints milliseconds per step.

    python benchmarks/cpu/readme_vs_harness.py --rounds=4 --steps=15

Both run in this process, so they share its allocator: the programs'
`reexec_with_huge_pages` is not applied here (start the process with
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` to time both with it).
"""

import time

from absl import app
from absl import flags
import jax
import numpy as np
import optax

import jaxmeta
from jaxmeta.data import episodes
from experiments import build
from experiments import tasks
from experiments.configs import default

_ROUNDS = flags.DEFINE_integer('rounds', 4, 'Turns of each step.')
_STEPS = flags.DEFINE_integer('steps', 15, 'Timed steps per turn.')


def main(argv):
  del argv
  config = default.get_config()
  family = tasks.episodic(config)
  train = family.load('train')
  model = jaxmeta.conv4(num_classes=5, num_filters=32)
  learner = jaxmeta.maml(
    model, jaxmeta.classification_loss, inner_lr=0.4, num_inner_steps=1
  )
  optimizer = optax.adam(optax.linear_schedule(2e-3, 0.0, 2400))

  def sample_train(key):  # As the README: 8 tasks, 5-way 1-shot, 5 queries.
    return episodes.sample_tasks(key, train, 8, 5, 1, 5)

  readme = jax.jit(
    jaxmeta.make_meta_train_step(learner, optimizer, sample_train),
    donate_argnums=0,
  )
  harness = build.make_train_step(learner, optimizer, family, config)
  steps = {'readme': readme, 'harness': lambda s: harness(s, train)}
  states, times = {}, {name: [] for name in steps}
  for name, step in steps.items():
    state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
    states[name] = jax.block_until_ready(step(state)[0])
  for _ in range(_ROUNDS.value):
    for name, step in steps.items():
      state, start = states[name], time.perf_counter()
      for _ in range(_STEPS.value):
        state, _ = step(state)
      states[name] = jax.block_until_ready(state)
      times[name].append(1e3 * (time.perf_counter() - start) / _STEPS.value)
  for name, values in times.items():
    print(f'{name}: {np.median(values):.1f} ms per step (turns: {values})')


if __name__ == '__main__':
  app.run(main)
