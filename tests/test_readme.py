"""The README's code runs as written."""

from pathlib import Path
import re

import jaxmeta
from jaxmeta.data import registry

README = Path(__file__).resolve().parents[1] / 'README.md'


def _code_of_section(title):
  text = README.read_text()
  section = text.split(f'## {title}\n', 1)[1].split('\n## ', 1)[0]
  return re.findall(r'```python\n(.*?)```', section, re.S)[0]


def test_bring_your_own_model_and_dataset(tmp_path):
  code = _code_of_section('Bring your own model and dataset')
  assert "'/tmp/my_run'" in code
  code = code.replace("'/tmp/my_run'", repr(str(tmp_path / 'run')))
  namespace = {}
  try:
    exec(compile(code, str(README), 'exec'), namespace)  # pylint: disable=exec-used
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
