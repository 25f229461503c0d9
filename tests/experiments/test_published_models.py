"""The published models of `benchmarks/reproduction/`: unaltered, loadable,
and scoring what their cards (`model.json`) record."""

import hashlib
import json
import os
import re
from pathlib import Path
import shlex
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from experiments import train
from support import REPO

MODELS = sorted(
  p.parent for p in (REPO / 'benchmarks' / 'reproduction').glob('*/model.json')
)
# What `--mode=eval` and `load_run` write into the folder, and what
# describes the model: the rest is the model and is hashed.
NOT_HASHED = {'lock', 'eval.json', 'model.json', 'curve.png'}
README_MODEL = 'benchmarks/reproduction/protonet_omniglot_5w1s'


def _card(folder: Path) -> dict:
  return json.loads((folder / 'model.json').read_text())


def _copy(folder: Path, tmp_path: Path) -> Path:
  """A copy to evaluate: evaluation writes its lock and eval.json."""
  copy = tmp_path / folder.name
  shutil.copytree(folder, copy)
  return copy


def test_protonet_omniglot_models_are_published():
  assert {'protonet_omniglot_5w1s', 'protonet_omniglot_20w1s'} <= {
    m.name for m in MODELS
  }


@pytest.mark.parametrize('folder', MODELS, ids=lambda p: p.name)
def test_files_are_those_published(folder):
  recorded = _card(folder)['sha256']
  found = {
    str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(folder.rglob('*'))
    if p.is_file() and p.name not in NOT_HASHED
  }
  assert found == recorded
  assert 'config.json' in found
  assert any(name.startswith('checkpoints/') for name in found)


@pytest.mark.parametrize('folder', MODELS, ids=lambda p: p.name)
def test_scores_recorded_accuracy_on_check_tasks(
  folder, tmp_path, omniglot_data_dir
):
  card = _card(folder)
  check = card['check']
  config = ml_collections.ConfigDict(
    json.loads((folder / 'config.json').read_text())
  )
  assert config.preset == card['config']
  config.num_eval_tasks = check['num_eval_tasks']
  results = train.evaluate(
    config, _copy(folder, tmp_path), data_dir=omniglot_data_dir
  )
  for key in ('test_accuracy', 'test_accuracy_alone'):
    assert results[key] == pytest.approx(check[key], abs=1e-6), key


@pytest.mark.parametrize('folder', MODELS, ids=lambda p: p.name)
def test_readme_example_classifies_new_characters(
  folder, tmp_path, omniglot_data_dir, monkeypatch
):
  """The README's example on this model: `load_run`, five labelled images
  of new characters, then each of their other images classified alone."""
  # A model trained to score its queries together (transductive batch norm,
  # the MAML paper's protocol) normalises an image classified alone by
  # itself: 70.5% on MAML's test tasks (its card), not 98%.
  transductive = _card(folder)['test']['test_accuracy_alone'] < 0.9
  text = (REPO / 'README.md').read_text()
  code = re.search(
    r'Classify new images.*?```python\n(.*?)```', text, re.S
  ).group(1)
  assert f"'{README_MODEL}'" in code
  code = code.replace(f"'{README_MODEL}'", repr(str(_copy(folder, tmp_path))))
  monkeypatch.setenv('JAXMETA_DATA_DIR', omniglot_data_dir)
  namespace = {}
  exec(compile(code, 'README.md', 'exec'), namespace)
  assert namespace['config'].preset == _card(folder)['config']
  params = namespace['params']
  assert jax.tree.all(jax.tree.map(lambda a: np.isfinite(a).all(), params))
  new, classes = namespace['new'], np.asarray(namespace['classes'])
  labels = np.repeat(np.arange(5), new.shape[1] - 1)
  assert classes.shape == labels.shape
  # 95 images of characters of 5 alphabets never seen in training.
  assert np.mean(classes == labels) >= (0.5 if transductive else 0.9)


@pytest.mark.slow
@pytest.mark.parametrize('folder', MODELS, ids=lambda p: p.name)
def test_card_eval_command_reproduces_published_test_accuracy(
  folder, tmp_path, omniglot_data_dir
):
  """The card's `eval_command`, run as written on a copy of the folder (and
  compiled as a user's process compiles it, not with the tests' flags)."""
  card = _card(folder)
  command = shlex.split(card['eval_command'])
  assert command[:3] == ['python', '-m', 'experiments.main']
  published = f'--workdir={folder.relative_to(REPO)}'
  assert published in command and '--mode=eval' in command
  copy = _copy(folder, tmp_path)
  command[command.index(published)] = f'--workdir={copy}'
  done = subprocess.run(
    [sys.executable, *command[1:], f'--data_dir={omniglot_data_dir}'],
    cwd=REPO,
    env=dict(
      os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu', XLA_FLAGS=''
    ),
    capture_output=True,
    text=True,
    timeout=1200,
    check=False,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((copy / 'eval.json').read_text())
  assert results['num_test_tasks'] == card['test']['num_test_tasks'] == 600
  for key in ('test_accuracy', 'test_accuracy_alone'):
    assert results[key] == pytest.approx(card['test'][key], abs=1e-6), key
