"""End-to-end smoke test of `python -m experiments.sinusoid` at tiny size."""

import json
import os
import subprocess
import sys

import pytest

from experiments import sinusoid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_and_evaluate_writes_results(tmp_path):
  config = sinusoid.get_config()
  config.num_iterations = 1000
  config.num_eval_tasks = 50
  config.log_every = 500
  results = sinusoid.train_and_evaluate(config, str(tmp_path), progress=False)
  on_disk = json.loads((tmp_path / 'results.json').read_text())
  for key in ('algorithm', 'iterations', 'pre_adaptation_mse',
              'post_adaptation_mse'):
    assert on_disk[key] == results[key]
  assert on_disk["iterations"] == 1000
  assert len(on_disk['post_adaptation_mse_by_step']) == 11
  # Even 1000 meta-iterations make 10 steps of adaptation clearly useful.
  assert on_disk['post_adaptation_mse'] < 0.7 * on_disk['pre_adaptation_mse']
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(l)['step'] for l in lines[:2]] == [500, 1000]
  assert os.listdir(tmp_path / 'tensorboard')


def _run_module(*args):
  return subprocess.run(
      [sys.executable, '-m', 'experiments.sinusoid', *args], cwd=ROOT,
      capture_output=True, text=True, timeout=300)


def test_command_line_runs_and_rejects_bad_flags(tmp_path):
  proc = _run_module(f'--workdir={tmp_path}', '--num_iterations=20',
                     '--num_eval_tasks=5', '--algorithm=fomaml',
                     '--noprogress')
  assert proc.returncode == 0, proc.stderr
  assert json.loads((tmp_path / 'results.json').read_text())[
      'algorithm'] == 'fomaml'
  proc = _run_module(f'--workdir={tmp_path}', '--shots=0')
  assert proc.returncode != 0
  assert '--shots must be >= 1' in proc.stderr
  proc = _run_module(f'--workdir={tmp_path}', '--algorithm=mamal')
  assert proc.returncode != 0 and 'algorithm' in proc.stderr


@pytest.mark.parametrize('name', ['maml', 'reptile', 'pretrain'])
def test_every_algorithm_runs(tmp_path, name):
  config = sinusoid.get_config()
  config.update(algorithm=name, num_iterations=5, num_eval_tasks=4,
                log_every=5)
  results = sinusoid.train_and_evaluate(config, str(tmp_path), progress=False)
  assert results['algorithm'] == name and results['iterations'] == 5
