"""The installed package: every package listed, `experiments/` installed as
`jaxmeta_experiments`, configs by name from the wheel."""

import importlib
import os
import shutil
import subprocess
import sys
import tomllib

import pytest
from support import REPO

ROOT = str(REPO)
with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as _f:
  PYPROJECT = tomllib.load(_f)
SETUPTOOLS = PYPROJECT['tool']['setuptools']


def _package_folders(folder: str, name: str):
  for here, dirs, files in os.walk(os.path.join(ROOT, folder)):
    dirs[:] = [d for d in dirs if not d.startswith(('.', '_'))]
    if '__init__.py' in files:
      relative = os.path.relpath(here, os.path.join(ROOT, folder))
      yield (
        name if relative == '.' else f'{name}.' + relative.replace(os.sep, '.')
      )


def test_every_package_folder_is_installed():
  folders = set(_package_folders('jaxmeta', 'jaxmeta')) | set(
    _package_folders('experiments', 'jaxmeta_experiments')
  )
  assert set(SETUPTOOLS['packages']) == folders
  assert SETUPTOOLS['package-dir'] == {'jaxmeta_experiments': 'experiments'}


def test_console_scripts_name_the_installed_programs():
  scripts = PYPROJECT['project']['scripts']
  assert set(scripts) == {
    'jaxmeta-train',
    'jaxmeta-omniglot',
    'jaxmeta-sinusoid',
  }
  for target in scripts.values():
    module, function = target.split(':')
    assert module.startswith('jaxmeta_experiments.')
    in_checkout = 'experiments.' + module.split('.', 1)[1]
    assert callable(getattr(importlib.import_module(in_checkout), function))


def _run(args, cwd, env):
  return subprocess.run(
    args, cwd=cwd, env=env, capture_output=True, text=True, check=False
  )


@pytest.mark.slow
def test_the_wheel_runs_configs_by_name_outside_the_checkout(tmp_path):
  """Built without network (this environment's setuptools) from a copy of
  the sources, installed into a folder of its own, run from outside the
  checkout."""
  source = tmp_path / 'source'
  source.mkdir()
  for name in ('pyproject.toml', 'README.md', 'LICENSE'):
    shutil.copy(os.path.join(ROOT, name), source / name)
  for name in ('jaxmeta', 'experiments'):
    shutil.copytree(
      os.path.join(ROOT, name),
      source / name,
      ignore=shutil.ignore_patterns('__pycache__'),
    )
  done = _run(
    [
      sys.executable,
      '-m',
      'pip',
      'wheel',
      '-q',
      '--no-deps',
      '--no-build-isolation',
      '-w',
      str(tmp_path / 'dist'),
      str(source),
    ],
    tmp_path,
    None,
  )
  assert done.returncode == 0, done.stderr
  (wheel,) = (tmp_path / 'dist').iterdir()
  site = tmp_path / 'site'
  done = _run(
    [
      sys.executable,
      '-m',
      'pip',
      'install',
      '-q',
      '--no-deps',
      '--target',
      str(site),
      str(wheel),
    ],
    tmp_path,
    None,
  )
  assert done.returncode == 0, done.stderr
  assert not (site / 'experiments').exists()
  env = dict(os.environ, PYTHONPATH=str(site))
  outside = tmp_path / 'elsewhere'
  outside.mkdir()
  done = _run([sys.executable, '-c', 'import experiments'], outside, env)
  assert 'ModuleNotFoundError' in done.stderr, done
  # A config file of one's own imports the shipped ones relatively.
  (outside / 'mine.py').write_text(
    'from . import maml_omniglot\n\n\n'
    "def get_config(arg='5w1s'):\n"
    '  c = maml_omniglot.get_config(arg)\n'
    '  c.seed = 3\n'
    '  return c\n'
  )
  train = str(site / 'bin' / 'jaxmeta-train')
  done = _run(
    [
      train,
      '--config=mine.py:20w1s',
      '--config.method.first_order=true',
      '--print_config',
    ],
    outside,
    env,
  )
  assert done.returncode == 0, done.stderr
  printed = dict(line.split(' = ', 1) for line in done.stdout.splitlines())
  assert (printed['ways'], printed['seed'], printed['method.first_order']) == (
    '20',
    '3',
    'True',
  )
  done = _run([train, '--list_configs'], outside, env)
  assert 'maml_omniglot: 5w1s (default), 5w5s, 20w1s, 20w5s' in done.stdout
  done = _run(
    [str(site / 'bin' / 'jaxmeta-omniglot'), '--config.bogus=1'], outside, env
  )
  assert done.returncode == 1 and done.stderr.startswith(
    "Error: --config: unknown config field 'bogus'."
  ), done.stderr
