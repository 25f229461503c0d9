"""The README's code runs as written."""

import re
import shlex
import tomllib

import pytest

import jaxmeta
from jaxmeta.data import registry
from experiments import cli
from experiments import omniglot
from experiments import sinusoid
from experiments import config_checks
from support import REPO

README = REPO / 'README.md'


def _code_of_section(title):
  text = README.read_text()
  section = text.split(f'## {title}\n', 1)[1].split('\n## ', 1)[0]
  return re.findall(r'```python\n(.*?)```', section, re.S)[0]


@pytest.mark.slow
def test_the_library_example_learns(omniglot_data_dir, monkeypatch, capsys):
  """The example as written, for 40 meta-steps and 50 test tasks."""
  code = _code_of_section('The library in one example')
  assert 'range(2400)' in code and 'test, 600)' in code
  code = code.replace('range(2400)', 'range(40)').replace(
    'test, 600)', 'test, 50)'
  )
  monkeypatch.setenv('JAXMETA_DATA_DIR', omniglot_data_dir)
  namespace = {}
  exec(compile(code, str(README), 'exec'), namespace)
  assert namespace['state'].step == 40
  assert 0.3 < namespace['mean'] <= 1.0  # Chance is 0.2.
  assert re.search(r'^\d+\.\d% \+- \d+\.\d% on ', capsys.readouterr().out, re.M)


def test_bring_your_own_model_and_dataset(tmp_path):
  code = _code_of_section('Bring your own model and dataset')
  assert "'/tmp/my_run'" in code
  code = code.replace("'/tmp/my_run'", repr(str(tmp_path / 'run')))
  namespace = {}
  try:
    exec(compile(code, str(README), 'exec'), namespace)
  finally:
    registry.DATASETS.pop('my_shapes', None)
    jaxmeta.models.BACKBONES.pop('linear', None)
  results = namespace['results']
  assert results['dataset'] == 'my_shapes' and results['backbone'] == 'linear'
  assert results['iterations'] == 20 and results['num_test_tasks'] == 20
  assert (tmp_path / 'run' / 'results.json').is_file()


def test_ci_runs_the_readme_test_command_and_then_the_slow_tier():
  text = README.read_text()
  command = text.split('Run the tests:\n\n```bash\n', 1)[1].split('\n```', 1)[0]
  assert command.endswith('python -m pytest -q -n auto -m "not slow" tests'), (
    command
  )
  assert '`python -m pytest -q -n auto -m slow tests`' in text
  ci = (README.parent / '.ci' / 'run').read_text().splitlines()
  assert ci[-2:] == [
    command,
    'python -m pytest -q -n auto -m slow tests',
  ], ci[-2:]


def _commands():
  """Every command of the README's bash blocks, split into words."""
  text = README.read_text()
  for block in re.findall(r'```bash\n(.*?)```', text, re.S):
    for line in block.splitlines():
      for command in line.split(' && '):
        yield shlex.split(command.split('  #')[0])


_PROGRAMS = {
  'experiments.main': None,
  'experiments.omniglot': omniglot.DEFAULT_CONFIG,
  'experiments.sinusoid': sinusoid.DEFAULT_CONFIG,
}


def test_every_experiment_command_names_a_config_that_loads():
  checked = 0
  for words in _commands():
    if not {'python', 'python3'} & set(words) or '-m' not in words:
      continue
    program = words[words.index('-m') + 1]
    if program not in _PROGRAMS:
      assert program in ('pytest', 'pip', 'venv'), words
      continue
    args = words[words.index('-m') + 2 :]
    if '--list_configs' in args:
      continue
    specs = [a.split('=', 1)[1] for a in args if a.startswith('--config=')]
    spec = specs[-1] if specs else _PROGRAMS[program]
    _, overrides = cli.split_overrides(['prog', *args])
    config_checks.validate(cli.load(spec, overrides))
    checked += 1
  assert checked >= 5


def test_every_command_and_file_it_names_exists():
  text = README.read_text()
  scripts = tomllib.loads((README.parent / 'pyproject.toml').read_text())[
    'project'
  ]['scripts']
  for name in re.findall(r'`(jaxmeta-[a-z]+)', text):
    assert name in scripts, name
  for target in re.findall(r'\]\(([^)#]+)\)', text):
    if not target.startswith('http'):
      assert (README.parent / target).exists(), target


def test_no_link_to_a_repository_that_does_not_exist_and_short():
  text = README.read_text()
  assert 'github.com/jaxmeta' not in text
  assert len(text.encode()) <= 13_000, len(text.encode())
