"""The Omniglot experiment module end to end, at tiny sizes, on real data."""

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

import jaxmeta
from experiments import common
from experiments import omniglot as experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIR = os.path.join(ROOT, 'data', 'omniglot')


def tiny_config(**overrides):
  config = experiment.build_config(overrides=dict(
      num_filters=8, meta_batch_size=2, queries=2, num_iterations=4,
      eval_every=2, checkpoint_every=2, log_every=1, num_val_tasks=4,
      num_eval_tasks=6, eval_batch_size=4, eval_inner_steps=2))
  config.update(overrides)
  return config


def run(config, workdir, data_dir):
  return experiment.train_and_evaluate(config, str(workdir), data_dir,
                                       SOURCE_DIR, progress=False)


def restore_latest(config, workdir):
  learner = experiment.make_learner(config)
  like = jaxmeta.init_train_state(learner, experiment.make_optimizer(config),
                                  jax.random.PRNGKey(0))
  checkpoints = common.Checkpoints(str(workdir), config.keep_checkpoints)
  state, meta = common.Checkpoints.restore(checkpoints.latest, like)
  checkpoints.close()
  return state, meta


def test_end_to_end_writes_results_metrics_and_checkpoints(tmp_path,
                                                           omniglot_data_dir):
  config = tiny_config()
  results = run(config, tmp_path, omniglot_data_dir)
  on_disk = json.loads((tmp_path / 'results.json').read_text())
  for key in ('algorithm', 'ways', 'shots', 'iterations', 'test_accuracy',
              'test_ci95', 'num_test_tasks', 'steps_per_second', 'preset',
              'best_step', 'best_val_accuracy'):
    assert key in on_disk, key
  assert on_disk['iterations'] == 4 and on_disk['num_test_tasks'] == 6
  assert 0.0 <= on_disk['test_accuracy'] <= 1.0
  assert on_disk['best_step'] in (2, 4)
  assert results['test_accuracy'] == on_disk['test_accuracy']
  assert len(on_disk['test_accuracy_by_step']) == 3
  records = [json.loads(l) for l in
             (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  train_steps = [r['step'] for r in records if 'train/loss' in r]
  assert train_steps == [1, 2, 3, 4]
  assert any('val/accuracy' in r for r in records)
  assert any('test/accuracy' in r for r in records)
  assert os.listdir(tmp_path / 'tensorboard')
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']
  assert os.listdir(tmp_path / 'best') == [str(on_disk['best_step'])]
  state, meta = restore_latest(config, tmp_path)
  assert int(state.step) == 4
  assert meta['config']['num_filters'] == 8  # The full config travels along.
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['meta_batch_size'] == 2


def test_resumed_run_ends_with_the_same_parameters(tmp_path,
                                                   omniglot_data_dir):
  config = tiny_config(eval_every=100, checkpoint_every=3, num_iterations=6)
  run(config, tmp_path / 'straight', omniglot_data_dir)
  half = tiny_config(eval_every=100, checkpoint_every=3, num_iterations=3)
  run(half, tmp_path / 'resumed', omniglot_data_dir)
  results = run(config, tmp_path / 'resumed', omniglot_data_dir)
  assert results['resumed_from_step'] == 3
  straight, _ = restore_latest(config, tmp_path / 'straight')
  resumed, _ = restore_latest(config, tmp_path / 'resumed')
  assert int(straight.step) == int(resumed.step) == 6
  chex.assert_trees_all_close(straight.params, resumed.params, atol=1e-6,
                              rtol=0)
  chex.assert_trees_all_close(straight.opt_state, resumed.opt_state,
                              atol=1e-6, rtol=0)


def test_non_finite_loss_stops_with_the_step_and_keeps_checkpoint(
    tmp_path, omniglot_data_dir):
  good = tiny_config(num_iterations=2, checkpoint_every=2, eval_every=2)
  run(good, tmp_path, omniglot_data_dir)
  # The same run continued with an absurd inner learning rate is refused as
  # a different configuration; a new workdir with it diverges.
  bad = tiny_config(inner_lr=1e30, num_iterations=6, checkpoint_every=1)
  with pytest.raises(experiment.ConfigError, match='inner_lr'):
    run(bad, tmp_path, omniglot_data_dir)
  with pytest.raises(FloatingPointError,
                     match=r'non-finite at step 1 .*--inner_lr'):
    run(bad, tmp_path / 'diverged', omniglot_data_dir)
  # The earlier run's last good checkpoint is untouched.
  state, _ = restore_latest(good, tmp_path)
  assert int(state.step) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


@pytest.mark.parametrize('overrides,message', [
    (dict(shots=-1), '--shots must be >= 1'),
    (dict(ways=0), '--ways must be >= 1'),
    (dict(shots=10, queries=15), 'exceeds the 20 drawings'),
    (dict(algorithm='protonet'), 'Unknown algorithm'),
    (dict(split='imagenet'), 'Unknown split'),
    (dict(inner_lr=-0.1), 'must be positive'),
])
def test_bad_configs_are_rejected_before_any_work(tmp_path, overrides,
                                                  message):
  with pytest.raises(experiment.ConfigError, match=message):
    run(tiny_config(**overrides), tmp_path, None)
  assert not os.path.exists(tmp_path / 'config.json')


def test_more_ways_than_classes_is_rejected(tmp_path, omniglot_data_dir):
  # The 'maml' split has 100 validation characters (no rotations there).
  with pytest.raises(experiment.ConfigError,
                     match=r'val split .*ways=101 is more than the 100'):
    run(tiny_config(split='maml', ways=101), tmp_path, omniglot_data_dir)


def test_unknown_preset_is_rejected():
  with pytest.raises(experiment.ConfigError, match='Unknown preset'):
    experiment.build_config('maml_5w2s')


def test_presets_follow_the_papers():
  maml = experiment.build_config('maml_5w1s')
  assert (maml.ways, maml.shots, maml.inner_lr, maml.inner_steps,
          maml.meta_batch_size, maml.meta_lr, maml.num_iterations,
          maml.num_filters) == (5, 1, 0.4, 1, 32, 1e-3, 60_000, 64)
  maml20 = experiment.build_config('maml_20w5s', {'num_iterations': 10})
  assert (maml20.ways, maml20.shots, maml20.inner_lr, maml20.inner_steps,
          maml20.meta_batch_size, maml20.num_iterations) == (20, 5, 0.1, 5,
                                                             16, 10)
  assert experiment.build_config('fomaml_5w5s').algorithm == 'fomaml'
  reptile = experiment.build_config('reptile_20w1s')
  assert (reptile.inner_optimizer, reptile.train_shots, reptile.inner_steps,
          reptile.meta_lr, reptile.meta_lr_final) == ('adam', 10, 10, 1.0,
                                                      0.0)
  for name in experiment.PRESETS:
    experiment.validate(experiment.build_config(name))


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.omniglot', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_command_line_flags_and_eval_mode(tmp_path, omniglot_data_dir):
  common_flags = [f'--workdir={tmp_path}', f'--data_dir={omniglot_data_dir}',
                  '--num_filters=8', '--meta_batch_size=2', '--queries=2',
                  '--num_val_tasks=4', '--num_eval_tasks=4',
                  '--eval_batch_size=4', '--eval_inner_steps=1',
                  '--noprogress']
  proc = _cli(*common_flags, '--num_iterations=2', '--eval_every=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'test accuracy' in proc.stdout and '95% CI' in proc.stdout
  proc = _cli(f'--workdir={tmp_path}', f'--data_dir={omniglot_data_dir}',
              '--mode=eval', '--num_eval_tasks=8', '--noprogress')
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluated = json.loads((tmp_path / 'eval.json').read_text())
  assert evaluated['num_test_tasks'] == 8 and evaluated['best_step'] == 2
  # A different configuration in the same workdir is refused, naming it.
  proc = _cli(*common_flags, '--num_iterations=2', '--ways=10')
  assert proc.returncode != 0
  assert 'different configuration' in proc.stderr and 'ways' in proc.stderr
  for bad, message in (('--algorithm=protonet', 'algorithm'),
                       ('--preset=maml_5w2s', 'preset'),
                       ('--shots=-2', '--shots must be >= 1')):
    proc = _cli(f'--workdir={tmp_path}/other', bad)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert 'Traceback' not in proc.stderr


def test_short_real_run_learns_far_above_chance(tmp_path, omniglot_data_dir):
  """5-way 1-shot on real Omniglot: chance is 20%."""
  config = experiment.build_config(overrides=dict(
      algorithm='maml', num_filters=16, meta_batch_size=8, queries=5,
      meta_lr=3e-3, num_iterations=150, eval_every=150, checkpoint_every=150, log_every=50,
      num_val_tasks=40, num_eval_tasks=100, eval_inner_steps=3))
  results = run(config, tmp_path, omniglot_data_dir)
  # Measured: 67.4% +- 2.7% (100 test tasks) in under a minute on 2 cores.
  assert results['test_accuracy'] - results['test_ci95'] > 0.5, results
