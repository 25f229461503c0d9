"""Config files: one ml_collections `get_config(arg)` per published setting.

Select one by name, `--config=maml_omniglot:5w1s` (`--list_configs` lists
the names and their presets), or by path, `--config=path/to/file.py[:preset]`,
and override any field with `--config.<field>=<value>`. A config file of
your own may start from these with `from . import default`: `load` runs
every file as a member of this package, from a checkout (`experiments`) and
installed (`jaxmeta_experiments`) alike.

A config's `method` holds the options of its algorithm that differ from
the builder's defaults; `--config.method.<option>=<value>` sets any of
`option_defaults(config.algorithm)`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import types
from typing import Any

import ml_collections

import jaxmeta

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
# Builder options the harness builds from other fields.
HARNESS_OPTIONS = {'inner_optimizer': 'config.inner_optimizer'}


class ConfigFileError(ValueError):
  """A config name, file or preset that cannot be loaded."""


def names() -> list[str]:
  """The config files shipped here, by name."""
  return sorted(
    info.name
    for info in pkgutil.iter_modules([CONFIG_DIR])
    if not info.name.startswith('_')
  )


def module(name: str) -> types.ModuleType:
  """The config file `name` of `names()`, imported."""
  return importlib.import_module(f'{__name__}.{name}')


def did_you_mean(word: str, choices) -> str:
  """' (did you mean X?)' for the closest of `choices`, else ''."""
  close = difflib.get_close_matches(word, list(choices), n=1)
  return f' (did you mean {close[0]!r}?)' if close else ''


def _load_file(path: str) -> types.ModuleType:
  """Runs the config file at `path` as a member of this package."""
  if not os.path.isfile(path):
    raise ConfigFileError(
      f'no config file {path!r}. Fix: give an existing file, or a name of '
      '--list_configs.'
    )
  path = os.path.realpath(path)
  if os.path.dirname(path) == CONFIG_DIR:
    return module(os.path.splitext(os.path.basename(path))[0])
  stem = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f'{__name__}.{stem}', path)
  loaded = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(loaded)
  except Exception as e:
    raise ConfigFileError(f'{path}: {type(e).__name__}: {e}') from e
  return loaded


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of `spec`: `NAME[:preset]` (a name of `names()`) or
  `PATH[:preset]` (a `.py` file with `get_config(arg)`).

  Raises:
    ConfigFileError: an unknown name, a missing file, a file without
      `get_config`, or a preset its `get_config` refuses.
  """
  source, has_preset, preset = spec.partition(':')
  if source.endswith('.py') or os.sep in source:
    config_module = _load_file(source)
  elif source in names():
    config_module = module(source)
  else:
    raise ConfigFileError(
      f'unknown config {source!r}{did_you_mean(source, names())}. Fix: one '
      f'of {", ".join(names())} (--list_configs), or a path to a .py file.'
    )
  get_config = getattr(config_module, 'get_config', None)
  if get_config is None:
    raise ConfigFileError(
      f'{source} has no get_config(). Fix: define get_config(arg) returning '
      'an ml_collections.ConfigDict.'
    )
  choices = tuple(getattr(config_module, 'PRESETS', ()))
  if has_preset and choices and preset not in choices:
    raise ConfigFileError(
      f'unknown preset {preset!r} of {source}{did_you_mean(preset, choices)}. '
      f'Fix: one of {", ".join(choices)}.'
    )
  try:
    config = get_config(preset) if has_preset else get_config()
  except Exception as e:
    raise ConfigFileError(f'{spec}: {type(e).__name__}: {e}') from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigFileError(
      f'{source}: get_config() returned {type(config).__name__}. Fix: '
      'return an ml_collections.ConfigDict.'
    )
  return config


def option_defaults(algorithm: str) -> dict[str, Any]:
  """The options of `algorithm`'s builder that a config may set, with the
  builder's defaults: every option but those the harness builds from other
  fields (`HARNESS_OPTIONS`).

  Raises:
    ValueError: for a name not in `jaxmeta.ALGORITHMS`.
  """
  registry = jaxmeta.ALGORITHMS
  if algorithm not in registry:
    raise ValueError(
      f'Unknown algorithm {algorithm!r}{did_you_mean(algorithm, registry)}. '
      f'Fix: one of {", ".join(sorted(registry))}.'
    )
  # The options are the builder's keyword-only parameters.
  parameters = inspect.signature(registry[algorithm]).parameters
  options = jaxmeta.algorithms.options(algorithm)
  return {
    name: parameters[name].default
    for name in options
    if name not in HARNESS_OPTIONS
  }
