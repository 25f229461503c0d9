r"""Executed copies of the notebooks: `python colab/render.py`.

Runs every notebook of this folder top to bottom at full size in a fresh
`python3` kernel (working directory `colab/`, figures inline) and writes the
copy with its outputs and figures to `colab/executed/<name>.ipynb`, which
GitHub renders; the sources stay committed without outputs. `--smoke` runs
the tests' tiny sizes instead, `--only NAME` one notebook, `--out DIR`
elsewhere. Needs the `notebooks` extra (and PyTorch for the live part of
`jax_vs_pytorch`).
"""

import argparse
import os
from pathlib import Path
import sys

FOLDER = Path(__file__).resolve().parent
# Per cell: the full-size cells take minutes on 2 CPU cores.
CELL_TIMEOUT_S = 3600


def execute(
  path: Path, smoke: bool = False, timeout: int = CELL_TIMEOUT_S
) -> 'nbformat.NotebookNode':  # noqa: F821
  """The notebook at `path`, executed in memory (the file is not touched)."""
  import nbformat
  from nbclient import NotebookClient

  nb = nbformat.read(path, as_version=4)
  env = {'MPLBACKEND': 'module://matplotlib_inline.backend_inline'}
  if smoke:
    env['JAXMETA_NOTEBOOK_SMOKE'] = '1'
  saved = {k: os.environ.get(k) for k in (*env, 'JAXMETA_NOTEBOOK_SMOKE')}
  os.environ.pop('JAXMETA_NOTEBOOK_SMOKE', None)
  os.environ.update(env)  # The kernel inherits this process's environment.
  try:
    NotebookClient(
      nb,
      timeout=timeout,
      kernel_name='python3',
      allow_errors=False,
      resources={'metadata': {'path': str(path.parent)}},
    ).execute()
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return nb


def main(argv=None) -> int:
  import nbformat

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--smoke', action='store_true', help='tiny sizes')
  parser.add_argument('--only', help='one notebook, by name without .ipynb')
  parser.add_argument('--out', default=str(FOLDER / 'executed'))
  args = parser.parse_args(argv)
  paths = sorted(FOLDER.glob('*.ipynb'))
  if args.only:
    paths = [p for p in paths if p.stem == args.only]
    if not paths:
      parser.error(f'no notebook {args.only!r} in {FOLDER}')
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for path in paths:
    print(f'executing {path.name} ...', flush=True)
    nb = execute(path, smoke=args.smoke)
    nbformat.write(nb, out / path.name)
    print(f'wrote {out / path.name}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
