"""What a config must satisfy, checked before any data is read or compiled.

`validate(config)` checks every field against the constraints below (counts,
choices, ranges, the method's options against its builder's); the builders
(`experiments.build`) raise `ConfigError` for what needs the data or the
model. Each message names the field and the fix.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

import jaxmeta
from jaxmeta.models import norms
from . import common
from . import configs
from . import tasks


# Fields that count things (or seed them), by their least value.
_AT_LEAST = {
  1: (
    'shots queries meta_batch_size num_val_tasks num_eval_tasks '
    'eval_batch_size eval_every checkpoint_every keep_checkpoints log_every '
    'meta_lr_halve_every batch_size'
  ).split(),
  0: (
    'inner_steps eval_inner_steps num_iterations train_shots train_queries '
    'train_ways task_chunk_size seed eval_seed'
  ).split(),
}
_SCHEDULES = ('linear', 'cosine', 'halving')
# The step counter is an int32 on the device.
_MAX_INT = 2**31 - 1


class ConfigError(ValueError):
  """A configuration or workdir that cannot run, found before any training."""


# Fields added since runs were first saved, with the value that runs saved
# before them had.
ADDED_FIELDS = {'train_split': 'train'}


def with_added_fields(config: Any) -> ml_collections.ConfigDict:
  """A copy of `config` (a ConfigDict or the dict of a run's config.json)
  holding every one of `ADDED_FIELDS`: those it lacks take their former
  value, so that runs saved before them evaluate and resume as they were."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  return ml_collections.ConfigDict({**ADDED_FIELDS, **config})


def flatten(config: Any, prefix: str = '') -> dict[str, Any]:
  """`{'model': {'num_filters': 8}}` -> `{'model.num_filters': 8}`."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  out = {}
  for key, value in config.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = common.to_python(value)
  return out


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks everything that can be checked without data or compilation.

  Raises:
    ConfigError: naming the field, its value and what it must be.
  """
  for name, field, choices in (
    ('algorithm', 'algorithm', jaxmeta.ALGORITHMS),
    ('dataset', 'dataset', tasks.names()),
    ('backbone', 'backbone', jaxmeta.models.BACKBONES),
    ('config.batch_norm', 'batch_norm', norms.MODES),
    ('config.inner_optimizer', 'inner_optimizer', ('sgd', 'adam')),
    ('config.meta_optimizer', 'meta_optimizer', ('adam', 'sgd')),
    ('config.meta_lr_schedule', 'meta_lr_schedule', _SCHEDULES),
    ('config.sampler', 'sampler', ('device', 'host')),
    ('config.train_split', 'train_split', tasks.TRAIN_SPLITS),
  ):
    value = config[field]
    if value not in choices:
      raise ConfigError(
        f'Unknown {name} {value!r}{configs.did_you_mean(value, choices)}. '
        f'Fix: --config.{field}=<one of {", ".join(sorted(choices))}>.'
      )
  if not 0 < config.bn_momentum <= 1:
    raise ConfigError(
      f'config.bn_momentum must be in (0, 1], got {config.bn_momentum}.'
    )
  for name, value in flatten(config).items():
    if isinstance(value, int) and not isinstance(value, bool):
      limit = 2**63 - 1 if name in ('seed', 'eval_seed') else _MAX_INT
      if abs(value) > limit:
        raise ConfigError(
          f'config.{name}={value} is too large (at most {limit}).'
        )
  for least, names in _AT_LEAST.items():
    for name in names:
      if config[name] < least:
        raise ConfigError(
          f'config.{name} must be >= {least}, got {config[name]}.'
        )
  for name in ('inner_lr', 'meta_lr'):
    if not (math.isfinite(config[name]) and config[name] > 0):
      raise ConfigError(
        f'config.{name} must be a positive finite number, got {config[name]}.'
      )
  if not math.isfinite(config.meta_lr_final):
    raise ConfigError(
      'config.meta_lr_final must be finite (< 0 for a '
      f'constant rate), got {config.meta_lr_final}.'
    )
  chunk = config.task_chunk_size
  if chunk and config.meta_batch_size % chunk:
    raise ConfigError(
      f'config.task_chunk_size={chunk} must divide '
      f'config.meta_batch_size={config.meta_batch_size}.'
    )
  try:
    jaxmeta.data.augment.check_config(
      jaxmeta.data.AugmentConfig(**config.augment)
    )
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.augment: {e}') from e
  known = configs.option_defaults(config.algorithm)
  unknown = sorted(set(config.method) - set(known))
  if unknown:
    raise ConfigError(
      f'config.method has {unknown}, which {config.algorithm} does not take. '
      f'Fix: remove it; {config.algorithm} takes '
      f'{", ".join(known) if known else "no option"}.'
    )
  for name, value in config.method.items():
    _check_option(config.algorithm, name, value, known[name])
  if config.dataset in jaxmeta.data.DATASETS:
    _validate_classification(config)
  elif config.ways != 1 or config.train_ways:
    raise ConfigError(
      f'config.ways={config.ways}, train_ways={config.train_ways}: '
      f'{config.dataset} tasks are not classification and have no classes. '
      'Fix: --config.ways=1 --config.train_ways=0.'
    )


# Method options with a range, whatever the algorithm: name -> (check,
# the range in words).
_OPTION_RANGES = {
  'momentum': (lambda v: 0 <= v < 1, 'in [0, 1)'),
  'msl_iterations': (lambda v: v >= 0, '>= 0'),
  'first_order_iterations': (lambda v: v >= 0, '>= 0'),
}


def _check_option(algorithm: str, name: str, value: Any, default: Any) -> None:
  """An option of `config.method`: of its default's type, in its range."""
  expected = type(default)
  if default is None:  # Set by the harness unless given: any value.
    ok = True
  elif isinstance(default, bool):
    ok = isinstance(value, bool)
  elif isinstance(default, float):  # An int is a float here.
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  else:
    ok = isinstance(value, expected) and not isinstance(value, bool)
  if not ok:
    raise ConfigError(
      f'config.method.{name}={value!r}: {algorithm} takes a '
      f'{expected.__name__} (default {default!r}). Fix: '
      f'--config.method.{name}=<{expected.__name__}>.'
    )
  check, bound = _OPTION_RANGES.get(name, (None, ''))
  if check is not None and value is not None and not check(value):
    raise ConfigError(
      f'config.method.{name}={value!r} must be {bound}. Fix: '
      f'--config.method.{name}={default!r} (its default).'
    )


def _validate_classification(config: ml_collections.ConfigDict) -> None:
  """The checks of the class-image datasets."""
  for name in ('ways', 'train_ways'):
    # One class is a task every model solves: 100% accuracy says nothing.
    if config[name] == 1:
      fix = '0 (as many as ways) or >= 2' if name == 'train_ways' else '>= 2'
      raise ConfigError(
        f'config.{name}=1: a classification task needs at least 2 classes. '
        f'Fix: --config.{name}=<{fix}>.'
      )
  image_size = config.data.get('image_size')
  if image_size:
    try:
      tasks.check_crop_padding(config.augment.crop_padding, image_size)
    except ValueError as e:
      raise ConfigError(str(e)) from e
