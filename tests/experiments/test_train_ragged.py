"""Every algorithm trains and is evaluated through the harness on a dataset
whose classes hold unequal numbers of images (`ClassImages.counts`)."""

import jax
import numpy as np
import pytest

import jaxmeta
from experiments import config_checks
from experiments import predict
from experiments import tasks
from jaxmeta.data import registry
from support.tiny_runs import run
from support.tiny_runs import tiny_config

RAGGED_DATASET = 'tiny_ragged_images'
# Per split, 12 classes of 1 to 7 images; with 1 shot and 2 queries, the
# classes of fewer than 3 are never drawn.
COUNTS = np.array([7, 1, 3, 5, 2, 6, 4, 7, 3, 2, 5, 6])


@pytest.fixture(scope='module')
def ragged_dataset():
  """Registers a dataset of `COUNTS` random 8x8x1 images per class and
  padding rows of 255, a value no real image has, so that a padding row in
  a task would be seen."""

  def load(split, *, data_dir=None, source_dir=None, image_size=8):
    del data_dir, source_dir
    rng = np.random.default_rng(registry.SPLITS.index(split))
    shape = (len(COUNTS), COUNTS.max(), image_size, image_size, 1)
    # Classes differ in mean brightness, so that a model can learn.
    images = (
      rng.integers(0, 128, shape)
      + 10 * np.arange(len(COUNTS))[:, None, None, None, None]
    )
    padding = np.arange(COUNTS.max())[None, :] >= COUNTS[:, None]
    images[padding] = 255
    names = tuple(f'{split}/{i}' for i in range(len(COUNTS)))
    return registry.ClassImages(images.astype(np.uint8), names, COUNTS)

  registry.register_dataset(RAGGED_DATASET)(load)
  yield RAGGED_DATASET
  del registry.DATASETS[RAGGED_DATASET]


def test_tasks_of_the_harness_hold_only_real_images(ragged_dataset):
  config = tiny_config(ragged_dataset, algorithm='baseline', batch_size=64)
  family = tasks.build(config)
  data = family.load('train')
  keys = jax.random.split(jax.random.key(0), 200)
  for train in (True, False):
    task = jax.vmap(lambda k: family.sample(k, data, train))(keys)
    assert np.all(np.asarray(task.support_x) < 1.0)
    assert np.all(np.asarray(task.query_x) < 1.0)
  batch = family.sample_batch(jax.random.key(1), data, 64)
  assert np.all(np.asarray(batch.support_x) < 1.0)


@pytest.mark.parametrize(
  'algorithm, sampler',
  [(algorithm, 'device') for algorithm in sorted(jaxmeta.ALGORITHMS)]
  + [('maml', 'host')],
)
def test_every_algorithm_trains_and_evaluates(
  tmp_path, ragged_dataset, algorithm, sampler
):
  config = tiny_config(
    ragged_dataset, algorithm=algorithm, sampler=sampler, batch_size=8
  )
  results = run(config, tmp_path)
  assert results['iterations'] == 4 and results['algorithm'] == algorithm
  assert 0.0 <= results['test_accuracy'] <= 1.0


def test_too_few_classes_with_enough_images_is_one_config_error(
  tmp_path, ragged_dataset
):
  # Four classes hold shots + queries = 6 images.
  config = tiny_config(ragged_dataset, ways=5, shots=4, queries=2)
  with pytest.raises(
    config_checks.ConfigError,
    match=r'The train split of tiny_ragged_images .*ways=5 is more than the '
    r'4 of 12 classes with at least shots \+ queries = 6 examples',
  ):
    run(config, tmp_path)


def test_trainval_trains_on_the_classes_of_train_then_val(
  tmp_path, ragged_dataset
):
  config = tiny_config(ragged_dataset, algorithm='baseline', batch_size=8)
  config.train_split = 'trainval'
  family = tasks.build(config)
  images, counts = tasks.class_images(family.load('trainval'))
  train, val = (
    registry.load(ragged_dataset, split) for split in ('train', 'val')
  )
  np.testing.assert_array_equal(
    images, np.concatenate([train.images, val.images])
  )
  np.testing.assert_array_equal(counts, np.concatenate([COUNTS, COUNTS]))
  results = run(config, tmp_path)
  assert results['iterations'] == 4
  _, params, _ = predict.load_run(tmp_path)
  # Baseline's head: one output per class trained on, 12 + 12.
  assert params['head']['w'].shape[-1] == 2 * len(COUNTS)
