"""docs/build.py: the API reference builds, lists the front door, and fails
on pdoc's warnings."""

from pathlib import Path
import re
import subprocess
import sys
import types

import jaxmeta
import jaxmeta.models
from support import REPO

BUILD = REPO / 'docs' / 'build.py'


def _build(out, *modules, env=None):
  return subprocess.run(
    [sys.executable, str(BUILD), f'--out={out}', *modules],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=env,
    timeout=600,
  )


def _anchors(page: Path) -> set[str]:
  return set(re.findall(r'id="([A-Za-z_0-9]+)"', page.read_text()))


def _public(module: types.ModuleType) -> list[str]:
  return [
    name
    for name, value in vars(module).items()
    if not name.startswith('_') and not isinstance(value, types.ModuleType)
  ]


def test_the_reference_lists_every_name_of_the_front_door(tmp_path):
  result = _build(tmp_path)
  assert result.returncode == 0, result.stderr
  assert 'pdoc:' not in result.stderr
  front = _anchors(tmp_path / 'jaxmeta.html')
  names = _public(jaxmeta)
  assert {'maml', 'conv4', 'Model', 'rematerialised', 'MetaTrainState'} <= set(
    names
  )
  assert [n for n in names if n not in front] == []
  models = _anchors(tmp_path / 'jaxmeta' / 'models.html')
  assert [n for n in _public(jaxmeta.models) if n not in models] == []
  # Google-style sections (Args:, Returns:) are rendered as headings.
  assert (
    '<h6 id="arguments">Arguments:</h6>'
    in (tmp_path / 'jaxmeta.html').read_text()
  )


def test_a_warning_fails_the_build(tmp_path):
  (tmp_path / 'docs_probe.py').write_text(
    '"""A module with an annotation pdoc cannot resolve."""\n\n\n'
    "def f(x: 'Missing') -> None:\n"
    '  """Does nothing."""\n'
  )
  env = {'PYTHONPATH': str(tmp_path), 'PATH': '/usr/bin:/bin'}
  result = _build(tmp_path / 'out', 'docs_probe', env=env)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert 'Missing' in lines[0] and lines[0].startswith('pdoc: ')
  assert lines[-1].startswith('Error: pdoc gave 1 warning(s)')
