"""The training program on natural-image datasets, augmentation, host sampling.

mini-ImageNet runs end to end on a synthetic copy in the real on-disk format
of its preprocessed caches (`mini-imagenet-cache-{split}.pkl`), selected by
tiny split lists in the Ravi CSV format.
"""

import pickle

import chex
import ml_collections
import numpy as np
import pytest

from experiments import config_checks
from experiments import train
from experiments.configs import maml_miniimagenet
from jaxmeta.data import miniimagenet
from jaxmeta.data import miniimagenet_tfds
from support import tiny_runs

# Classes per split (wnids of the real lists) and images per class.
_CLASSES = {'train': 4, 'val': 3, 'test': 3}
_PER_CLASS = 3


def _real_wnids(split):
  return list(miniimagenet_tfds.read_split_list(split))


@pytest.fixture
def fake_miniimagenet(tmp_path, monkeypatch):
  """(source_dir, data_dir) of a synthetic mini-ImageNet."""
  lists, source = tmp_path / 'lists', tmp_path / 'source'
  lists.mkdir()
  source.mkdir()
  rng = np.random.default_rng(0)
  for split, num_classes in _CLASSES.items():
    wnids = _real_wnids(split)[:num_classes]
    rows = ['filename,label'] + [
      f'{w}{i:08d}.jpg,{w}' for w in wnids for i in range(1, _PER_CLASS + 1)
    ]
    (lists / f'{split}.csv').write_text('\n'.join(rows) + '\n')
    n = num_classes * _PER_CLASS
    order = rng.permutation(n).tolist()
    images = rng.integers(0, 256, (n, 84, 84, 3), np.uint8)
    class_dict = {}
    for c, w in enumerate(wnids):
      rows_of_class = order[c * _PER_CLASS : (c + 1) * _PER_CLASS]
      class_dict[w] = rows_of_class
      images[rows_of_class] //= 4
      images[rows_of_class] += np.uint8(60 * c)  # Learnable: brightness.
    (source / miniimagenet_tfds.PICKLE_NAMES[split]).write_bytes(
      pickle.dumps({'image_data': images, 'class_dict': class_dict})
    )
  monkeypatch.setattr(miniimagenet_tfds, 'SPLITS_DIR', lists)
  monkeypatch.delenv(miniimagenet.SOURCE_ENV, raising=False)
  return str(source), str(tmp_path / 'tfds')


def _tiny_mini_config(**overrides):
  config = maml_miniimagenet.get_config('5w1s')
  config.model = ml_collections.ConfigDict({'num_filters': 4})
  config.update(
    ways=2,
    shots=1,
    queries=1,
    meta_batch_size=2,
    inner_steps=1,
    eval_inner_steps=2,
    num_iterations=4,
    eval_every=2,
    checkpoint_every=2,
    log_every=1,
    num_val_tasks=4,
    num_eval_tasks=4,
    eval_batch_size=4,
  )
  config.update(overrides)
  return config


@pytest.mark.slow
def test_miniimagenet_end_to_end(tmp_path, fake_miniimagenet):
  source_dir, data_dir = fake_miniimagenet
  results = train.train_and_evaluate(
    _tiny_mini_config(),
    str(tmp_path / 'run'),
    data_dir=data_dir,
    source_dir=source_dir,
    progress=False,
  )
  assert results['dataset'] == 'miniimagenet' and results['split'] == 'ravi'
  assert results['iterations'] == 4 and 0 <= results['test_accuracy'] <= 1
  assert results['preset'] == 'maml_miniimagenet:5w1s'


def test_missing_miniimagenet_images_are_one_clear_error(
  tmp_path, fake_miniimagenet
):
  _, data_dir = fake_miniimagenet
  with pytest.raises(miniimagenet.MiniImageNetError, match='mini-ImageNet'):
    train.train_and_evaluate(
      _tiny_mini_config(),
      str(tmp_path / 'run'),
      data_dir=data_dir,
      source_dir=str(tmp_path / 'empty'),
      progress=False,
    )


@pytest.mark.slow
def test_host_sampler_with_augmentation_trains_and_resumes_exactly(
  tmp_path, tiny_dataset
):
  def make(num_iterations):
    return tiny_runs.tiny_config(
      tiny_dataset,
      sampler='host',
      num_iterations=num_iterations,
      eval_every=2,
      checkpoint_every=2,
    )

  config = make(4)
  config.augment.update(crop_padding=1, flip=True, brightness=0.2)
  straight = tiny_runs.run(config, tmp_path / 'straight')
  half = make(2)
  half.augment.update(crop_padding=1, flip=True, brightness=0.2)
  tiny_runs.run(half, tmp_path / 'resumed')
  resumed = tiny_runs.run(config, tmp_path / 'resumed')
  assert resumed['resumed_from_step'] == 2
  assert resumed['test_accuracy'] == straight['test_accuracy']
  a, _ = tiny_runs.restore(config, tmp_path / 'straight')
  b, _ = tiny_runs.restore(config, tmp_path / 'resumed')
  chex.assert_trees_all_equal(a, b)


def test_augmentation_changes_the_training_tasks_only(tiny_dataset):
  import jax
  from experiments import tasks

  plain = tiny_runs.tiny_config(tiny_dataset)
  augmented = tiny_runs.tiny_config(tiny_dataset)
  augmented.augment.update(flip=True, crop_padding=2)
  a, b = tasks.build(plain), tasks.build(augmented)
  images = a.load('train')
  key = jax.random.PRNGKey(3)
  for train_task in (False, True):
    ta, tb = (
      a.sample(key, images, train_task),
      b.sample(key, images, train_task),
    )
    np.testing.assert_array_equal(ta.support_y, tb.support_y)
    same = np.array_equal(ta.support_x, tb.support_x)
    assert same == (not train_task)


@pytest.mark.parametrize(
  'field,value',
  [
    ('sampler', 'gpu'),
    ('augment.crop_mode', 'wrap'),
    ('augment.brightness', -1.0),
  ],
)
def test_bad_sampler_or_augmentation_is_a_config_error(
  tmp_path, tiny_dataset, field, value
):
  config = tiny_runs.tiny_config(tiny_dataset)
  if '.' in field:
    config.augment[field.split('.')[1]] = value
  else:
    config[field] = value
  with pytest.raises(config_checks.ConfigError, match=field.split('.')[-1]):
    tiny_runs.run(config, tmp_path)
