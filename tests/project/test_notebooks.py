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
import sys
import types

import nbformat
from nbclient import NotebookClient
import pytest
from support import REPO

COLAB_DIR = REPO / 'colab'
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


def _load_colab_module(name):
  import importlib.util

  spec = importlib.util.spec_from_file_location(name, COLAB_DIR / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_no_notebook_links_to_a_repository_that_is_not_set():
  for path in [*NOTEBOOKS, *sorted((COLAB_DIR / 'executed').glob('*.ipynb'))]:
    text = path.read_text()
    assert 'github.com/jaxmeta' not in text, path
    assert "JAXMETA_REPO = ''" in text, path
    assert 'On Colab: File > Upload notebook' in text, path


def test_one_command_points_every_notebook_at_another_repository(tmp_path):
  import shutil

  module = _load_colab_module('set_repository')
  (tmp_path / 'executed').mkdir()
  for path in NOTEBOOKS:
    shutil.copy(path, tmp_path / path.name)
    shutil.copy(COLAB_DIR / 'executed' / path.name, tmp_path / 'executed')
  before = {p: p.read_text() for p in module.notebooks(tmp_path)}
  changed = module.set_repository('https://github.com/someone/fork', tmp_path)
  assert sorted(changed) == sorted(before) and len(changed) == 6
  for url, owner in (
    ('https://github.com/someone/fork', 'someone/fork'),
    ('https://github.com/other/jaxmeta.git', 'other/jaxmeta'),
  ):
    module.set_repository(url, tmp_path)
    for path in changed:
      text = path.read_text()
      assert f"JAXMETA_REPO = 'https://github.com/{owner}'" in text
      assert (
        f'colab.research.google.com/github/{owner}/blob/main/colab/'
        f'{path.name})' in text
      )
      assert 'On Colab: File > Upload notebook' not in text
      nb = json.loads(text)
      assert nb['metadata'] == json.loads(before[path])['metadata']
      # Only the Colab line and the repository's variable changed.
      old = before[path].splitlines()
      assert len(text.splitlines()) == len(old)
      assert sum(a != b for a, b in zip(text.splitlines(), old)) == 2
  with pytest.raises(ValueError, match='OWNER/NAME'):
    module.set_repository('https://example.com/x', tmp_path)


def _setup_cell(path):
  """The notebook's setup cell as Python (IPython's `!` lines as calls of
  `get_ipython().system`)."""
  from IPython.core.inputtransformer2 import TransformerManager

  source = nbformat.read(path, as_version=4).cells[1].source
  assert source.startswith('# Setup: a jaxmeta checkout')
  return TransformerManager().transform_cell(source)


class _Shell:
  """Records the shell commands of a cell instead of running them."""

  def __init__(self):
    self.commands = []

  def system(self, command):
    self.commands.append(command)


def _run_setup(code, cwd, monkeypatch, colab_dir=None, repo='', shell=None):
  """Runs the setup cell in `cwd`, on a fake Colab whose /content is
  `colab_dir` if given; returns its variables and shell commands."""
  shell = shell or _Shell()
  monkeypatch.chdir(cwd)
  monkeypatch.setattr(sys, 'path', list(sys.path))
  monkeypatch.setenv('JAXMETA_OMNIGLOT_DIR', 'unchanged')
  if colab_dir is not None:
    monkeypatch.setitem(sys.modules, 'google.colab', types.ModuleType('colab'))
    assert "COLAB_DIR = Path('/content')" in code
    code = code.replace(
      "COLAB_DIR = Path('/content')", f'COLAB_DIR = Path({str(colab_dir)!r})'
    )
  code = code.replace("JAXMETA_REPO = ''", f'JAXMETA_REPO = {repo!r}')
  namespace = {'get_ipython': lambda: shell}
  exec(compile(code, 'setup', 'exec'), namespace)
  return namespace, shell.commands


@pytest.mark.parametrize('path', NOTEBOOKS, ids=_ids)
def test_setup_cell_finds_a_checkout_or_says_what_to_do(
  path, tmp_path, monkeypatch
):
  import zipfile

  code = _setup_cell(path)
  # In a checkout: imported from there, nothing installed.
  namespace, commands = _run_setup(code, COLAB_DIR, monkeypatch)
  assert namespace['REPO_ROOT'] == REPO and not commands
  # Outside one, not on Colab: one message with the fix.
  outside = tmp_path / 'outside'
  outside.mkdir()
  with pytest.raises(SystemExit, match='No jaxmeta checkout found. Fix: '):
    _run_setup(code, outside, monkeypatch)
  # Colab with nothing uploaded and no repository: the same message.
  content = tmp_path / 'content'
  content.mkdir()
  with pytest.raises(SystemExit, match='No jaxmeta checkout found'):
    _run_setup(code, content, monkeypatch, colab_dir=content)
  # Colab with a zip of a checkout uploaded: unzipped and installed.
  with zipfile.ZipFile(content / 'jaxmeta-main.zip', 'w') as archive:
    archive.writestr('jaxmeta-main/pyproject.toml', '')
    archive.writestr('jaxmeta-main/jaxmeta/__init__.py', '')
  namespace, commands = _run_setup(
    code, content, monkeypatch, colab_dir=content
  )
  assert namespace['REPO_ROOT'] == content / 'jaxmeta'
  assert (content / 'jaxmeta' / 'jaxmeta' / '__init__.py').is_file()
  assert len(commands) == 1 and commands[0].startswith('pip install -q')
  assert os.environ['JAXMETA_OMNIGLOT_DIR'] == 'unchanged'


def test_setup_cell_clones_a_repository_once_set(tmp_path, monkeypatch):
  code = _setup_cell(NOTEBOOKS[0])
  content = tmp_path / 'content'
  content.mkdir()

  class Cloning(_Shell):
    def system(self, command):
      super().system(command)
      if command.startswith('git clone'):
        (content / 'jaxmeta' / 'jaxmeta').mkdir(parents=True)
        (content / 'jaxmeta' / 'jaxmeta' / '__init__.py').write_text('')
        (content / 'jaxmeta' / 'pyproject.toml').write_text('')

  namespace, commands = _run_setup(
    code,
    content,
    monkeypatch,
    colab_dir=content,
    repo='https://x/y',
    shell=Cloning(),
  )
  assert namespace['REPO_ROOT'] == content / 'jaxmeta'
  assert commands[0].startswith('git clone -q --depth 1 {JAXMETA_REPO}')
  assert commands[1].startswith('pip install -q')


def test_render_writes_executed_copies_with_figures(tmp_path, monkeypatch):
  """`render.py` on a two-cell notebook: the copy has the figure and the
  text, the source is untouched, `--smoke` reaches the kernel only. The
  notebooks themselves run in `test_notebook_runs` (slow tier)."""

  render = _load_colab_module('render')
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
