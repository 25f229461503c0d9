"""The command line of the experiment programs: configs and their overrides.

`--config=NAME[:preset]` or `--config=PATH[:preset]` selects a config
(`experiments.configs.load`). Each `--config.<field>=<value>` is taken out of
the command line before absl parses the rest and applied here, so that each
mistake is one line naming the field and the fix. A value is parsed by the
type of the field it replaces: a string as it is, a bool from `true`/`false`
(or `--config.flag`, `--noconfig.flag`), else a number or Python literal.
"""

from __future__ import annotations

import ast
import inspect
import math
import re
from typing import Any, NamedTuple, Sequence

import ml_collections

from jaxmeta import data as data_lib
from . import configs

# Groups of fields listed in full in an error about one of their fields;
# larger ones point to --print_config.
_MAX_LISTED = 12
_OVERRIDE = re.compile(r'^--?(no)?config\.([^=]+)(?:=(.*))?$', re.DOTALL)


class OverrideError(ValueError):
  """A `--config.<field>` override that cannot be applied."""


class Override(NamedTuple):
  """One `--config.<path>[=<value>]` (or `--noconfig.<path>`) argument."""

  path: str
  value: str | None
  negated: bool
  text: str


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[Override]]:
  """`argv` without its `--config.<field>` arguments, and those, in order.

  Arguments after a bare `--` are positional and stay as they are.
  """
  rest, overrides = [], []
  for i, arg in enumerate(argv):
    if arg == '--':
      rest.extend(argv[i:])
      break
    match = _OVERRIDE.match(arg) if i else None
    if match:
      negated, path, value = match.groups()
      overrides.append(Override(path, value, bool(negated), arg))
    else:
      rest.append(arg)
  return rest, overrides


def _unknown(path: str, group, prefix: str) -> str:
  """The message for a field `path` that `group` (at `prefix`) lacks."""
  names = [f'{prefix}{name}' for name in group.keys()]
  hint = configs.did_you_mean(path, names)
  if len(names) <= _MAX_LISTED:
    fix = f'one of {", ".join(names)}'
  else:
    fix = '--print_config lists every field'
  return f'unknown config field {path!r}. Fix: {fix}{hint}.'


def _parent(config, path: str):
  """The group holding the field `path` and the field's name in it."""
  parts = path.split('.')
  group, prefix = config, ''
  for part in parts[:-1]:
    if part not in group:
      raise OverrideError(_unknown(prefix + part, group, prefix))
    group = group[part]
    prefix += f'{part}.'
    if not isinstance(group, ml_collections.ConfigDict):
      raise OverrideError(
        f'config.{prefix[:-1]} is a single value, not a group of fields, so '
        f'it has no field {parts[-1]!r}. Fix: --config.{prefix[:-1]}=<value>.'
      )
  if parts[-1] not in group:
    raise OverrideError(_unknown(path, group, prefix))
  return group, parts[-1]


def _literal(text: str) -> Any:
  """A Python literal, else the text itself (as ml_collections parses)."""
  try:
    return ast.literal_eval(text)
  except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
    return text


def parse_value(current: Any, override: Override) -> Any:
  """The value of `override` for a field whose value is now `current`."""
  path, text = override.path, override.value
  if isinstance(current, bool):
    if text is None:
      return not override.negated
    if text.lower() in ('true', '1'):
      return True
    if text.lower() in ('false', '0'):
      return False
    raise OverrideError(
      f'{override.text}: config.{path} is true or false. Fix: '
      f'--config.{path}=true, --config.{path}=false or --noconfig.{path}.'
    )
  if override.negated or text is None:
    raise OverrideError(
      f'{override.text}: config.{path} is not true or false and needs a '
      f'value. Fix: --config.{path}=<value>.'
    )
  kind = type(current).__name__
  if isinstance(current, str):
    return text
  try:
    if isinstance(current, int):
      value = _literal(text)
      if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError
      return value
    if isinstance(current, float):
      return float(text)
  except ValueError:
    raise OverrideError(
      f'{override.text}: config.{path} is a number ({kind}), not {text!r}. '
      f'Fix: --config.{path}=<{kind}> (now {current!r}).'
    ) from None
  value = _literal(text)
  if isinstance(current, ml_collections.ConfigDict):
    if not isinstance(value, dict):
      raise OverrideError(
        f'{override.text}: config.{path} is a group of fields. Fix: set one '
        f'with --config.{path}.<field>=<value>, or all with '
        f'--config.{path}="{{\'field\': value}}".'
      )
    return ml_collections.ConfigDict(value)
  if isinstance(current, (tuple, list)):
    if not isinstance(value, (tuple, list)):
      raise OverrideError(
        f'{override.text}: config.{path} is a sequence. Fix: '
        f"--config.{path}='{current!r}' with your values."
      )
    return type(current)(value)
  return value


def _check_order(overrides: Sequence[Override]) -> None:
  """Refuses a group of fields set after a field inside it, which would
  undo that field."""
  for i, inner in enumerate(overrides):
    for outer in overrides[i + 1 :]:
      if inner.path.startswith(outer.path + '.'):
        raise OverrideError(
          f'--config.{outer.path} comes after --config.{inner.path} and '
          f'would replace it. Fix: give --config.{outer.path} first.'
        )


def _assign(group, name: str, value: Any, override: Override) -> None:
  try:
    group[name] = value
  except TypeError as e:
    raise OverrideError(
      f'{override.text}: {e}. Fix: --config.{override.path}=<a value like '
      f'{group[name]!r}>.'
    ) from None


