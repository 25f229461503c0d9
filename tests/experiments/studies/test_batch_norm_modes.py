"""The batch-norm mode comparison, at smoke size on the tiny dataset."""

from absl import flags
import pytest

from experiments import common
from experiments.studies import batch_norm_modes
from support.tiny_runs import tiny_config


def test_every_mode_is_trained_scored_both_ways_and_tabulated(
  tmp_path, tiny_dataset
):
  base = tiny_config(tiny_dataset)
  modes = ['support']
  results = batch_norm_modes.run_modes(modes, {3: 2}, str(tmp_path), base=base)
  assert list(results) == ['3-way'] and list(results['3-way']) == modes
  for mode, r in results['3-way'].items():
    assert r['iterations'] == 2, mode
    assert 0 <= r['test_accuracy_alone'] <= 1 and r['num_test_tasks'] == 6
  lines = batch_norm_modes.table(results).splitlines()
  assert len(lines) == 3
  assert lines[2].startswith('| 3-way 1-shot | support | ')
  # Fewer ways first and modes in their documented order, whatever the
  # order of the results (a JSON file read back sorts its keys as strings).
  row = dict(results['3-way']['support'], iterations=7)
  shuffled = {
    '20-way': {'tasknorm': row, 'support': row},
    '5-way': {'running': row, 'transductive': row},
  }
  assert [
    line.split(' | ')[:2]
    for line in batch_norm_modes.table(shuffled).split('\n')[2:-1]
  ] == [
    ['| 5-way 1-shot', 'transductive'],
    ['| 5-way 1-shot', 'running'],
    ['| 20-way 1-shot', 'support'],
    ['| 20-way 1-shot', 'tasknorm'],
  ]
  # Finished runs are read back, not trained again.
  assert batch_norm_modes.run_modes(['support'], {3: 2}, str(tmp_path)) == {
    '3-way': {'support': results['3-way']['support']}
  }


@pytest.mark.parametrize(
  'argv,message',
  [
    (['--modes=support,batch'], "Unknown modes ['batch']"),
    (['--iterations_5way=0'], '--iterations_5way must be >= 1'),
    ([], '--workdir is required'),
  ],
)
def test_the_command_line_refuses_bad_flags_in_one_line(
  tmp_path, capsys, argv, message
):
  values = flags.FlagValues()
  batch_norm_modes.define_flags(values)
  if argv:
    argv = [f'--workdir={tmp_path}'] + argv
  values(['batch_norm_modes'] + argv)
  with pytest.raises(SystemExit) as exit_info:
    batch_norm_modes.main(['batch_norm_modes'], values)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith('Error: ') and message in err and '\n' not in err


def test_a_busy_workdir_is_one_line(tmp_path, capsys):
  (tmp_path / '5way_support').mkdir()
  values = flags.FlagValues()
  batch_norm_modes.define_flags(values)
  values(
    ['batch_norm_modes', f'--workdir={tmp_path}', '--modes=support']
    + ['--iterations_5way=1', '--iterations_20way=0']
  )
  with common.locked_workdir(tmp_path / '5way_support'):
    with pytest.raises(SystemExit) as exit_info:
      batch_norm_modes.main(['batch_norm_modes'], values)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith('Error: ') and 'in use by another run' in err
  assert '\n' not in err and not (tmp_path / 'results.json').exists()
