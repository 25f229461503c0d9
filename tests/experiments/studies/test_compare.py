"""The method comparison: every method trained for the same time budget and
tested on the same tasks, at smoke size on the tiny dataset."""

import os

from absl import flags
import pytest

from experiments import common
from experiments import config_checks
from experiments import configs
from experiments.studies import compare
from support.tiny_runs import tiny_config


def test_every_method_has_a_recipe_that_validates():

  for method in compare.METHODS:
    config = compare.method_config(method)
    assert config.algorithm == method
    # Equal terms: the main job's data, backbone and test tasks.
    assert (config.dataset, config.data.scheme, config.backbone) == (
      'omniglot',
      'vinyals',
      'conv4',
    )
    assert (config.ways, config.shots, config.num_eval_tasks) == (5, 1, 600)
    config_checks.validate(config)


def test_compare_trains_each_method_for_the_budget_and_plots(
  tmp_path, tiny_dataset
):
  base = tiny_config(tiny_dataset, num_val_tasks=4, num_eval_tasks=6)
  # The two cheapest to compile, one with an override; the Omniglot
  # notebook's smoke run (slow tier) compares MAML, ANIL and others too.
  methods = ['protonet', 'baseline']
  overrides = {'protonet': {'train_ways': 5}}  # The tiny split has 12.
  results = compare.compare(
    methods,
    budget_s=0.05,
    workdir=str(tmp_path),
    base=base,
    calibration_s=0.2,
    overrides=overrides,
  )
  assert list(results['methods']) == methods
  for method, r in results['methods'].items():
    assert 0.0 <= r['test_accuracy'] <= 1.0, method
    assert r['num_test_tasks'] == 6
    # The budget becomes iterations at the calibrated speed.
    assert r['iterations'] == max(
      1, int(0.05 * r['calibrated_steps_per_second'])
    )
    assert r['val_curve'] and r['val_curve'][-1][0] == pytest.approx(
      r['iterations'] / r['calibrated_steps_per_second']
    )
  # Finished runs are read back, not trained again.
  again = compare.compare(
    ['protonet'],
    budget_s=0.05,
    workdir=str(tmp_path),
    base=base,
    overrides=overrides,
  )
  assert again['methods']['protonet'] == results['methods']['protonet']
  fig = compare.plot(results, str(tmp_path / 'comparison.png'))
  assert (tmp_path / 'comparison.png').stat().st_size > 0
  del fig


def test_the_recipes_are_a_config_file_that_main_loads():
  # `python -m experiments.main --config=<this file>:<method>` trains the
  # comparison's config of that method.
  path = os.path.join(os.path.dirname(compare.__file__), 'compare_recipes.py')
  for method in compare.METHODS:
    loaded = configs.load(f'{path}:{method}')
    assert loaded.to_dict() == compare.method_config(method).to_dict()
  with pytest.raises(configs.ConfigFileError, match='unknown preset'):
    configs.load(f'{path}:mamll')
  # Reptile: Nichol et al.'s training recipe, on the main job's backbone.
  reptile = compare.method_config('reptile')
  assert (
    reptile.inner_optimizer,
    reptile.meta_optimizer,
    reptile.train_shots,
    reptile.meta_batch_size,
    reptile.inner_steps,
    reptile.eval_inner_steps,
    reptile.inner_lr,
    reptile.meta_lr,
    reptile.model.num_filters,
  ) == ('adam', 'sgd', 10, 5, 5, 50, 1e-3, 1.0, 32)


def test_the_schedule_follows_the_budget():
  config = compare.method_config('maml_plus_plus')
  compare._schedule(config, 300)
  assert (config.num_iterations, config.eval_every) == (300, 60)
  assert config.method.to_dict() == {
    'msl_iterations': 20,
    'first_order_iterations': 100,
  }


@pytest.mark.parametrize(
  'argv,message',
  [
    (['--methods=maml,mamll'], "Unknown methods ['mamll']"),
    (['--budget_s=0'], '--budget_s must be > 0'),
    ([], '--workdir is required'),
  ],
)
def test_the_command_line_refuses_bad_flags_in_one_line(
  tmp_path, capsys, argv, message
):
  values = flags.FlagValues()
  compare.define_flags(values)
  if argv:
    argv = [f'--workdir={tmp_path}'] + argv
  values(['compare'] + argv)
  with pytest.raises(SystemExit) as exit_info:
    compare.main(['compare'], values)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith('Error: ') and message in err and '\n' not in err
  assert not (tmp_path / 'results.json').exists()


def test_a_busy_workdir_is_one_line(tmp_path, capsys):
  # The speed is on record, so the run goes straight to its workdir.
  (tmp_path / 'calibration.json').write_text('{"maml": 10.0}')
  (tmp_path / 'maml').mkdir()
  values = flags.FlagValues()
  compare.define_flags(values)
  values(['compare', f'--workdir={tmp_path}', '--methods=maml', '--budget_s=1'])
  with common.locked_workdir(tmp_path / 'maml'):
    with pytest.raises(SystemExit) as exit_info:
      compare.main(['compare'], values)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith('Error: ') and 'in use by another run' in err
  assert '\n' not in err and not (tmp_path / 'results.json').exists()
