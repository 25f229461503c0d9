"""Config files: one ml_collections `get_config(arg)` per published setting.

Select one by name, `--config=maml_omniglot:5w1s` (`--list_configs` lists
the names and their presets), or by path, `--config=path/to/file.py[:preset]`,
and override any field with `--config.<field>=<value>`. A config file of
your own may start from these with `from . import default`: `load` runs
every file as a member of this package, from a checkout (`experiments`) and
installed (`jaxmeta_experiments`) alike.

Every config's `method` holds the options of its algorithm with their
defaults (`method_options`), so each one can be set from the command line.
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
# Builder options the harness supplies itself (not config values).
HARNESS_OPTIONS = {
  'inner_optimizer': 'config.inner_optimizer',
  'num_classes': "the training split's classes",
}


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


def presets(name: str) -> tuple[str, ...]:
  """The presets of the config file `name` (its `PRESETS`), or ()."""
  return tuple(getattr(module(name), 'PRESETS', ()))


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
  except Exception as e:  # pylint: disable=broad-except
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
    label = source
  elif source in names():
    config_module = module(source)
    label = source
  else:
    raise ConfigFileError(
      f'unknown config {source!r}{did_you_mean(source, names())}. Fix: one '
      f'of {", ".join(names())} (--list_configs), or a path to a .py file.'
    )
  get_config = getattr(config_module, 'get_config', None)
  if get_config is None:
    raise ConfigFileError(
      f'{label} has no get_config(). Fix: define get_config(arg) returning '
      'an ml_collections.ConfigDict.'
    )
  choices = tuple(getattr(config_module, 'PRESETS', ()))
  if has_preset and choices and preset not in choices:
    raise ConfigFileError(
      f'unknown preset {preset!r} of {label}{did_you_mean(preset, choices)}. '
      f'Fix: one of {", ".join(choices)}.'
    )
  try:
    config = get_config(preset) if has_preset else get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigFileError(f'{spec}: {type(e).__name__}: {e}') from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigFileError(
      f'{label}: get_config() returned {type(config).__name__}. Fix: '
      'return an ml_collections.ConfigDict.'
    )
  return config


def option_defaults(algorithm: str) -> dict[str, Any]:
  """The options of `algorithm`'s builder that a config sets, with their
  defaults: every option but those the harness supplies (`HARNESS_OPTIONS`).

  Raises:
    ValueError: for a name not in `jaxmeta.algorithms.REGISTRY`.
  """
  registry = jaxmeta.algorithms.REGISTRY
  if algorithm not in registry:
    raise ValueError(
      f'Unknown algorithm {algorithm!r}{did_you_mean(algorithm, registry)}; '
      f'choose one of {sorted(registry)}.'
    )
  options = jaxmeta.algorithms.options(algorithm)
  # The registry's builder, or the function it wraps (its keywords are
  # passed on as `**options`).
  for builder in (
    inspect.unwrap(registry[algorithm]),
    getattr(jaxmeta.algorithms, algorithm, None),
  ):
    if builder is None:
      continue
    parameters = inspect.signature(builder).parameters
    if all(name in parameters for name in options):
      break
  else:
    raise ValueError(f'The defaults of {algorithm} options {options} unknown.')
  return {
    name: parameters[name].default
    for name in options
    if name not in HARNESS_OPTIONS
  }


def method_options(algorithm: str, **values: Any) -> ml_collections.ConfigDict:
  """`config.method` for `algorithm`: every option with its default, but
  `values`."""
  defaults = option_defaults(algorithm)
  unknown = sorted(set(values) - set(defaults))
  if unknown:
    raise ValueError(
      f'{algorithm} takes no option {unknown}; its options are '
      f'{sorted(defaults)}.'
    )
  return ml_collections.ConfigDict({**defaults, **values})
