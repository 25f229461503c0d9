"""Tests of the episodic sampler on tiny arrays whose pixels name themselves."""

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmeta.data import episodes
from jaxmeta.types import Task

NUM_CLASSES = 7
NUM_DRAWINGS = 6


def _identity_images(num_classes=NUM_CLASSES, num_drawings=NUM_DRAWINGS):
  """float32 [classes, drawings, 2, 3, 1]; pixel (0, 0) = class, (0, 1) = drawing."""
  images = np.zeros((num_classes, num_drawings, 2, 3, 1), np.float32)
  images[:, :, 0, 0, 0] = np.arange(num_classes)[:, None]
  images[:, :, 0, 1, 0] = np.arange(num_drawings)[None, :]
  images[:, :, 1, 2, 0] = 0.5  # A constant pixel, to check nothing else moves.
  return images


def _ids(x):
  """[n, 2, 3, 1] -> (class ids [n], drawing ids [n])."""
  x = np.asarray(x)
  return x[:, 0, 0, 0].astype(int), x[:, 0, 1, 0].astype(int)


def _check_task(task, ways, shots, queries):
  """Checks one task against the definition, example by example."""
  support_x, support_y, query_x, query_y = map(np.asarray, task)
  assert support_x.shape == (ways * shots, 2, 3, 1)
  assert query_x.shape == (ways * queries, 2, 3, 1)
  np.testing.assert_array_equal(support_x[:, 1, 2, 0], 0.5)
  np.testing.assert_array_equal(query_x[:, 1, 2, 0], 0.5)
  # Balanced labels in [0, ways).
  np.testing.assert_array_equal(
    np.bincount(support_y, minlength=ways), [shots] * ways
  )
  np.testing.assert_array_equal(
    np.bincount(query_y, minlength=ways), [queries] * ways
  )
  support_class, support_drawing = _ids(support_x)
  query_class, query_drawing = _ids(query_x)
  label_to_class = {}
  for label in range(ways):
    classes = set(support_class[support_y == label]) | set(
      query_class[query_y == label]
    )
    assert len(classes) == 1, 'one class per label'
    label_to_class[label] = classes.pop()
    support = list(support_drawing[support_y == label])
    query = list(query_drawing[query_y == label])
    assert len(set(support)) == shots and len(set(query)) == queries
    assert not set(support) & set(query), 'support and query share a drawing'
  assert len(set(label_to_class.values())) == ways, 'a class is repeated'
  return label_to_class


@pytest.mark.parametrize(
  'ways,shots,queries', [(5, 1, 5), (3, 2, 4), (7, 5, 1)]
)
def test_tasks_follow_the_definition(ways, shots, queries):
  images = _identity_images()
  task = episodes.sample_task(jax.random.key(0), images, ways, shots, queries)
  assert isinstance(task, Task)
  assert task.support_x.dtype == task.query_x.dtype == jnp.float32
  assert task.support_y.dtype == task.query_y.dtype == jnp.int32
  _check_task(task, ways, shots, queries)
  tasks = jax.jit(
    jax.vmap(
      functools.partial(
        episodes.sample_task,
        images=images,
        ways=ways,
        shots=shots,
        queries=queries,
      )
    )
  )(jax.random.split(jax.random.key(1), 20))
  for i in range(20):
    _check_task(jax.tree.map(lambda x, i=i: x[i], tasks), ways, shots, queries)


def test_uint8_images_are_scaled_to_unit_interval():
  images = np.arange(4 * 5 * 2 * 2, dtype=np.uint8).reshape(4, 5, 2, 2, 1)
  images[0, 0] = 255
  task = episodes.sample_task(
    jax.random.key(0), images, ways=4, shots=2, queries=3
  )
  assert task.support_x.dtype == jnp.float32
  for x in (task.support_x, task.query_x):
    x = np.asarray(x)
    assert 0.0 <= x.min() and x.max() <= 1.0
    # Every example is one of the images, divided by 255.
    flat = images.reshape(20, -1).astype(np.float32) / 255
    for example in x.reshape(len(x), -1):
      assert np.any(np.all(np.abs(flat - example) <= 1e-7, axis=1))
  assert (
    np.asarray(jnp.concatenate([task.support_x, task.query_x])).max() == 1.0
  )


def test_deterministic_by_key_and_different_across_keys():
  images = _identity_images()
  sample = functools.partial(
    episodes.sample_task, images=images, ways=3, shots=2, queries=2
  )
  chex.assert_trees_all_equal(
    sample(jax.random.key(1)), sample(jax.random.key(1))
  )
  tasks = [sample(jax.random.key(seed)) for seed in range(5)]
  distinct = {np.asarray(t.support_x).tobytes() for t in tasks}
  assert len(distinct) == 5


def test_label_permutation_is_random():
  # With ways == classes every task uses every class: only the labelling
  # differs, and all 3! labellings should appear.
  images = _identity_images(num_classes=3)
  sample = jax.jit(
    jax.vmap(
      functools.partial(
        episodes.sample_task, images=images, ways=3, shots=1, queries=1
      )
    )
  )
  tasks = sample(jax.random.split(jax.random.key(0), 200))
  labellings = set()
  for i in range(200):
    task = jax.tree.map(lambda x, i=i: x[i], tasks)
    mapping = _check_task(task, 3, 1, 1)
    labellings.add(tuple(mapping[label] for label in range(3)))
  assert labellings == set(itertools.permutations(range(3)))


