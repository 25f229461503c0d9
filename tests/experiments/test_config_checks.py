"""Configs that would run but mean nothing are refused before any training."""

import os

import ml_collections
import pytest

from experiments import configs
from experiments import tasks
from experiments import build
from experiments import config_checks
from experiments import train
from experiments.configs import default
from experiments.configs import sinusoid as sinusoid_config


def omniglot(**overrides):
  config = default.get_config()
  config.update(overrides)
  return config


@pytest.mark.parametrize(
  'name,preset',
  [
    ('protonet_omniglot', '5w1s'),
    ('baseline_omniglot', 'baseline_5w1s'),
    ('baseline_miniimagenet', 'baseline_plus_plus_conv4_5w1s'),
    ('maml_omniglot', '5w1s'),
    ('maml_cifar', 'cifar_fs_5w1s'),
  ],
)
def test_one_way_classification_is_refused(name, preset):
  config = configs.load(f'{name}:{preset}')
  config.ways = 1
  with pytest.raises(
    config_checks.ConfigError,
    match='config.ways=1: a classification task needs',
  ):
    config_checks.validate(config)


def test_one_training_way_is_refused_and_two_are_enough():
  config = configs.load('protonet_omniglot:5w1s')
  config.train_ways = 1
  with pytest.raises(config_checks.ConfigError, match='config.train_ways=1'):
    config_checks.validate(config)
  config.train_ways = 2
  config_checks.validate(config)


def test_regression_has_no_ways():
  config_checks.validate(sinusoid_config.get_config())
  for field, value in (('ways', 5), ('train_ways', 3)):
    config = sinusoid_config.get_config()
    config[field] = value
    with pytest.raises(
      config_checks.ConfigError, match='are not classification'
    ):
      config_checks.validate(config)


@pytest.mark.parametrize('image_size,bound', [(28, 13), (84, 41), (8, 3)])
def test_crop_padding_stays_below_half_the_image(image_size, bound):
  tasks.check_crop_padding(bound, image_size)
  with pytest.raises(ValueError, match=f'crop_padding={bound + 1} is half'):
    tasks.check_crop_padding(bound + 1, image_size)


def test_crop_padding_is_checked_against_the_config_image_size():
  config = omniglot()
  config.augment.crop_padding = 13
  config_checks.validate(config)
  config.augment.crop_padding = 100
  with pytest.raises(
    config_checks.ConfigError, match=r'crop_padding=<0\.\.13>'
  ):
    config_checks.validate(config)


def _tiny(dataset, **augment):
  config = omniglot(dataset=dataset, ways=3, queries=2)
  config.data = ml_collections.ConfigDict()
  config.augment.update(augment)
  return config


def test_crop_padding_and_saturation_are_checked_against_the_images(
  tiny_dataset,
):
  """Where the config does not say the image size, the loaded images do
  (8x8 grayscale here)."""
  family = tasks.build(_tiny(tiny_dataset, crop_padding=3, flip=True))
  family.load('train')
  family = tasks.build(_tiny(tiny_dataset, crop_padding=4))
  with pytest.raises(tasks.TaskFamilyError, match='crop_padding=4 is half'):
    family.load('train')
  family = tasks.build(_tiny(tiny_dataset, saturation=0.4))
  with pytest.raises(tasks.TaskFamilyError, match='are grayscale'):
    family.load('train')


def test_sinusoid_takes_no_augmentation():
  config = sinusoid_config.get_config()
  config.augment.flip = True
  with pytest.raises(tasks.TaskFamilyError, match='take no augmentation'):
    tasks.build(config)


@pytest.mark.parametrize(
  'field', ['train_ways', 'train_shots', 'train_queries']
)
@pytest.mark.parametrize('algorithm', ['baseline', 'baseline_plus_plus'])
def test_the_baselines_refuse_an_episode_shape_they_would_ignore(
  algorithm, field
):
  config = configs.load(f'baseline_omniglot:{algorithm}_5w1s')
  family = tasks.build(config)
  build.build_learner(config, family, (28, 28, 1), num_train_classes=100)
  config[field] = 10
  with pytest.raises(
    config_checks.ConfigError, match=f'config.{field}=10: {algorithm} trains on'
  ):
    build.build_learner(config, family, (28, 28, 1), num_train_classes=100)


@pytest.mark.parametrize(
  'field,value,message',
  [
    ('algorithm', 'protonets', "did you mean 'protonet'"),
    ('dataset', 'omniglott', "did you mean 'omniglot'"),
    ('backbone', 'conv_4', "did you mean 'conv4'"),
    ('batch_norm', 'runing', "did you mean 'running'"),
    ('train_split', 'trainvall', "did you mean 'trainval'"),
  ],
)
def test_registry_names_suggest_the_closest(field, value, message):
  config = omniglot(**{field: value})
  with pytest.raises(config_checks.ConfigError, match=message) as error:
    config_checks.validate(config)
  assert 'Fix: --config.' in str(error.value)


def test_an_option_of_another_algorithm_is_refused():
  config = omniglot(algorithm='protonet')
  config.method = ml_collections.ConfigDict({'first_order': True})
  with pytest.raises(
    config_checks.ConfigError,
    match='which protonet does not take. Fix: remove it',
  ):
    config_checks.validate(config)


def test_the_refusals_leave_no_workdir_behind(tmp_path):
  with pytest.raises(config_checks.ConfigError):
    train.train_and_evaluate(omniglot(ways=1), str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


@pytest.mark.parametrize(
  'name,option,value,message',
  [
    (
      'baseline_omniglot:baseline_5w1s',
      'momentum',
      1.0,
      r'must be in \[0, 1\)',
    ),
    (
      'baseline_omniglot:baseline_5w1s',
      'momentum',
      -0.1,
      r'must be in \[0, 1\)',
    ),
    ('maml_plus_plus_omniglot:5w1s', 'msl_iterations', -5, 'must be >= 0'),
    ('maml_omniglot:5w1s', 'first_order', 1, 'maml takes a bool'),
    ('baseline_omniglot:baseline_5w1s', 'head', 3, 'baseline takes a str'),
  ],
)
def test_method_options_of_the_wrong_type_or_range_are_refused(
  name, option, value, message
):
  config = configs.load(name)
  config.method[option] = value
  with pytest.raises(config_checks.ConfigError, match=message) as error:
    config_checks.validate(config)
  assert 'Fix: --config.method.' in str(error.value)


def test_method_options_in_range_are_accepted():
  config = configs.load('baseline_omniglot:baseline_5w1s')
  config.method.momentum = 0  # An int where the default is a float.
  config.method.head = 'cosine'
  config_checks.validate(config)


def test_a_baseline_head_smaller_than_the_training_classes_is_refused():
  config = configs.load('baseline_omniglot:baseline_5w1s')
  family = tasks.build(config)
  for num_classes in (None, 100):  # None: the training split's (its default).
    config.method.num_classes = num_classes
    build.build_learner(config, family, (28, 28, 1), num_train_classes=100)
  config.method.num_classes = 99
  with pytest.raises(
    config_checks.ConfigError, match='fewer than the 100 classes'
  ):
    build.build_learner(config, family, (28, 28, 1), num_train_classes=100)