def _set_option(config, override: Override) -> None:
  """Sets `method.<option>`: an option of `config.algorithm`'s builder, at
  its default until set."""
  name = override.path[len('method.') :]
  try:
    defaults = configs.option_defaults(config.algorithm)
  except ValueError as e:
    raise OverrideError(str(e)) from None
  if name not in defaults:
    if name in configs.HARNESS_OPTIONS:
      fix = f'set {configs.HARNESS_OPTIONS[name]}'
    elif defaults:
      names = [f'method.{n}' for n in defaults]
      fix = f'{config.algorithm} takes {", ".join(names)}'
      fix += configs.did_you_mean(override.path, names)
    else:
      fix = f'{config.algorithm} takes no option'
    raise OverrideError(f'unknown config field {override.path!r}. Fix: {fix}.')
  current = config.method.get(name, defaults[name])
  _assign(config.method, name, parse_value(current, override), override)


def _data_options(config) -> dict[str, Any]:
  """The keyword options of `config.dataset`'s loader and their defaults
  (none for a dataset that is not registered); a `bool | None` option's
  default reads as False, so that its override parses as a flag does."""
  loader = data_lib.DATASETS.get(config.get('dataset'))
  if loader is None:
    return {}
  return {
    name: False
    if p.default is None and 'bool' in str(p.annotation)
    else p.default
    for name, p in inspect.signature(loader).parameters.items()
    if p.default is not inspect.Parameter.empty
    and name not in ('split', 'data_dir', 'source_dir')
  }


def _unset_data_option(config, override: Override) -> tuple[str, Any] | None:
  """`(name, default)` if `override` sets `data.<name>`, an option of the
  dataset's loader that `config.data` leaves at its default; else None."""
  parts = override.path.split('.')
  data = config.get('data')
  if not (
    len(parts) == 2
    and parts[0] == 'data'
    and isinstance(data, ml_collections.ConfigDict)
    and parts[1] not in data
  ):
    return None
  defaults = _data_options(config)
  return (parts[1], defaults[parts[1]]) if parts[1] in defaults else None


def apply_overrides(
  config: ml_collections.ConfigDict, overrides: Sequence[Override]
) -> ml_collections.ConfigDict:
  """A copy of `config` with `overrides` applied, in order.

  The algorithm's options (`method.<option>`) come last, once `algorithm`
  is final: any option of its builder can be set (`configs.option_defaults`),
  whether or not the config lists it; so can any keyword option of the
  dataset's loader (`data.<option>`, e.g. Omniglot's `resample`).

  Raises:
    OverrideError: naming the field and the fix.
  """
  _check_order(overrides)
  config = ml_collections.ConfigDict(config.to_dict())
  has_options = (
    isinstance(config.get('method'), ml_collections.ConfigDict)
    and 'algorithm' in config
  )
  options = [
    o for o in overrides if has_options and o.path.startswith('method.')
  ]
  for override in overrides:
    if override in options:
      continue
    data_option = _unset_data_option(config, override)
    if data_option is not None:
      name, default = data_option
      config.data[name] = parse_value(default, override)
      continue
    group, name = _parent(config, override.path)
    _assign(group, name, parse_value(group[name], override), override)
  for override in options:
    _set_option(config, override)
  return config


def load(spec: str, overrides: Sequence[Override]) -> ml_collections.ConfigDict:
  """The config `spec` (`NAME[:preset]` or `PATH[:preset]`) with the
  overrides applied.

  Raises:
    configs.ConfigFileError, OverrideError: naming the problem and the fix.
  """
  return apply_overrides(configs.load(spec), overrides)


def _format(value: Any) -> str:
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value if value == '{}' else repr(value)


def _lines(group: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  lines = []
  for name, value in group.items():
    if isinstance(value, ml_collections.ConfigDict) and value:
      lines.extend(_lines(value, f'{prefix}{name}.'))
    else:
      shown = '{}' if isinstance(value, ml_collections.ConfigDict) else value
      lines.append(f'{prefix}{name} = {_format(shown)}')
  return lines


def describe(config: ml_collections.ConfigDict) -> str:
  """Every field as `name = value`, one a line (nested fields dotted), and
  the algorithm's options the config leaves at their defaults."""
  lines = _lines(config)
  method = config.get('method')
  if isinstance(method, ml_collections.ConfigDict) and 'algorithm' in config:
    try:
      defaults = configs.option_defaults(config.algorithm)
    except ValueError:
      defaults = {}
    at = max(i for i, line in enumerate(lines) if line.startswith('method'))
    lines[at + 1 : at + 1] = [
      f"method.{name} = {_format(value)}  # {config.algorithm}'s default"
      for name, value in defaults.items()
      if name not in method
    ]
    lines = [line for line in lines if line != 'method = {}']
  return '\n'.join(lines)


def list_configs() -> str:
  """Every config file: its name, presets (the default first) and the first
  paragraph of its docstring; `--config=NAME:PRESET` selects one."""
  lines = []
  for name in configs.names():
    module = configs.module(name)
    presets = list(getattr(module, 'PRESETS', ()))
    default = inspect.signature(module.get_config).parameters.get('arg')
    default = None if default is None else default.default
    if default in presets:
      presets.remove(default)
      presets.insert(0, f'{default} (default)')
    summary = ' '.join((module.__doc__ or '').strip().split('\n\n')[0].split())
    listed = f': {", ".join(presets)}' if presets else ''
    lines.append(f'{name}{listed}\n    {summary}')
  return '\n'.join(lines)
