r"""Cost of on-device task sampling relative to one MAML meta-step.

  python -m experiments.studies.sampler_benchmark --out=/tmp/sampler

Draws meta-batches of Omniglot tasks (default 32 tasks of 20-way 5-shot
15-query from the Vinyals training split, 4,112 classes) with the jitted
sampler, and times one second-order MAML meta-step (Conv-4, 64 filters, one
inner step) on such a batch, both on the same device in the same run. Writes
`OUT/sampler_benchmark.json` with medians and the ratio.
"""

import os
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import optax

import jaxmeta
from jaxmeta.data import episodes
from jaxmeta.data import omniglot
from .. import common

FLAGS = flags.FLAGS
# The flags that are `run`'s arguments of the same names.
RUN_FLAGS = (
  'out num_tasks ways shots queries num_filters repeats sample_repeats '
  'data_dir task_chunk_size'
).split()


def define_flags() -> None:
  """Defines the flags; only when run as a program (absl flags are global)."""
  flags.DEFINE_string('out', None, 'Output directory.')
  flags.DEFINE_integer('num_tasks', 32, 'Tasks per meta-batch.')
  flags.DEFINE_integer('ways', 20, 'Classes per task.')
  flags.DEFINE_integer('shots', 5, 'Support examples per class.')
  flags.DEFINE_integer('queries', 15, 'Query examples per class.')
  flags.DEFINE_integer('num_filters', 64, 'Conv-4 filters.')
  flags.DEFINE_integer('repeats', 5, 'Timed meta-steps.')
  flags.DEFINE_integer('sample_repeats', 50, 'Timed sampling calls.')
  flags.DEFINE_string('data_dir', None, 'TFDS data dir.')
  flags.DEFINE_integer(
    'task_chunk_size',
    4,
    'Tasks vmapped at once in the meta-step (0: '
    'all); second-order MAML on 32 x 400 images needs ~27 GB unchunked.',
  )


def _median_seconds(fn, repeats):
  """Median and min seconds of `fn(i)`, i = 1..repeats, after `fn(0)`."""
  jax.block_until_ready(fn(0))  # Compile and warm up.
  times = []
  for i in range(1, repeats + 1):
    start = time.perf_counter()
    jax.block_until_ready(fn(i))
    times.append(time.perf_counter() - start)
  return statistics.median(times), min(times)


def run(
  out: str,
  num_tasks: int,
  ways: int,
  shots: int,
  queries: int,
  num_filters: int,
  repeats: int,
  sample_repeats: int,
  data_dir: str | None = None,
  task_chunk_size: int = 0,
) -> dict:
  """Times sampling and a meta-step; writes and returns the figures."""
  images = jax.device_put(omniglot.load('train', data_dir=data_dir).images)
  shape = dict(num_tasks=num_tasks, ways=ways, shots=shots, queries=queries)
  sample = jax.jit(lambda key, imgs: episodes.sample_tasks(key, imgs, **shape))
  key = jax.random.PRNGKey(0)
  sample_s, sample_min = _median_seconds(
    lambda i: sample(jax.random.fold_in(key, i), images), sample_repeats
  )

  model = jaxmeta.conv4(ways, images.shape[2:], num_filters=num_filters)
  learner = jaxmeta.maml(
    model, jaxmeta.classification_loss, inner_lr=0.1, num_inner_steps=1
  )
  optimizer = optax.adam(1e-3)
  state = jaxmeta.init_train_state(learner, optimizer, key)
  step = jax.jit(
    jaxmeta.make_meta_train_step(
      learner, optimizer, task_chunk_size=task_chunk_size or None
    )
  )
  tasks = sample(key, images)
  step_s, step_min = _median_seconds(lambda i: step(state, tasks)[1], repeats)
  results = {
    'device': jax.devices()[0].device_kind,
    'platform': platform.processor() or platform.machine(),
    'cpu_count': os.cpu_count(),
    'jax_version': jax.__version__,
    'num_classes': int(images.shape[0]),
    **shape,
    'num_filters': num_filters,
    'task_chunk_size': task_chunk_size,
    'sample_median_ms': 1e3 * sample_s,
    'sample_min_ms': 1e3 * sample_min,
    'meta_step_median_ms': 1e3 * step_s,
    'meta_step_min_ms': 1e3 * step_min,
    'sample_fraction_of_meta_step': sample_s / step_s,
    'repeats': repeats,
    'sample_repeats': sample_repeats,
    'date': time.strftime('%Y-%m-%d'),
  }
  common.write_json(os.path.join(out, 'sampler_benchmark.json'), results)
  return results


def main(argv):
  common.check_command_line(argv, 'out')
  r = run(**{name: FLAGS[name].value for name in RUN_FLAGS})
  print(
    f'{r["num_tasks"]} tasks of {r["ways"]}-way {r["shots"]}-shot '
    f'{r["queries"]}-query on {r["device"]}: sampling '
    f'{r["sample_median_ms"]:.2f} ms, MAML meta-step '
    f'{r["meta_step_median_ms"]:.1f} ms (median): sampling is '
    f'{100 * r["sample_fraction_of_meta_step"]:.2f}% of a meta-step.'
  )


if __name__ == '__main__':
  common.reexec_with_huge_pages()
  define_flags()
  app.run(main)
