"""Ragged classes (`ClassImages.counts`): both samplers draw only real
examples, support and query disjoint, classes and examples uniformly.

Every real image encodes its (class, index) in its pixels and carries a
marker that the zero padding lacks. The statistical checks use Hoeffding's
bound, `P(|mean - p| >= t) <= 2 exp(-2 n t**2)`, with `t` set so that all of
a test's checks together fail by chance with probability below 1e-6.
"""

import math

import jax
import numpy as np
import pytest

from jaxmeta.data import episodes
from jaxmeta.data import host_episodes
from jaxmeta.data import registry

COUNTS = np.array([8, 3, 5, 8, 2, 6, 4, 7, 5])  # Classes 1 and 4 too small.
WAYS, SHOTS, QUERIES = 3, 2, 2
DRAWABLE = np.flatnonzero(COUNTS >= SHOTS + QUERIES)
NUM_TASKS = 4000
FAILURE = 1e-6


def _ragged_images():
  """uint8 `[9, 8, 2, 2, 2]`: a real image holds class + 1, index + 1 and a
  255 marker; padding rows are all zeros."""
  images = np.zeros((len(COUNTS), COUNTS.max(), 2, 2, 2), np.uint8)
  for c, count in enumerate(COUNTS):
    images[c, :count, 0, 0, 0] = c + 1
    images[c, :count, 0, 0, 1] = np.arange(count) + 1
    images[c, :count, 1, 1, 0] = 255
  return images


def _decode(x):
  """(class, index) int `[..., n]` of float images `[..., n, 2, 2, 2]`,
  asserting that each is a real image."""
  x = np.round(np.asarray(x) * 255).astype(np.int64)
  assert np.all(x[..., 1, 1, 0] == 255), 'a padding row was drawn'
  return x[..., 0, 0, 0] - 1, x[..., 0, 0, 1] - 1


def _tolerance(n, checks):
  """Hoeffding's `t` for `checks` means of `n` draws each, failing jointly by
  chance with probability below `FAILURE / 2` (two groups of checks)."""
  return math.sqrt(math.log(4 * checks / FAILURE) / (2 * n))


@jax.jit  # The counts are traced, as in the harness.
def _device_tasks(key, images, counts):
  return episodes.sample_tasks(
    key, images, NUM_TASKS, WAYS, SHOTS, QUERIES, counts
  )


def _host_tasks(key, images, counts):
  return host_episodes.sample_tasks_host(
    key, images, NUM_TASKS, WAYS, SHOTS, QUERIES, counts=counts
  )


@pytest.mark.parametrize('sample', [_device_tasks, _host_tasks])
def test_tasks_draw_real_disjoint_examples_uniformly(sample):
  tasks = sample(jax.random.key(0), _ragged_images(), COUNTS)
  support_class, support_index = _decode(tasks.support_x)
  query_class, query_index = _decode(tasks.query_x)
  # [tasks, ways, shots + queries], per class of the task.
  classes = np.concatenate(
    [
      support_class.reshape(NUM_TASKS, WAYS, SHOTS),
      query_class.reshape(NUM_TASKS, WAYS, QUERIES),
    ],
    axis=-1,
  )
  indices = np.concatenate(
    [
      support_index.reshape(NUM_TASKS, WAYS, SHOTS),
      query_index.reshape(NUM_TASKS, WAYS, QUERIES),
    ],
    axis=-1,
  )
  # Label i is one class, the same in the support and query sets.
  assert np.all(classes == classes[..., :1])
  task_classes = classes[..., 0]  # [tasks, ways]
  np.testing.assert_array_equal(
    np.asarray(tasks.support_y),
    np.tile(np.repeat(np.arange(WAYS), SHOTS), (NUM_TASKS, 1)),
  )
  assert all(len(set(row)) == WAYS for row in task_classes)
  assert np.all(indices < COUNTS[classes])  # Also checked by the marker.
  # Support and query disjoint: the shots + queries indices are distinct.
  ordered = np.sort(indices, axis=-1)
  assert np.all(ordered[..., 1:] != ordered[..., :-1])
  # Only classes with shots + queries examples, each in a task with
  # probability ways / drawable.
  per_class = np.array([np.sum(task_classes == c) for c in range(len(COUNTS))])
  assert set(np.flatnonzero(per_class)) == set(DRAWABLE)
  frequency = per_class[DRAWABLE] / NUM_TASKS
  t = _tolerance(NUM_TASKS, len(DRAWABLE))
  np.testing.assert_array_less(np.abs(frequency - WAYS / len(DRAWABLE)), t)
  # Given its class, each real example is among the shots + queries drawn
  # with probability (shots + queries) / counts[c]; n is the fewest draws of
  # a class, so `t` bounds every class's deviation.
  n = per_class[DRAWABLE].min()
  t = _tolerance(n, COUNTS[DRAWABLE].sum())
  for c in DRAWABLE:
    drawn = indices[task_classes == c]  # [draws of c, shots + queries]
    hits = np.array([np.sum(drawn == i) for i in range(COUNTS[c])])
    np.testing.assert_array_less(
      np.abs(hits / len(drawn) - (SHOTS + QUERIES) / COUNTS[c]), t
    )