def test_classes_and_drawings_are_roughly_uniform():
  images = _identity_images()
  tasks = jax.jit(episodes.sample_tasks, static_argnums=(2, 3, 4, 5))(
    jax.random.key(3), images, 700, 2, 1, 1
  )
  classes, drawings = _ids(np.asarray(tasks.support_x).reshape(-1, 2, 3, 1))
  # 1400 draws each: 200 per class, ~233 per drawing; generous bounds.
  assert np.bincount(classes, minlength=NUM_CLASSES).min() > 140
  assert np.bincount(drawings, minlength=NUM_DRAWINGS).min() > 160


def test_sample_tasks_is_vmap_over_split_keys_and_jits():
  images = jnp.asarray(_identity_images())
  key = jax.random.key(42)
  sample_tasks = jax.jit(
    episodes.sample_tasks,
    static_argnames=('num_tasks', 'ways', 'shots', 'queries'),
  )
  tasks = sample_tasks(key, images, num_tasks=4, ways=5, shots=1, queries=3)
  chex.assert_shape(tasks.support_x, (4, 5, 2, 3, 1))
  chex.assert_shape(tasks.query_y, (4, 15))
  # Independent reference: a Python loop over the split keys.
  for i, task_key in enumerate(jax.random.split(key, 4)):
    expected = episodes.sample_task(task_key, images, 5, 1, 3)
    chex.assert_trees_all_equal(
      jax.tree.map(lambda x, i=i: x[i], tasks), expected
    )
    _check_task(expected, 5, 1, 3)


def test_jitted_sampler_does_not_retrace():
  images = jnp.asarray(_identity_images())

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(key):
    return episodes.sample_tasks(key, images, 2, 3, 1, 1)

  for seed in range(3):
    step(jax.random.key(seed))


def test_eval_task_keys_are_fixed_and_prefix_stable():
  keys = episodes.eval_task_keys(0)
  assert keys.shape == (600,)
  data = np.asarray(jax.random.key_data(keys))
  np.testing.assert_array_equal(
    data, np.asarray(jax.random.key_data(episodes.eval_task_keys(0)))
  )
  np.testing.assert_array_equal(
    data[:10], np.asarray(jax.random.key_data(episodes.eval_task_keys(0, 10)))
  )
  assert len({row.tobytes() for row in data}) == 600
  other = np.asarray(jax.random.key_data(episodes.eval_task_keys(1, 10)))
  assert not np.array_equal(data[:10], other)
  # Usable as they are.
  tasks = jax.vmap(
    functools.partial(
      episodes.sample_task,
      images=_identity_images(),
      ways=2,
      shots=1,
      queries=1,
    )
  )(keys[:3])
  chex.assert_shape(tasks.support_y, (3, 2))


@pytest.mark.parametrize(
  'ways,shots,queries,message',
  [
    (8, 1, 1, 'ways=8 is more than the 7 classes'),
    (5, 4, 3, 'shots \\+ queries = 4 \\+ 3 = 7 is more than the 6 drawings'),
    (0, 1, 1, 'ways=0'),
    (5, 0, 1, 'shots=0'),
    (5, 1, 0, 'queries=0'),
    (5, -1, 1, 'shots=-1'),
    (5.0, 1, 1, 'static Python int'),
    (True, 1, 1, 'Python int'),
  ],
)
def test_bad_episode_configs_raise(ways, shots, queries, message):
  images = _identity_images()
  with pytest.raises(episodes.EpisodeConfigError, match=message):
    episodes.check_episode_config(
      NUM_CLASSES, NUM_DRAWINGS, ways, shots, queries
    )
  with pytest.raises(episodes.EpisodeConfigError, match=message):
    episodes.sample_task(jax.random.key(0), images, ways, shots, queries)
  with pytest.raises(ValueError, match=message):
    jax.jit(
      functools.partial(
        episodes.sample_tasks,
        num_tasks=2,
        ways=ways,
        shots=shots,
        queries=queries,
      )
    )(jax.random.key(0), images)


def test_traced_ways_raise():
  images = _identity_images()
  with pytest.raises(episodes.EpisodeConfigError, match='static Python int'):
    jax.jit(lambda key, ways: episodes.sample_task(key, images, ways, 1, 1))(
      jax.random.key(0), 2
    )


def test_images_without_channel_axis_raise():
  with pytest.raises(episodes.EpisodeConfigError, match='classes, drawings'):
    episodes.sample_task(jax.random.key(0), np.zeros((5, 20, 28, 28)), 2, 1, 1)


def test_bad_num_tasks_raises():
  with pytest.raises(episodes.EpisodeConfigError, match='num_tasks=0'):
    episodes.sample_tasks(jax.random.key(0), _identity_images(), 0, 2, 1, 1)
