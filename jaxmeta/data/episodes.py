"""Episodic sampling of N-way K-shot tasks, in pure JAX.

`sample_task` builds ONE task from a class-major image array and runs inside
`jit` and `vmap`; `sample_tasks` is its vmap over a meta-batch of keys. The
image array stays on device for the whole run: only the selected drawings are
gathered, never the whole split.

Example::

  train = jaxmeta.data.omniglot.load('train')
  images = jax.device_put(train.images)  # uint8 [classes, 20, 28, 28, 1]
  tasks = sample_tasks(key, images, num_tasks=32, ways=5, shots=1, queries=15)
  # tasks.support_x: float32 [32, 5, 28, 28, 1]; tasks.query_y: int32 [32, 75]
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta.types import Array, PRNGKey, Task

# `eval_task_keys` folds this into the seed's key so that evaluation tasks are
# not drawn from the same key stream as training tasks of the same seed.
_EVAL_STREAM = 0x45564C  # 'EVL'


class EpisodeConfigError(ValueError):
  """A task shape (ways, shots, queries) that the data cannot supply."""


def _static_int(name: str, value) -> int:
  if isinstance(value, bool):
    raise EpisodeConfigError(f'{name} must be a Python int, got {value!r}.')
  try:
    return operator.index(value)
  except TypeError as e:
    raise EpisodeConfigError(
      f'{name} must be a static Python int (it fixes array shapes), got '
      f'{value!r}. Fix: pass a plain int, e.g. via functools.partial or '
      '`static_argnames` under jit.'
    ) from e


def check_episode_config(
  num_classes: int,
  num_drawings: int,
  ways: int,
  shots: int,
  queries: int,
  counts=None,
) -> None:
  """Checks that a split of `num_classes` classes of `num_drawings` drawings
  (the first `counts[c]` of class c where `counts` is given, see
  `check_counts`) can supply tasks of this shape (see `sample_task`); else an
  `EpisodeConfigError` (a ValueError) naming the problem and the fix."""
  num_classes = _static_int('num_classes', num_classes)
  num_drawings = _static_int('num_drawings', num_drawings)
  ways = check_at_least_one('ways', ways)
  shots = check_at_least_one('shots', shots)
  queries = check_at_least_one('queries', queries)
  if ways > num_classes:
    raise EpisodeConfigError(
      f'ways={ways} is more than the {num_classes} classes of this split. '
      f'Fix: use ways <= {num_classes}, or a split with more classes (e.g. '
      'with rotations).'
    )
  if shots + queries > num_drawings:
    raise EpisodeConfigError(
      f'shots + queries = {shots} + {queries} = {shots + queries} is more '
      f'than the {num_drawings} drawings per class, and support and query '
      f'drawings must be disjoint. Fix: use shots + queries <= '
      f'{num_drawings}.'
    )
  if counts is None:
    return
  counts = check_counts(counts, num_classes, num_drawings)
  drawable = int(np.sum(counts >= shots + queries))
  if ways > drawable:
    raise EpisodeConfigError(
      f'ways={ways} is more than the {drawable} of {num_classes} classes '
      f'with at least shots + queries = {shots + queries} examples (only '
      f'those are drawn). Fix: use ways <= {drawable}, or shots + queries <= '
      f'{np.sort(counts)[-ways]}.'
    )


def check_counts(counts, num_classes: int, num_drawings: int) -> np.ndarray:
  """`counts` as int64 `[num_classes]` in `[1, num_drawings]`, else an
  `EpisodeConfigError`."""
  counts = np.asarray(counts)
  if (
    counts.shape != (num_classes,)
    or not np.issubdtype(counts.dtype, np.integer)
    or not np.all((counts >= 1) & (counts <= num_drawings))
  ):
    raise EpisodeConfigError(
      f'counts must be integers [classes] = [{num_classes}] in [1, '
      f'{num_drawings}] (the real examples of each class), got '
      f'{counts.dtype} {counts.shape} {np.ravel(counts)[:8].tolist()}. '
      'Fix: pass `load(...).counts`, or None where every class is full.'
    )
  return counts.astype(np.int64)


def _concrete(counts):
  """`counts`, or None where traced (under `jit` the caller checks them)."""
  return None if isinstance(counts, jax.core.Tracer) else counts


def check_at_least_one(name: str, value) -> int:
  """`value` as a static int >= 1, else an `EpisodeConfigError`."""
  value = _static_int(name, value)
  if value < 1:
    raise EpisodeConfigError(
      f'{name}={value}: need at least 1. Fix: set {name} >= 1.'
    )
  return value


def check_images(images) -> None:
  """Raises an `EpisodeConfigError` unless `images` has 5 axes."""
  if getattr(images, 'ndim', None) != 5:
    raise EpisodeConfigError(
      f'images must be [classes, drawings, H, W, C], got shape '
      f'{getattr(images, "shape", None)}. Fix: pass `load(...).images` (add '
      'a trailing channel axis to grayscale arrays).'
    )


def to_unit_float(x: Array) -> Array:
  """float32 `x`: uint8 scaled by 1/255, other dtypes cast unchanged."""
  if x.dtype == jnp.uint8:
    return x.astype(jnp.float32) / 255.0
  return x.astype(jnp.float32)


def split_support_query(chosen: Array, shots: int) -> Task:
  """A task from its images `[ways, shots + queries, H, W, C]`: per class
  the first `shots` support, the rest query; class i labelled i."""
  ways, queries = chosen.shape[0], chosen.shape[1] - shots
  chosen = to_unit_float(chosen)
  image_shape = chosen.shape[2:]
  labels = jnp.arange(ways, dtype=jnp.int32)
  return Task(
    support_x=chosen[:, :shots].reshape((ways * shots,) + image_shape),
    support_y=jnp.repeat(labels, shots),
    query_x=chosen[:, shots:].reshape((ways * queries,) + image_shape),
    query_y=jnp.repeat(labels, queries),
  )


def sample_task(
  key: PRNGKey,
  images: Array,
  ways: int,
  shots: int,
  queries: int,
  counts: Array | None = None,
) -> Task:
  """Samples one `ways`-way `shots`-shot task with `queries` queries per class.

  Classes are drawn without replacement, in random order (label i is the
  i-th); per class, `shots + queries` distinct drawings, the first `shots` for
  the support set. Examples are class-major (`support_y = [0]*shots +
  [1]*shots + ...`). Cost: a top-k over classes plus O(ways * drawings); only
  the chosen images are gathered.

  With `counts` (ragged classes, see `jaxmeta.data.ClassImages`), class c's
  drawings are drawn uniformly among its first `counts[c]`, never a padding
  row, and classes are drawn uniformly among those with at least `shots +
  queries` drawings. Smaller classes are skipped rather than refused, so
  that a split with a few small classes stays usable at every task shape it
  has enough classes for. One program for any counts: the padding rows' and
  skipped classes' random scores are masked before the top-k.

  Args:
    key: PRNG key.
    images: `[classes, drawings, H, W, C]`, uint8 (scaled by 1/255) or float
      (cast to float32 unchanged).
    ways: classes per task (static).
    shots: support examples per class (static).
    queries: query examples per class (static).
    counts: None (every class has all `drawings`) or int `[classes]`, the
      real drawings of each class, each in `[1, drawings]`. Under `jit`, the
      caller checks them with `check_episode_config`.

  Returns:
    `Task` with support_x float32 `[ways * shots, H, W, C]`, support_y int32
    `[ways * shots]`, query_x float32 `[ways * queries, H, W, C]`, query_y int32
    `[ways * queries]`.

  Raises:
    EpisodeConfigError: (at trace time) if the split cannot supply the task.
  """
  images = jnp.asarray(images)
  check_images(images)
  num_classes, num_drawings = images.shape[:2]
  check_episode_config(
    num_classes, num_drawings, ways, shots, queries, _concrete(counts)
  )
  class_key, drawing_key = jax.random.split(key)
  # The `ways` largest of iid uniform scores: distinct classes, a uniformly
  # random subset in a uniformly random order, so label i -> classes[i] is a
  # random labelling. (`jax.random.choice(replace=False)` permutes all classes
  # by sorting, far slower for thousands of classes: benchmarks/README.md.
  # Scores have 23 random bits; a tie at the boundary, p ~ ways * classes /
  # 2**23 per task, favours the lower class index, a negligible bias.)
  scores = jax.random.uniform(class_key, (num_classes,))
  if counts is not None:  # Scores are >= 0: a -1 is never among the top.
    scores = jnp.where(jnp.asarray(counts) >= shots + queries, scores, -1.0)
  _, classes = jax.lax.top_k(scores, ways)  # [ways]
  if counts is None:
    drawings = jax.vmap(
      lambda k: jax.random.choice(
        k, num_drawings, (shots + queries,), replace=False
      )
    )(jax.random.split(drawing_key, ways))  # [ways, shots + queries]
  else:  # The same top-k, over each class's real drawings.
    scores = jax.random.uniform(drawing_key, (ways, num_drawings))
    real = jnp.arange(num_drawings) < jnp.asarray(counts)[classes, None]
    _, drawings = jax.lax.top_k(jnp.where(real, scores, -1.0), shots + queries)
  chosen = images[classes[:, None], drawings]  # [ways, shots + queries, ...]
  return split_support_query(chosen, shots)


def sample_batch(
  key: PRNGKey, images: Array, batch_size: int, counts: Array | None = None
) -> Task:
  """A minibatch of images of all classes, labelled with their class index.

  What ordinary classification training draws (Baseline's pretraining):
  `batch_size` images with replacement, each of a uniformly drawn class and a
  uniformly drawn drawing of it (among its first `counts[c]` with `counts`),
  as a `Task` whose query set is empty, so that it travels through the
  meta-step.

  Args:
    key: PRNG key.
    images: `[classes, drawings, H, W, C]` (see `sample_task`).
    batch_size: images in the minibatch (static, >= 1).
    counts: None or int `[classes]` (see `sample_task`).

  Returns:
    `Task` with support_x float32 `[batch_size, H, W, C]`, support_y int32
    `[batch_size]` in `[0, classes)`, and query_x `[0, H, W, C]`, query_y
    `[0]`.
  """
  images = jnp.asarray(images)
  check_images(images)
  batch_size = check_at_least_one('batch_size', batch_size)
  num_classes, num_drawings = images.shape[:2]
  if _concrete(counts) is not None:
    check_counts(counts, num_classes, num_drawings)
  class_key, drawing_key = jax.random.split(key)
  classes = jax.random.randint(class_key, (batch_size,), 0, num_classes)
  ends = num_drawings if counts is None else jnp.asarray(counts)[classes]
  drawings = jax.random.randint(drawing_key, (batch_size,), 0, ends)
  x = to_unit_float(images[classes, drawings])
  y = classes.astype(jnp.int32)
  return Task(support_x=x, support_y=y, query_x=x[:0], query_y=y[:0])


def sample_tasks(
  key: PRNGKey,
  images: Array,
  num_tasks: int,
  ways: int,
  shots: int,
  queries: int,
  counts: Array | None = None,
) -> Task:
  """Samples a meta-batch: `vmap(sample_task)` over `split(key, num_tasks)`.

  Args:
    key: PRNG key.
    images, ways, shots, queries, counts: see `sample_task`.
    num_tasks: tasks in the batch (static).

  Returns:
    `Task` whose leaves have a leading `[num_tasks]` axis, e.g. support_x
    float32 `[num_tasks, ways * shots, H, W, C]`.
  """
  num_tasks = check_at_least_one('num_tasks', num_tasks)
  keys = jax.random.split(key, num_tasks)
  sample_one = functools.partial(
    sample_task,
    images=images,
    ways=ways,
    shots=shots,
    queries=queries,
    counts=counts,
  )
  return jax.vmap(sample_one)(keys)


def eval_task_keys(seed: int, num_tasks: int = 600) -> Array:
  """The keys of a fixed, reproducible set of evaluation tasks.

  Key i is `fold_in(fold_in(key(seed), EVAL_STREAM), i)`: the same everywhere,
  prefix-stable (a 600-task set starts with the 100-task set), and from
  another stream than `split(key(seed))`.

  Args:
    seed: integer seed of the evaluation set.
    num_tasks: number of tasks (600: the usual protocol).

  Returns:
    Typed PRNG keys `[num_tasks]`; use with `jax.vmap(sample_task, ...)`.
  """
  num_tasks = check_at_least_one('num_tasks', num_tasks)
  base = jax.random.fold_in(jax.random.key(seed), _EVAL_STREAM)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(
    jnp.arange(num_tasks, dtype=jnp.uint32)
  )
