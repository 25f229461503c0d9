"""Every config file and preset loads, validates and says what the papers say."""

import importlib
import os
import pkgutil

import ml_collections
import pytest

import jaxmeta
from experiments import cli
from experiments import configs
from experiments import config_checks

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
def test_every_file_and_preset_loads_by_name_and_by_path(name, preset):
  suffix = f':{preset}' if preset else ''
  config = configs.load(name + suffix)
  assert configs.load(os.path.join(CONFIG_DIR, f'{name}.py') + suffix) == (
    config
  )
  module = importlib.import_module(f'experiments.configs.{name}')
  assert config == (
    module.get_config(preset) if preset else module.get_config()
  )
  overridden = cli.load(
    name + suffix, [cli.Override('seed', '7', False, '--config.seed=7')]
  )
  assert overridden.seed == 7
  config_checks.validate(overridden)
  if preset:
    assert config.preset.endswith(f':{preset}') or name == 'sinusoid'


def _every_option():
  for algorithm in sorted(jaxmeta.ALGORITHMS):
    for name, value in configs.option_defaults(algorithm).items():
      yield algorithm, name, value


@pytest.mark.parametrize('algorithm,name,default', list(_every_option()))
def test_every_option_of_every_algorithm_is_settable(algorithm, name, default):
  """Each option from the command line, whatever the config file lists."""
  text, value = {
    bool: ('true', True),
    int: ('7', 7),
    float: ('0.5', 0.5),
    str: ('cosine', 'cosine'),
    type(None): ('100', 100),  # Baseline's num_classes.
  }[type(default)]
  _, overrides = cli.split_overrides(
    [
      'prog',
      f'--config.algorithm={algorithm}',
      f'--config.method.{name}={text}',
    ]
  )
  config = cli.load('default', overrides)
  assert config.method.to_dict() == {name: value}
  config_checks.validate(config)


def test_option_defaults_are_the_builders():
  assert configs.option_defaults('maml') == {'first_order': False}
  assert configs.option_defaults('baseline') == {
    'num_classes': None,
    'head': 'linear',
    'momentum': 0.9,
  }
  assert configs.option_defaults('reptile') == {'query_metrics': True}
  assert configs.option_defaults('protonet') == {}
  assert configs.option_defaults('maml_plus_plus')['per_step_bn_stats'] is False
  with pytest.raises(ValueError, match="did you mean 'protonet'"):
    configs.option_defaults('protonets')


@pytest.mark.parametrize(
  'args,field,value',
  [
    (['--config.method.first_order=true'], 'method.first_order', True),
    (['--config.method.first_order'], 'method.first_order', True),
    (['--noconfig.method.first_order'], 'method.first_order', False),
    (['--config.meta_lr=3'], 'meta_lr', 3.0),
    (['--config.model.hidden=(8, 4)'], 'model.hidden', (8, 4)),
    (['--config.dataset=omniglot'], 'dataset', 'omniglot'),
    (["--config.data={'scheme': 'maml'}"], 'data.scheme', 'maml'),
    (
      ['--config.algorithm=baseline', '--config.method.head=cosine'],
      'method',
      {'head': 'cosine'},
    ),
    (['--config.method.first_order=1'], 'method', {'first_order': True}),
    (
      ['--config.algorithm=maml_plus_plus', '--config.method.msl_iterations=9'],
      'method.msl_iterations',
      9,
    ),
  ],
)
def test_overrides_take_the_type_of_their_field(args, field, value):
  _, overrides = cli.split_overrides(['prog', *args])
  config = cli.load('sinusoid', overrides)
  for part in field.split('.'):
    config = config[part]
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  assert config == value and type(config) is type(value)


