"""Episodic sampling on the host, for splits too large for the device.

`episodes.sample_tasks` keeps a whole split on the device, the fastest path
whenever it fits. When it does not, `sample_tasks_host` draws the meta-batch
with NumPy and transfers only the chosen images (uint8, made float32 on the
device): the split can live in host memory or stay on disk as a `np.memmap`
(`np.load(path, mmap_mode='r')`); 4 tasks of 5-way 5-shot 15-query
mini-ImageNet move 8.5 MB.

Tasks have the layout of `episodes.sample_tasks` and are a deterministic
function of the key, but not the same tasks: the random streams differ
(NumPy's PCG64 seeded from the key's bits).

Example::

  train = jaxmeta.data.load('miniimagenet', 'train')  # images stay on the host
  for step in range(num_steps):
    tasks = sample_tasks_host(jax.random.fold_in(key, step), train.images,
                              num_tasks=4, ways=5, shots=5, queries=15)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta.data import episodes
from jaxmeta.data.episodes import check_episode_config
from jaxmeta.data.episodes import EpisodeConfigError
from jaxmeta.types import PRNGKey, Task


def host_rng(key: PRNGKey | np.random.Generator) -> np.random.Generator:
  """A NumPy generator seeded from all bits of a JAX key (typed or raw
  uint32); a `np.random.Generator` is returned as it is."""
  if isinstance(key, np.random.Generator):
    return key
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  words = np.asarray(key)
  if words.dtype != np.uint32:
    raise EpisodeConfigError(
      f'key must be a JAX PRNG key or a np.random.Generator, got an array of '
      f'dtype {words.dtype}. Fix: pass e.g. jax.random.key(seed).'
    )
  return np.random.default_rng([int(w) for w in words.ravel()])


def sample_task_indices(
  rng: np.random.Generator,
  num_classes: int,
  num_examples: int,
  num_tasks: int,
  ways: int,
  shots: int,
  queries: int,
  counts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Which classes (label i is `classes[t, i]`) and examples (the first
  `shots` for the support set) a meta-batch uses, all without replacement;
  with `counts`, as `episodes.sample_task` draws them.

  Returns:
    (classes int64 `[num_tasks, ways]`, examples int64
    `[num_tasks, ways, shots + queries]`).
  """
  check_episode_config(num_classes, num_examples, ways, shots, queries, counts)
  num_tasks = episodes.check_at_least_one('num_tasks', num_tasks)
  drawable = np.arange(num_classes)
  if counts is not None:
    counts = np.asarray(counts)
    drawable = np.flatnonzero(counts >= shots + queries)
  classes = np.stack(
    [rng.choice(drawable, ways, replace=False) for _ in range(num_tasks)]
  )
  scores = rng.random((num_tasks, ways, num_examples))
  if counts is not None:  # Padding rows sort last.
    scores[np.arange(num_examples) >= counts[classes][..., None]] = np.inf
  examples = np.argsort(scores, axis=-1)[..., : shots + queries]
  return classes, examples


# Splits a meta-batch's images on the device, where they arrive as uint8.
_split_tasks = jax.jit(
  jax.vmap(episodes.split_support_query, in_axes=(0, None)),
  static_argnums=1,
)


def sample_tasks_host(
  key: PRNGKey | np.random.Generator,
  images: np.ndarray,
  num_tasks: int,
  ways: int,
  shots: int,
  queries: int,
  *,
  device=None,
  counts: np.ndarray | None = None,
) -> Task:
  """Samples a meta-batch on the host and transfers only its images.

  Args:
    key: a JAX PRNG key (its bits seed NumPy; see `host_rng`) or a
      `np.random.Generator` (advanced in place).
    images: `[classes, examples, H, W, C]` host array (NumPy or memmap),
      as `episodes.sample_task`'s.
    num_tasks, ways, shots, queries: as `episodes.sample_tasks`'s.
    device: where to put the tasks (a device or sharding for
      `jax.device_put`); default JAX's default device.
    counts: None or int `[classes]`, the real examples of each class, drawn
      as `episodes.sample_task` draws them (never a padding row).

  Returns:
    `Task` on the device, as `episodes.sample_tasks` returns, e.g. support_x
    float32 `[num_tasks, ways * shots, H, W, C]`.

  Raises:
    EpisodeConfigError: if the split cannot supply the tasks.
  """
  episodes.check_images(images)
  rng = host_rng(key)
  classes, examples = sample_task_indices(
    rng, *images.shape[:2], num_tasks, ways, shots, queries, counts
  )
  # [num_tasks, ways, shots + queries, H, W, C]
  chosen = np.asarray(images[classes[:, :, None], examples])
  return _split_tasks(jax.device_put(chosen, device), shots)
