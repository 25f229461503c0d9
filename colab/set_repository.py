r"""Points every notebook at a repository: `python colab/set_repository.py URL`.

The notebooks name their repository in one variable, `JAXMETA_REPO`, in their
setup cell; the "Open in Colab" badge of their first cell must name the same
GitHub repository. This rewrites both in every notebook of this folder, e.g.
for a fork: `python colab/set_repository.py https://github.com/me/jaxmeta`.
"""

import json
from pathlib import Path
import re
import sys

FOLDER = Path(__file__).resolve().parent
_VARIABLE = re.compile(r"JAXMETA_REPO = '[^']*'")
_BADGE = re.compile(r'colab\.research\.google\.com/github/[^/]+/[^/]+/blob/')


def set_repository(url: str) -> list[Path]:
  """Rewrites `JAXMETA_REPO` and the badges; returns the notebooks changed."""
  match = re.fullmatch(r'https://github\.com/([^/]+)/([^/]+?)(\.git)?/?', url)
  if match is None:
    raise ValueError(f'Expected https://github.com/OWNER/NAME, got {url!r}.')
  owner, name = match[1], match[2]
  changed = []
  for path in sorted(FOLDER.glob('*.ipynb')):
    text = path.read_text()
    new = _VARIABLE.sub(
      f"JAXMETA_REPO = 'https://github.com/{owner}/{name}'", text
    )
    new = _BADGE.sub(
      f'colab.research.google.com/github/{owner}/{name}/blob/', new
    )
    json.loads(new)  # Still a notebook.
    if new != text:
      path.write_text(new)
      changed.append(path)
  return changed


if __name__ == '__main__':
  for changed_path in set_repository(sys.argv[1]):
    print(f'updated {changed_path.name}')
