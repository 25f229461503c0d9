"""Every config file and preset loads, validates and says what the papers say."""

import importlib
import os
import pkgutil
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from experiments import configs
from experiments import train

CONFIG_DIR = os.path.dirname(configs.__file__)


def _every_file_and_preset():
  for info in pkgutil.iter_modules([CONFIG_DIR]):
    module = importlib.import_module(f'experiments.configs.{info.name}')
    presets = getattr(module, 'PRESETS', None)
    if presets is None:
      yield info.name, None
    else:
      for preset in presets:
        yield info.name, preset


CASES = list(_every_file_and_preset())


def test_there_are_config_files():
  names = {name for name, _ in CASES}
  assert {
    'default',
    'maml_omniglot',
    'fomaml_omniglot',
    'reptile_omniglot',
    'sinusoid',
  } <= names


@pytest.mark.parametrize('name,preset', CASES)
def test_every_file_and_preset_loads_through_config_flags(
  name, preset, monkeypatch
):
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=values)
  path = os.path.join(CONFIG_DIR, f'{name}.py')
  argv = [
    'prog',
    f'--config={path}' + (f':{preset}' if preset else ''),
    '--config.seed=7',
  ]
  monkeypatch.setattr(sys, 'argv', argv)  # config_flags reads overrides here.
  values(argv)
  config = values.config
  assert config.seed == 7
  train.validate(config)
  if preset:
    assert config.preset.endswith(f':{preset}') or name == 'sinusoid'


def test_maml_presets_follow_the_paper():
  from experiments.configs import maml_omniglot  # pylint: disable=g-import-not-at-top

  c = maml_omniglot.get_config('5w1s')
  assert (
    c.ways,
    c.shots,
    c.inner_lr,
    c.inner_steps,
    c.meta_batch_size,
    c.meta_lr,
    c.num_iterations,
    c.model.num_filters,
    c.data.scheme,
    c.queries,
    c.eval_inner_steps,
  ) == (5, 1, 0.4, 1, 32, 1e-3, 60_000, 64, 'maml', 15, 10)
  c = maml_omniglot.get_config('20w5s')
  assert (c.ways, c.shots, c.inner_lr, c.inner_steps, c.meta_batch_size) == (
    20,
    5,
    0.1,
    5,
    16,
  )


def test_fomaml_and_reptile_presets():
  from experiments.configs import fomaml_omniglot  # pylint: disable=g-import-not-at-top
  from experiments.configs import reptile_omniglot  # pylint: disable=g-import-not-at-top

  assert fomaml_omniglot.get_config('5w5s').algorithm == 'fomaml'
  c = reptile_omniglot.get_config('20w1s')
  assert (
    c.inner_optimizer,
    c.train_shots,
    c.train_queries,
    c.inner_steps,
    c.inner_lr,
    c.meta_optimizer,
    c.meta_lr,
    c.meta_lr_final,
    c.meta_batch_size,
    c.eval_inner_steps,
  ) == ('adam', 10, 1, 10, 5e-4, 'sgd', 1.0, 0.0, 5, 50)


def test_the_default_is_the_main_job():
  from experiments.configs import default  # pylint: disable=g-import-not-at-top

  c = default.get_config()
  assert (
    c.algorithm,
    c.dataset,
    c.data.scheme,
    c.backbone,
    c.ways,
    c.shots,
    c.num_iterations,
  ) == ('maml', 'omniglot', 'vinyals', 'conv4', 5, 1, 2400)
  assert (c.meta_batch_size, c.meta_lr, c.meta_lr_final) == (8, 2e-3, 0.0)


@pytest.mark.parametrize('name,preset', CASES)
def test_published_settings_keep_their_constant_adam_rate(name, preset):
  if name in ('default', 'reptile_omniglot'):
    return  # The main job's own recipe; Reptile's annealed SGD step.
  module = importlib.import_module(f'experiments.configs.{name}')
  config = module.get_config(preset) if preset else module.get_config()
  assert (config.meta_optimizer, config.meta_lr, config.meta_lr_final) == (
    'adam',
    1e-3,
    -1.0,
  ), name
