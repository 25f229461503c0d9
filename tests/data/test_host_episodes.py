"""Tests of host-side episodic sampling against the on-device layout."""

import jax
import numpy as np
import pytest

from jaxmeta.data import episodes
from jaxmeta.data import host_episodes


def _images(classes=7, examples=6, size=2):
  """uint8 images whose first pixel encodes (class, example)."""
  images = np.zeros((classes, examples, size, size, 3), np.uint8)
  images[..., 0, 0, 0] = np.arange(classes)[:, None]
  images[..., 0, 0, 1] = np.arange(examples)[None, :]
  images[..., 1, 1, 2] = 255
  return images


def test_tasks_are_the_indexed_images_in_sample_tasks_layout():
  images = _images()
  key = jax.random.key(3)
  tasks = host_episodes.sample_tasks_host(
    key, images, num_tasks=4, ways=3, shots=2, queries=2
  )
  classes, examples = host_episodes.sample_task_indices(
    host_episodes.host_rng(key), 7, 6, 4, 3, 2, 2
  )
  reference = episodes.sample_tasks(
    key, images, num_tasks=4, ways=3, shots=2, queries=2
  )
  for name in reference._fields:
    got, want = getattr(tasks, name), getattr(reference, name)
    assert got.shape == want.shape and got.dtype == want.dtype, name
  np.testing.assert_array_equal(tasks.support_y, reference.support_y)
  np.testing.assert_array_equal(tasks.query_y, reference.query_y)
  # Back to uint8 (XLA may divide by 255 as a multiply by 1/255).
  support = np.round(np.asarray(tasks.support_x) * 255).astype(np.uint8)
  query = np.round(np.asarray(tasks.query_x) * 255).astype(np.uint8)
  for t in range(4):
    assert len(set(classes[t])) == 3
    for i in range(3):
      assert len(set(examples[t, i])) == 4
      for s in range(2):
        np.testing.assert_array_equal(
          support[t, i * 2 + s], images[classes[t, i], examples[t, i, s]]
        )
        np.testing.assert_array_equal(
          query[t, i * 2 + s], images[classes[t, i], examples[t, i, 2 + s]]
        )


def test_deterministic_per_key_and_generator_accepted():
  images = _images()
  a = host_episodes.sample_tasks_host(jax.random.key(0), images, 2, 3, 1, 1)
  b = host_episodes.sample_tasks_host(jax.random.key(0), images, 2, 3, 1, 1)
  c = host_episodes.sample_tasks_host(jax.random.key(1), images, 2, 3, 1, 1)
  np.testing.assert_array_equal(a.support_x, b.support_x)
  assert not np.array_equal(a.query_x, c.query_x)
  raw = host_episodes.sample_tasks_host(
    jax.random.PRNGKey(0), images, 2, 3, 1, 1
  )  # Raw uint32 key.
  assert raw.support_x.shape == (2, 3, 2, 2, 3)
  rng = np.random.default_rng(0)
  host_episodes.sample_tasks_host(rng, images, 2, 3, 1, 1)


def test_memmap_images(tmp_path):
  images = _images()
  np.save(tmp_path / 'x.npy', images)
  mapped = np.load(tmp_path / 'x.npy', mmap_mode='r')
  key = jax.random.key(5)
  np.testing.assert_array_equal(
    host_episodes.sample_tasks_host(key, mapped, 2, 2, 1, 2).query_x,
    host_episodes.sample_tasks_host(key, images, 2, 2, 1, 2).query_x,
  )


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'ways': 8}, 'ways=8'),
    ({'shots': 3, 'queries': 4}, 'disjoint'),
    ({'num_tasks': 0}, 'num_tasks=0'),
  ],
)
def test_bad_configs(kwargs, message):
  config = dict(num_tasks=2, ways=3, shots=1, queries=1) | kwargs
  with pytest.raises(episodes.EpisodeConfigError, match=message):
    host_episodes.sample_tasks_host(jax.random.key(0), _images(), **config)


def test_bad_images_shape():
  with pytest.raises(episodes.EpisodeConfigError, match='images must be'):
    host_episodes.sample_tasks_host(
      jax.random.key(0), np.zeros((3, 4, 2, 2)), 1, 2, 1, 1
    )
