"""Builds the API reference (HTML, from the docstrings) with pdoc.

  python docs/build.py            # into docs/api/ (not committed)
  python docs/build.py --out=DIR

A package's page lists the names its `__init__` re-exports (its `__all__`,
or, where it has none, every public name it imports that is not a module),
so `jaxmeta.html` is the front door users import from. Any warning pdoc
gives (a module that does not import, an annotation it cannot resolve)
fails the build, except `KNOWN_WARNINGS`, which come from other packages'
annotations.
"""

import argparse
import importlib
import os
import pkgutil
import re
import sys
import types
import warnings

import pdoc
import pdoc.render

# pdoc resolves an annotation in the namespace of the function that holds it.
# These are annotations it cannot resolve there, none of them jaxmeta's to
# change: tensorflow_datasets' BuilderConfig fields (inherited by the
# datasets' configs), optax's recursive `ArrayTree`, and the fields of
# NamedTuples in modules with postponed annotations, whose generated
# `__init__` lives in the collections module's namespace.
KNOWN_WARNINGS = (
  r'for \S+\.(version|supported_versions)\. Import of Version failed',
  r'for \S+Config\.__init__\. Import of utils failed',
  r'MetaTrainState\.\S+\. Import of ArrayTree failed',
  r"ForwardRef\('(np\.ndarray|Path)'\) for jaxmeta\.[\w.]+\.__init__",
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, 'docs', 'api')


def declare_front_doors(package: types.ModuleType) -> None:
  """Gives `package` and its subpackages an `__all__` where they have none.

  Their public re-exported names and their public submodules: pdoc lists on
  a package's page only what its `__init__` defines, unless `__all__` names
  more, and then only the submodules `__all__` names.
  """
  if not hasattr(package, '__path__'):
    return
  packages = [package] + [
    importlib.import_module(info.name)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.')
    if info.ispkg
  ]
  for p in packages:
    if hasattr(p, '__all__'):
      continue
    names = [
      name
      for name, value in vars(p).items()
      if not name.startswith('_') and not isinstance(value, types.ModuleType)
    ]
    submodules = [
      info.name
      for info in pkgutil.iter_modules(p.__path__)
      if not info.name.startswith('_') and info.name not in names
    ]
    p.__all__ = names + submodules


def unexpected(messages: list[str]) -> list[str]:
  """The warnings that are not `KNOWN_WARNINGS`."""
  return [
    m for m in messages if not any(re.search(k, m) for k in KNOWN_WARNINGS)
  ]


def build(out: str, modules: tuple[str, ...] = ('jaxmeta',)) -> list[str]:
  """Writes the HTML reference of `modules` (and their submodules) to `out`.

  Returns:
    The unexpected warnings (an empty list for a clean build).
  """
  for module in modules:
    declare_front_doors(importlib.import_module(module))
  pdoc.render.configure(docformat='google', footer_text='jaxmeta')
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    pdoc.pdoc(*modules, output_directory=pdoc.Path(out))
  return unexpected([str(w.message) for w in caught])


def main():
  sys.path.insert(0, REPO)  # The checkout's jaxmeta, not an installed one.
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--out', default=DEFAULT_OUT)
  parser.add_argument('modules', nargs='*', default=['jaxmeta'])
  args = parser.parse_args()
  problems = build(args.out, tuple(args.modules))
  for problem in problems:
    print(f'pdoc: {problem}', file=sys.stderr)
  if problems:
    print(
      f'Error: pdoc gave {len(problems)} warning(s), listed above. Fix: '
      'correct the docstrings or annotations they name.',
      file=sys.stderr,
    )
    sys.exit(1)
  print(f'API reference: {os.path.join(args.out, "index.html")}')


if __name__ == '__main__':
  main()