def test_any_option_of_the_dataset_loader_is_settable():
  _, overrides = cli.split_overrides(
    ['prog', '--config.data.resample=nearest', '--config.data.rotations=False']
  )
  config = cli.load('default', overrides)
  assert config.data.to_dict() == {
    'scheme': 'vinyals',
    'image_size': 28,
    'resample': 'nearest',
    'rotations': False,
  }
  # A `bool | None` option parses as a flag, not as the text 'false'.
  for arg, value in [
    ('--config.data.rotations=false', False),
    ('--config.data.rotations=true', True),
    ('--noconfig.data.rotations', False),
    ('--config.data.rotations', True),
  ]:
    _, overrides = cli.split_overrides(['prog', arg])
    assert cli.load('default', overrides).data.rotations is value, arg
  _, overrides = cli.split_overrides(['prog', '--config.data.rotations=no'])
  with pytest.raises(cli.OverrideError, match='true or false'):
    cli.load('default', overrides)
  _, overrides = cli.split_overrides(['prog', '--config.data.resampel=x'])
  with pytest.raises(cli.OverrideError, match='unknown config field'):
    cli.load('default', overrides)


def test_split_overrides_keeps_the_rest_and_positional_arguments():
  rest, overrides = cli.split_overrides(
    ['prog', '--config=default', '--config.seed=3', '--workdir=x', '--', '-c']
  )
  assert rest == ['prog', '--config=default', '--workdir=x', '--', '-c']
  assert overrides == [cli.Override('seed', '3', False, '--config.seed=3')]


def test_a_config_file_of_ones_own_imports_the_shipped_ones(tmp_path):
  (tmp_path / 'mine.py').write_text(
    'from . import maml_omniglot\n\n\n'
    "def get_config(arg='5w1s'):\n"
    '  c = maml_omniglot.get_config(arg)\n'
    '  c.seed = 3\n'
    '  return c\n'
  )
  config = configs.load(f'{tmp_path}/mine.py:20w5s')
  assert (config.ways, config.shots, config.seed) == (20, 5, 3)
  (tmp_path / 'broken.py').write_text('import no_such_module\n')
  with pytest.raises(configs.ConfigFileError, match='ModuleNotFoundError'):
    configs.load(f'{tmp_path}/broken.py')
  (tmp_path / 'empty.py').write_text('')
  with pytest.raises(configs.ConfigFileError, match='has no get_config'):
    configs.load(f'{tmp_path}/empty.py')


def test_maml_presets_follow_the_paper():
  from experiments.configs import maml_omniglot

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
  from experiments.configs import fomaml_omniglot
  from experiments.configs import reptile_omniglot

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
  from experiments.configs import default

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
  module = importlib.import_module(f'experiments.configs.{name}')
  config = module.get_config(preset) if preset else module.get_config()
  if name in ('default', 'reptile_omniglot'):
    return  # The main job's own recipe; Reptile's annealed SGD step.
  if name == 'maml_plus_plus_omniglot':  # Cosine annealing, as published.
    assert (
      config.meta_lr,
      config.meta_lr_final,
      config.meta_lr_schedule,
      config.num_iterations,
    ) == (1e-3, 1e-5, 'cosine', 75_000)
    return
  # Halved every 2000 episodes (R2-D2 takes ProtoNets' protocol).
  if name.startswith(('protonet', 'r2d2')):
    assert (
      config.meta_lr,
      config.meta_lr_schedule,
      config.meta_lr_halve_every,
    ) == (1e-3, 'halving', 2000)
    return
  assert (config.meta_optimizer, config.meta_lr, config.meta_lr_final) == (
    'adam',
    1e-3,
    -1.0,
  ), name


