r"""Points every notebook at a repository: `python colab/set_repository.py URL`.

Out of the box the notebooks name no repository: on Colab their setup cell
installs jaxmeta from a checkout uploaded as a zip. Once the code is on
GitHub (or a fork is), this sets the setup cell's `JAXMETA_REPO` (Colab then
clones it) and turns the first cell's Colab line into an "Open in Colab"
badge, in every notebook of this folder and of `executed/`:

  python colab/set_repository.py https://github.com/OWNER/NAME
"""

import json
from pathlib import Path
import re
import sys

FOLDER = Path(__file__).resolve().parent
_VARIABLE = re.compile(r"^JAXMETA_REPO = '[^']*'", re.M)
# The first cell's Colab line: the upload instructions, or a badge.
_COLAB_LINE = re.compile(
  r'^(On Colab: File > Upload notebook.*'
  r'|\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\))$'
)


def notebooks(folder: Path) -> list[Path]:
  """The notebooks of `folder` and their executed copies."""
  return sorted(folder.glob('*.ipynb')) + sorted(
    (folder / 'executed').glob('*.ipynb')
  )


def _dump(nb: dict, like: str) -> str:
  """`nb` as JSON in the layout of the file text `like` (the sources keep
  their cells' key order, the executed copies are sorted, as nbformat
  writes them)."""
  loaded = json.loads(like)
  for sort_keys in (False, True):
    if (
      json.dumps(loaded, sort_keys=sort_keys, indent=1, ensure_ascii=False)
      + ('\n')
      == like
    ):
      break
  return (
    json.dumps(nb, sort_keys=sort_keys, indent=1, ensure_ascii=False) + '\n'
  )


def set_repository(url: str, folder: Path | None = None) -> list[Path]:
  """Sets `JAXMETA_REPO` and the Colab badges; returns the notebooks changed.

  Raises:
    ValueError: for a URL that is not https://github.com/OWNER/NAME.
  """
  folder = FOLDER if folder is None else folder
  match = re.fullmatch(r'https://github\.com/([^/]+)/([^/]+?)(\.git)?/?', url)
  if match is None:
    raise ValueError(f'Expected https://github.com/OWNER/NAME, got {url!r}.')
  owner, name = match[1], match[2]
  changed = []
  for path in notebooks(folder):
    text = path.read_text()
    nb = json.loads(text)
    badge = (
      '[![Open In Colab](https://colab.research.google.com/assets/'
      f'colab-badge.svg)](https://colab.research.google.com/github/{owner}/'
      f'{name}/blob/main/colab/{path.name})'
    )
    for cell in nb['cells']:
      lines = cell['source']
      if isinstance(lines, str):
        lines = lines.splitlines(keepends=True)
      new = []
      for line in lines:
        end = '\n' if line.endswith('\n') else ''
        body = line[: len(line) - len(end)]
        if cell['cell_type'] == 'markdown' and _COLAB_LINE.match(body):
          body = badge
        elif cell['cell_type'] == 'code':
          body = _VARIABLE.sub(
            f"JAXMETA_REPO = 'https://github.com/{owner}/{name}'", body
          )
        new.append(body + end)
      cell['source'] = new
    new_text = _dump(nb, like=text)
    if new_text != text:
      path.write_text(new_text)
      changed.append(path)
  return changed


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit(__doc__)
  try:
    updated = set_repository(sys.argv[1])
  except ValueError as e:
    sys.exit(
      f'Error: {e} Fix: python colab/set_repository.py '
      'https://github.com/OWNER/NAME'
    )
  for changed_path in updated:
    print(f'updated {changed_path.relative_to(FOLDER)}')