def test_batches_draw_real_examples_uniformly():
  batch = jax.jit(episodes.sample_batch, static_argnums=2)(
    jax.random.key(1), _ragged_images(), NUM_TASKS, COUNTS
  )
  classes, indices = _decode(batch.support_x)
  np.testing.assert_array_equal(classes, np.asarray(batch.support_y))
  assert np.all(indices < COUNTS[classes])
  per_class = np.array([np.sum(classes == c) for c in range(len(COUNTS))])
  np.testing.assert_array_less(
    np.abs(per_class / NUM_TASKS - 1 / len(COUNTS)),
    _tolerance(NUM_TASKS, len(COUNTS)),
  )
  t = _tolerance(per_class.min(), COUNTS.sum())
  for c, count in enumerate(COUNTS):
    drawn = indices[classes == c]
    hits = np.array([np.sum(drawn == i) for i in range(count)])
    np.testing.assert_array_less(np.abs(hits / len(drawn) - 1 / count), t)


def test_host_tasks_with_full_counts_are_those_without():
  images = _ragged_images()
  full = np.full(len(COUNTS), images.shape[1])
  a = _host_tasks(jax.random.key(2), images, None)
  b = _host_tasks(jax.random.key(2), images, full)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
  'sample',
  [
    lambda counts: episodes.sample_task(
      jax.random.key(0), _ragged_images(), WAYS, SHOTS, QUERIES, counts
    ),
    lambda counts: host_episodes.sample_tasks_host(
      jax.random.key(0),
      _ragged_images(),
      2,
      WAYS,
      SHOTS,
      QUERIES,
      counts=counts,
    ),
  ],
)
def test_too_few_drawable_classes_or_bad_counts_are_refused(sample):
  few = COUNTS.copy()
  few[DRAWABLE[2:]] = 3  # Two classes with shots + queries examples left.
  with pytest.raises(
    episodes.EpisodeConfigError,
    match=r'ways=3 is more than the 2 of 9 classes .* Fix: use ways <= 2, '
    r'or shots \+ queries <= 3\.',
  ):
    sample(few)
  for bad in (COUNTS[:-1], COUNTS * 0, COUNTS + 1, COUNTS / 2):
    with pytest.raises(episodes.EpisodeConfigError, match='counts must be'):
      sample(bad)


def test_one_program_for_any_counts():
  traces = []

  @jax.jit
  def sample(key, images, counts):
    traces.append(None)
    return episodes.sample_tasks(key, images, 2, WAYS, SHOTS, QUERIES, counts)

  images = _ragged_images()
  for counts in (COUNTS, np.minimum(COUNTS, 5), np.minimum(COUNTS, 4)):
    _decode(sample(jax.random.key(3), images, counts).query_x)
  assert len(traces) == 1


def test_union_of_splits_pads_the_smaller_and_keeps_every_count():
  full = registry.ClassImages(np.full((2, 3, 2, 2, 1), 7, np.uint8), ('a', 'b'))
  ragged = registry.ClassImages(
    np.full((3, 5, 2, 2, 1), 9, np.uint8), ('c', 'd', 'e'), np.array([5, 1, 4])
  )
  joined = registry.union(full, ragged)
  assert joined.images.shape == (5, 5, 2, 2, 1)
  assert joined.class_names == ('a', 'b', 'c', 'd', 'e')
  np.testing.assert_array_equal(joined.counts, [3, 3, 5, 1, 4])
  np.testing.assert_array_equal(joined.images[:2, :3], full.images)
  assert not joined.images[:2, 3:].any()  # Padding, never drawn.
  np.testing.assert_array_equal(joined.images[2:], ragged.images)
  # Full classes of one size stay full: no counts.
  assert registry.union(full, full).counts is None
  with pytest.raises(ValueError, match='different image shapes'):
    registry.union(full, full._replace(images=full.images[:, :, :1]))