def test_method_presets_follow_their_papers():
  from experiments.configs import anil_omniglot
  from experiments.configs import baseline_miniimagenet
  from experiments.configs import baseline_omniglot
  from experiments.configs import maml_omniglot
  from experiments.configs import maml_plus_plus_omniglot
  from experiments.configs import meta_sgd_omniglot
  from experiments.configs import protonet_miniimagenet
  from experiments.configs import protonet_omniglot

  # ANIL: MAML's settings, another algorithm.
  anil, maml = (
    anil_omniglot.get_config('20w1s'),
    maml_omniglot.get_config('20w1s'),
  )
  assert anil.algorithm == 'anil'
  anil.algorithm, anil.preset = maml.algorithm, maml.preset
  assert anil.to_dict() == maml.to_dict()
  c = meta_sgd_omniglot.get_config('5w1s')
  assert (c.algorithm, c.inner_steps, c.eval_inner_steps) == ('meta_sgd', 1, 1)
  c = maml_plus_plus_omniglot.get_config('20w1s')
  assert (c.ways, c.inner_steps, c.eval_inner_steps, c.inner_lr) == (
    20,
    5,
    5,
    0.1,
  )
  assert c.method.to_dict() == {
    'per_step_lr': True,
    'multi_step_loss': True,
    'msl_iterations': 5000,
    'first_order_iterations': 25_000,
    'per_step_bn': True,
  }
  c = protonet_omniglot.get_config('20w1s')
  assert (
    c.algorithm,
    c.ways,
    c.train_ways,
    c.train_queries,
    c.meta_batch_size,
    c.data.scheme,
    c.model.num_filters,
  ) == ('protonet', 20, 60, 5, 1, 'vinyals', 64)
  c = protonet_miniimagenet.get_config('conv4_5w5s')
  assert (c.train_ways, c.queries, c.data.image_size) == (20, 15, 84)
  assert protonet_miniimagenet.get_config('resnet12_5w1s').backbone == (
    'resnet12'
  )
  for module, preset in (
    (baseline_omniglot, 'baseline_plus_plus_20w1s'),
    (baseline_miniimagenet, 'baseline_plus_plus_conv4_5w5s'),
  ):
    c = module.get_config(preset)
    assert (
      c.algorithm,
      c.batch_size,
      c.meta_batch_size,
      c.inner_lr,
      c.eval_inner_steps,
    ) == ('baseline_plus_plus', 16, 1, 0.01, 100)
  assert baseline_omniglot.get_config('baseline_5w1s').algorithm == 'baseline'


def test_cub_presets_are_the_miniimagenet_conv4_recipes_on_cub():
  from experiments.configs import baseline_cub
  from experiments.configs import baseline_miniimagenet
  from experiments.configs import protonet_cub
  from experiments.configs import protonet_miniimagenet

  pairs = (
    (protonet_cub, protonet_miniimagenet),
    (baseline_cub, baseline_miniimagenet),
  )
  for cub, mini in pairs:
    for preset in cub.PRESETS:
      c, m = cub.get_config(preset), mini.get_config(preset)
      assert (c.dataset, c.data.to_dict(), c.backbone, c.model.num_filters) == (
        'cub',
        {'scheme': 'chen', 'image_size': 84},
        'conv4',
        64,
      )
      c.dataset, c.data, c.preset = m.dataset, m.data, m.preset
      assert c.to_dict() == m.to_dict(), preset
  assert (len(protonet_cub.PRESETS), len(baseline_cub.PRESETS)) == (2, 4)


@pytest.mark.parametrize('name,preset', CASES)
def test_presets_normalise_as_their_published_figures_were_measured(
  name, preset
):
  # MAML and its descendants' code normalises test batches by themselves
  # (transductive); ProtoNets' and the Baselines' PyTorch code evaluates in
  # eval mode (running statistics), and R2-D2 takes ProtoNets' protocol.
  module = importlib.import_module(f'experiments.configs.{name}')
  config = module.get_config() if preset is None else module.get_config(preset)
  running = name.startswith(('protonet', 'baseline', 'r2d2'))
  assert config.batch_norm == ('running' if running else 'transductive')


def test_tieredimagenet_presets_are_the_miniimagenet_ones_on_its_split():
  from experiments.configs import maml_miniimagenet
  from experiments.configs import maml_tieredimagenet
  from experiments.configs import protonet_miniimagenet
  from experiments.configs import protonet_tieredimagenet

  for tiered, mini in (
    (protonet_tieredimagenet, protonet_miniimagenet),
    (maml_tieredimagenet, maml_miniimagenet),
  ):
    assert set(tiered.PRESETS) <= set(mini.PRESETS)
    for preset in tiered.PRESETS:
      a = tiered.get_config(preset).to_dict()
      b = mini.get_config(preset).to_dict()
      assert (a['dataset'], a['data']) == (
        'tieredimagenet',
        {'scheme': 'ren', 'image_size': 84},
      )
      assert {k for k in a if a[k] != b[k]} == {'dataset', 'data', 'preset'}
  assert protonet_tieredimagenet.PRESETS == ('conv4_5w1s', 'conv4_5w5s')
