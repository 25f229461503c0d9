"""pyproject.toml's lower bounds: plain, and met by the pinned tested set."""

import re
import sys
import tomllib

from packaging.utils import canonicalize_name
from packaging.version import Version
import pytest

from support import REPO

sys.path.insert(0, str(REPO / '.ci'))
import lowest_requirements


def _pins(text: str) -> dict[str, Version]:
  pins = {}
  for line in text.splitlines():
    match = re.match(r'^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)', line.strip())
    if match:
      pins[canonicalize_name(match.group(1))] = Version(match.group(3))
  return pins


def test_every_bound_is_met_by_the_tested_pins():
  with open(REPO / 'pyproject.toml', 'rb') as f:
    lowest = _pins('\n'.join(lowest_requirements.lowest(tomllib.load(f))))
  tested = _pins((REPO / 'requirements.txt').read_text())
  assert {'jax', 'flax', 'optax', 'chex', 'orbax-checkpoint'} <= set(lowest)
  for name, bound in lowest.items():
    assert name in tested, f'{name} has a bound but no pin in requirements.txt'
    assert bound <= tested[name], (name, bound, tested[name])


def test_a_bound_that_is_not_a_plain_lower_bound_is_refused():
  pyproject = {
    'project': {
      'dependencies': ['jax>=0.8.2', 'numpy<3'],
      'optional-dependencies': {'experiments': []},
    }
  }
  with pytest.raises(SystemExit, match="'numpy<3'.*not a plain lower bound"):
    lowest_requirements.lowest(pyproject)
  pyproject['project']['dependencies'] = ['jax>=0.8.2', 'jax[cpu] >= 0.9']
  assert lowest_requirements.lowest(pyproject) == [
    'jax==0.8.2',
    'jax[cpu]==0.9',
  ]
