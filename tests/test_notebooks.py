"""The Colab notebooks: executed headless at smoke size, committed without outputs.

Every notebook in `colab/` runs top to bottom in a fresh `python3` kernel with
`JAXMETA_NOTEBOOK_SMOKE=1` (the notebooks' switch to tiny sizes, same cells),
`MPLBACKEND=Agg` and the working directory `colab/`, as CI runs it. Execution
happens on an in-memory copy: the committed files are never written. A
notebook nobody runs is already broken.
"""

import json
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient
import pytest

_REPO = Path(__file__).resolve().parents[1]
COLAB_DIR = _REPO / 'colab'
NOTEBOOKS = sorted(COLAB_DIR.glob('*.ipynb'))
NUM_NOTEBOOKS = 3
# Per cell. Smoke cells take well under a minute on 2 CPU cores, but the first
# compilations on a loaded CI machine can take several.
CELL_TIMEOUT_S = 900

# Placed on the kernel's PYTHONPATH as `sitecustomize`: makes `import torch`
# (and `higher`) fail as if PyTorch were not installed.
_HIDE_TORCH = """
import importlib.abc
import sys


class _HideTorch(importlib.abc.MetaPathFinder):

  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('torch', 'higher'):
      raise ModuleNotFoundError(f'No module named {name!r} (hidden by the test)',
                                name=name)
    return None


sys.meta_path.insert(0, _HideTorch())
"""


def _ids(path: Path) -> str:
  return path.stem


def _uses_omniglot(nb) -> bool:
  return any('omniglot.load' in cell.source for cell in nb.cells)


@pytest.fixture(scope='session')
def shared_data_dir(tmp_path_factory) -> str:
  """A TFDS data dir shared by the notebooks of this session (not the user's)."""
  return str(tmp_path_factory.mktemp('notebook_tfds'))


def _execute(
  path: Path,
  data_dir: str,
  monkeypatch,
  extra_env: dict[str, str] | None = None,
):
  """Runs the notebook on a copy in memory; the file on disk is not touched."""
  before = path.read_bytes()
  nb = nbformat.read(path, as_version=4)
  # The kernel inherits this process's environment.
  monkeypatch.setenv('JAXMETA_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  monkeypatch.setenv('JAXMETA_DATA_DIR', data_dir)
  for name, value in (extra_env or {}).items():
    monkeypatch.setenv(name, value)
  client = NotebookClient(
    nb,
    timeout=CELL_TIMEOUT_S,
    kernel_name='python3',
    allow_errors=False,
    resources={'metadata': {'path': str(COLAB_DIR)}},
  )
  client.execute()  # Raises CellExecutionError on the first failing cell.
  assert path.read_bytes() == before, f'{path.name} was modified on disk'
  return nb


def _stdout(nb) -> str:
  return ''.join(
    output.get('text', '')
    for cell in nb.cells
    if cell.cell_type == 'code'
    for output in cell.outputs
    if output.output_type == 'stream'
  )


def test_there_are_three_notebooks():
  assert len(NOTEBOOKS) == NUM_NOTEBOOKS, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize('path', NOTEBOOKS, ids=_ids)
def test_committed_notebook_has_no_outputs(path):
  nb = nbformat.read(path, as_version=4)  # The file as it is on disk.
  nbformat.validate(nb)
  dirty = [
    i
    for i, cell in enumerate(nb.cells)
    if cell.cell_type == 'code'
    and (cell.get('outputs') or cell.get('execution_count') is not None)
  ]
  assert not dirty, (
    f'{path.name}: cells {dirty} have outputs or an execution count; clear '
    'them before committing (e.g. `jupyter nbconvert --clear-output '
    '--inplace`).'
  )


@pytest.mark.slow
@pytest.mark.parametrize('path', NOTEBOOKS, ids=_ids)
def test_notebook_runs(path, shared_data_dir, request, monkeypatch):
  data_dir = shared_data_dir
  if _uses_omniglot(nbformat.read(path, as_version=4)):
    # Prepared once per session from the shipped zips (conftest.py).
    data_dir = request.getfixturevalue('omniglot_data_dir')
  _execute(path, data_dir, monkeypatch)


@pytest.mark.slow
def test_jax_vs_pytorch_runs_without_torch(
  shared_data_dir, tmp_path, monkeypatch
):
  """Without PyTorch the notebook skips the live run and draws what is committed."""
  (tmp_path / 'sitecustomize.py').write_text(_HIDE_TORCH)
  pythonpath = os.pathsep.join(
    p for p in (str(tmp_path), os.environ.get('PYTHONPATH')) if p
  )
  nb = _execute(
    COLAB_DIR / 'jax_vs_pytorch.ipynb',
    shared_data_dir,
    monkeypatch,
    {'PYTHONPATH': pythonpath},
  )
  out = _stdout(nb)
  assert 'PyTorch is not installed' in out, out[-2000:]
  assert 'this machine (live' not in out, out[-2000:]


def test_one_command_points_every_notebook_at_another_repository(
  tmp_path, monkeypatch
):
  import importlib.util  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location(
    'set_repository', COLAB_DIR / 'set_repository.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for path in NOTEBOOKS:
    shutil.copy(path, tmp_path / path.name)
  monkeypatch.setattr(module, 'FOLDER', tmp_path)
  changed = module.set_repository('https://github.com/someone/fork')
  assert len(changed) == len(NOTEBOOKS)
  for path in changed:
    text = path.read_text()
    assert "JAXMETA_REPO = 'https://github.com/someone/fork'" in text
    assert 'colab.research.google.com/github/someone/fork/blob/' in text
    assert 'jaxmeta/jaxmeta' not in text
    metadata = json.loads(text)['metadata']
    assert metadata['accelerator'] == 'GPU'
  with pytest.raises(ValueError, match='OWNER/NAME'):
    module.set_repository('https://example.com/x')


def test_render_writes_executed_copies_with_figures(tmp_path, monkeypatch):
  """`render.py` on a two-cell notebook: the copy has the figure and the
  text, the source is untouched, `--smoke` reaches the kernel only. The
  notebooks themselves run in `test_notebook_runs` (slow tier)."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location(
    'render', COLAB_DIR / 'render.py'
  )
  render = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(render)
  folder = tmp_path / 'colab'
  folder.mkdir()
  source = folder / 'tiny.ipynb'
  nbformat.write(
    nbformat.v4.new_notebook(
      cells=[
        nbformat.v4.new_code_cell(
          'import os\n'
          'from pathlib import Path\n'
          "print('smoke', os.environ.get('JAXMETA_NOTEBOOK_SMOKE'))\n"
          "print('in', Path.cwd().name)"
        ),
        nbformat.v4.new_code_cell(
          'import matplotlib.pyplot as plt\n'
          'plt.plot([0, 1], [1, 0])\n'
          'plt.show()'
        ),
      ]
    ),
    source,
  )
  before = source.read_bytes()
  monkeypatch.setattr(render, 'FOLDER', folder)
  out = tmp_path / 'executed'
  assert render.main(['--smoke', '--only', 'tiny', '--out', str(out)]) == 0
  assert source.read_bytes() == before
  nb = nbformat.read(out / 'tiny.ipynb', as_version=4)
  assert 'smoke 1\nin colab' in _stdout(nb)
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
  assert any('image/png' in o.get('data', {}) for o in outputs)
  assert 'JAXMETA_NOTEBOOK_SMOKE' not in os.environ
