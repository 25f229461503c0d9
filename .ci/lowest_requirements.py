"""Prints pyproject.toml's lower bounds as pins: `name>=v` -> `name==v`.

The dependencies of the library and of its `experiments` extra, the
packages whose bounds the project states (.ci/oldest installs these). Any
requirement that is not a plain lower bound is an error: its oldest version
would be ambiguous.

  python .ci/lowest_requirements.py [pyproject.toml] > requirements-oldest.txt
"""

import re
import sys
import tomllib

EXTRAS = ('experiments',)
LOWER_BOUND = re.compile(
  r'^([A-Za-z0-9_.-]+)(\[[^\]]*\])?>=([0-9][0-9A-Za-z.]*)$'
)


def lowest(pyproject: dict) -> list[str]:
  """`name==version` for each requirement of the library and of `EXTRAS`."""
  project = pyproject['project']
  requirements = list(project['dependencies'])
  for extra in EXTRAS:
    requirements += project['optional-dependencies'][extra]
  pins = []
  for requirement in requirements:
    match = LOWER_BOUND.match(requirement.replace(' ', ''))
    if not match:
      raise SystemExit(
        f'Error: {requirement!r} in pyproject.toml is not a plain lower bound '
        "'name>=version'. Fix: state it as one."
      )
    name, extras, version = match.groups()
    pins.append(f'{name}{extras or ""}=={version}')
  return pins


if __name__ == '__main__':
  path = sys.argv[1] if len(sys.argv) > 1 else 'pyproject.toml'
  with open(path, 'rb') as f:
    print('\n'.join(lowest(tomllib.load(f))))
