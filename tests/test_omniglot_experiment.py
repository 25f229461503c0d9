"""The command-line programs in-process, and the main job on real Omniglot."""

import json
import os
import re
import sys

from absl import flags
import pytest

from experiments import common
from experiments import main
from experiments import omniglot
from experiments import sinusoid
from experiments import train
from experiments.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIR = os.path.join(ROOT, 'data', 'omniglot')
FLAGS = flags.FLAGS

if 'workdir' not in FLAGS:
  main.define_flags(omniglot.DEFAULT_CONFIG)

TINY = [
  '--config.model.num_filters=8',
  '--config.meta_batch_size=2',
  '--config.queries=2',
  '--config.num_val_tasks=4',
  '--config.num_eval_tasks=4',
  '--config.eval_batch_size=4',
  '--config.eval_inner_steps=1',
  '--noprogress',
]


def parse(monkeypatch, args):
  """Parses a command line into the global flags, as absl does at start-up.

  config_flags reads the `--config.<field>` overrides from `sys.argv` when
  it parses `--config`, which a process does once at start-up; here every
  command line names its config file (the default one if it has none).
  """
  if not any(a.startswith('--config=') for a in args):
    args = [f'--config={omniglot.DEFAULT_CONFIG}', *args]
  argv = ['prog', *args]
  monkeypatch.setattr(sys, 'argv', argv)
  return FLAGS(argv)


def unparse():
  """Forgets a parse, the override flags config_flags defined included."""
  FLAGS.unparse_flags()
  for name in [n for n in FLAGS if n.startswith('config.')]:
    delattr(FLAGS, name)


@pytest.fixture
def cli(capsys, monkeypatch):
  """Runs the program on a command line in-process: `(exit code, out, err)`.

  Flags are parsed afresh for every call and reset afterwards, as absl does
  for a new process.
  """

  def call(*args):
    capsys.readouterr()
    try:
      argv = parse(monkeypatch, args)
      main.main(argv)
      code = 0
    except SystemExit as e:
      code = e.code
    finally:
      unparse()
    out, err = capsys.readouterr()
    return code, out, err

  return call


def test_command_line_train_resume_eval_and_refusals(
  tmp_path, cli, omniglot_data_dir
):
  common = [
    f'--workdir={tmp_path}',
    f'--data_dir={omniglot_data_dir}',
    f'--source_dir={SOURCE_DIR}',
    *TINY,
  ]
  code, out, err = cli(
    *common, '--config.num_iterations=2', '--config.eval_every=2'
  )
  assert code == 0, err
  assert 'test accuracy' in out and '95% CI' in out
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['split'] == 'vinyals' and results['preset'] is None
  code, out, err = cli(*common, '--mode=eval', '--config.num_eval_tasks=8')
  assert code == 0, err
  evaluated = json.loads((tmp_path / 'eval.json').read_text())
  assert evaluated['num_test_tasks'] == 8 and evaluated['best_step'] == 2
  # A different configuration in the same workdir is refused in one line,
  # in either mode, naming the field.
  for mode in ('train', 'eval'):
    code, _, err = cli(*common, f'--mode={mode}', '--config.ways=10')
    assert code == 1 and err.startswith('Error: ') and 'ways' in err, err
    assert 'Traceback' not in err and len(err.splitlines()) == 1
  code, _, err = cli(
    f'--config={ROOT}/experiments/configs/maml_omniglot.py:20w1s',
    *common,
    '--mode=eval',
  )
  assert code == 1 and 'different configuration' in err


@pytest.mark.parametrize(
  'args,message',
  [
    (['--config.algorithm=protonets'], 'Unknown algorithm'),
    (['--config.shots=-2'], 'config.shots must be >= 1'),
    (['--config.meta_lr=nan'], 'meta_lr must be a positive finite'),
    (['--config.seed=99999999999999999999999'], 'seed=.* is too large'),
    (['--mode=eval'], 'holds no run'),
  ],
)
def test_bad_input_is_one_line(tmp_path, cli, args, message):
  code, _, err = cli(f'--workdir={tmp_path}/run', *args)
  assert code == 1, err
  assert err.startswith('Error: ') and len(err.splitlines()) == 1, err
  assert re.search(message, err), err
  assert not os.path.exists(tmp_path / 'run' / 'config.json')


def test_workdir_that_is_a_file_is_one_line(tmp_path, cli):
  (tmp_path / 'f').write_text('')
  code, _, err = cli(f'--workdir={tmp_path}/f')
  assert code == 1 and 'is a file' in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
  'args,message',
  [
    (
      [f'--config={ROOT}/experiments/configs/maml_omniglot.py:5w2s'],
      "Unknown preset '5w2s'",
    ),
    (['--config.no_such_field=1'], 'no_such_field'),
    (['--config.seed=abc'], 'config.seed=abc'),
    (['--no_such_flag'], 'no_such_flag'),
  ],
)
def test_flag_errors_are_one_line(tmp_path, monkeypatch, capsys, args, message):
  if not any(a.startswith('--config=') for a in args):
    args = [f'--config={omniglot.DEFAULT_CONFIG}', *args]
  argv = ['prog', f'--workdir={tmp_path}', *args]
  monkeypatch.setattr(sys, 'argv', argv)
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_:
    common.parse_flags(argv)
  unparse()
  err = capsys.readouterr().err
  assert exit_.value.code == 1
  assert err.startswith('Error: ') and len(err.splitlines()) == 1, err
  assert message in err, err


def test_a_missing_config_file_is_one_line(tmp_path, cli):
  code, _, err = cli(f'--config={tmp_path}/nope.py', f'--workdir={tmp_path}')
  assert code == 1 and 'No such file' in err and len(err.splitlines()) == 1


def test_stray_arguments_are_one_line(tmp_path, cli):
  code, _, err = cli(f'--workdir={tmp_path}', 'extra')
  assert code == 1 and "Unexpected arguments: ['extra']" in err


def test_wrappers_default_to_their_config_files():
  assert omniglot.DEFAULT_CONFIG.endswith('configs/default.py')
  assert sinusoid.DEFAULT_CONFIG.endswith('configs/sinusoid.py')
  assert os.path.isfile(omniglot.DEFAULT_CONFIG)
  assert os.path.isfile(sinusoid.DEFAULT_CONFIG)


def short_real_run(workdir, data_dir, **overrides):
  """The main job's results after 150 iterations at 16 filters, meta-batch 8
  and a constant meta learning rate, tested on 100 tasks of real Omniglot."""
  config = default.get_config()
  config.model.num_filters = 16
  config.update(
    meta_batch_size=8,
    meta_lr=3e-3,
    meta_lr_final=-1.0,
    num_iterations=150,
    eval_every=150,
    checkpoint_every=150,
    log_every=50,
    num_val_tasks=40,
    num_eval_tasks=100,
  )
  config.update(overrides)
  return train.train_and_evaluate(
    config,
    str(workdir),
    data_dir=data_dir,
    source_dir=SOURCE_DIR,
    progress=False,
  )


@pytest.mark.slow
def test_short_real_run_learns_far_above_chance(tmp_path, omniglot_data_dir):
  """5-way 1-shot on real Omniglot: chance is 20%."""
  results = short_real_run(
    tmp_path, omniglot_data_dir, queries=5, eval_inner_steps=3
  )
  # Measured: 67.4% +- 2.7% (100 test tasks) in under a minute on 2 cores.
  assert results['test_accuracy'] - results['test_ci95'] > 0.5, results
