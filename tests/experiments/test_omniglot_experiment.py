"""The command-line programs in-process, and the main job on real Omniglot."""

import json
import os
import re
import sys

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import configs
from experiments import main
from experiments import omniglot
from experiments import sinusoid
import jaxmeta
from experiments import tasks
from experiments import build
from experiments import config_checks
from experiments.configs import default
from experiments.configs import maml_omniglot
from experiments.configs import sinusoid as sinusoid_config
from support import REPO
from support.tiny_runs import short_real_run

ROOT = str(REPO)
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


def parse(args):
  """Parses a command line into the global flags, as absl does at start-up:
  the argv `main` gets (the overrides after the positional arguments)."""
  return main.parse_flags(['prog', *args])


@pytest.fixture
def cli(capsys):
  """Runs the program on a command line in-process: `(exit code, out, err)`.

  Flags are parsed afresh for every call and reset afterwards, as absl does
  for a new process.
  """

  def call(*args):
    capsys.readouterr()
    try:
      main.main(parse(args))
      code = 0
    except SystemExit as e:
      code = e.code
    finally:
      FLAGS.unparse_flags()
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
  code, _, err = cli('--config=maml_omniglot:20w1s', *common, '--mode=eval')
  assert code == 1 and 'different configuration' in err


@pytest.mark.slow  # A training run in its own process (~40 s).
def test_first_order_maml_from_the_command_line(
  tmp_path, cli, omniglot_data_dir
):
  """`--config.method.first_order=true` trains first-order MAML: the learner
  the run's config builds has FOMAML's meta-gradient, not MAML's."""
  code, out, err = cli(
    '--config=maml_omniglot:5w1s',
    '--config.method.first_order=true',
    f'--workdir={tmp_path}',
    f'--data_dir={omniglot_data_dir}',
    f'--source_dir={SOURCE_DIR}',
    *TINY,
    '--config.num_iterations=2',
    '--config.eval_every=2',
    '--config.checkpoint_every=2',
  )
  assert code == 0, err
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['method'] == {'first_order': True}
  config = ml_collections.ConfigDict(saved)
  family = tasks.build(config)
  shape = (28, 28, 1)
  learner = build.build_learner(config, family, shape)
  config.method.first_order = False
  second_order = build.build_learner(config, family, shape)
  first_order = jaxmeta.make_learner(
    'fomaml',
    jaxmeta.models.BACKBONES['conv4'](5, shape, num_filters=8),
    family.make_loss,
    config.inner_lr,
    config.inner_steps,
  )
  keys = jax.random.split(jax.random.key(0), 3)
  params = learner.init(keys[0])
  x = jax.random.uniform(keys[1], (10, *shape))
  y = jnp.arange(10) % 5
  task = jaxmeta.Task(x[:5], y[:5], x[5:], y[5:])
  grad = learner.task_update(params, task)[0]
  expected = first_order.task_update(params, task)[0]
  other = second_order.task_update(params, task)[0]
  close = lambda a, b: all(
    np.allclose(u, v, rtol=1e-5, atol=1e-6)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )
  assert close(grad, expected)
  assert not close(grad, other)


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
      "unknown preset '5w2s' of .*maml_omniglot.py \\(did you mean '5w5s'\\?\\)"
      '. Fix: one of 5w1s, 5w5s, 20w1s, 20w5s',
    ),
    (
      ['--config=maml_omniglt:5w1s'],
      "unknown config 'maml_omniglt' \\(did you mean 'maml_omniglot'\\?\\)",
    ),
    (
      ['--config.bogus_field=1'],
      "unknown config field 'bogus_field'. Fix: --print_config lists",
    ),
    (
      ['--config.model.num_filter=3'],
      "unknown config field 'model.num_filter'. Fix: one of model.conv_impl, "
      "model.num_filters \\(did you mean 'model.num_filters'\\?\\)",
    ),
    (
      ['--config.method.first_ordr=true'],
      "unknown config field 'method.first_ordr'. Fix: maml takes "
      "method.first_order \\(did you mean 'method.first_order'\\?\\)",
    ),
    (
      ['--config.algorithm=protonet', '--config.method.first_order=true'],
      "unknown config field 'method.first_order'. Fix: protonet takes no",
    ),
    (
      ['--config.model.num_filters=8', "--config.model={'num_filters': 4}"],
      '--config.model comes after --config.model.num_filters and would '
      'replace it. Fix: give --config.model first',
    ),
    (['--config.model=3'], 'config.model is a group of fields. Fix:'),
    (['--config.seed.x=3'], 'config.seed is a single value'),
    (
      ['--config.seed=abc'],
      'config.seed=abc: config.seed is a number \\(int\\)',
    ),
    (['--config.seed=1.5'], 'config.seed=1.5: config.seed is a number'),
    (['--config.method.first_order=maybe'], 'is true or false. Fix:'),
    (['--config.seed'], 'needs a value. Fix: --config.seed=<value>'),
    (['--config.algorithm=protonets'], "did you mean 'protonet'"),
    (['--config='], '--config is required. Fix: --config=NAME'),
    (
      ['--config=protonet_omniglot:5w1s', '--config.ways=1'],
      'config.ways=1: a classification task needs at least 2 classes. Fix:',
    ),
    (
      ['--config.augment.crop_padding=100'],
      r'crop_padding=100 is half the 28-pixel images or more.*Fix:',
    ),
    (['--no_such_flag'], 'no_such_flag'),
  ],
)
def test_flag_and_config_errors_are_one_line(tmp_path, cli, args, message):
  code, out, err = cli(f'--workdir={tmp_path}/run', *args)
  assert code == 1 and not out, (out, err)
  assert err.startswith('Error: ') and len(err.splitlines()) == 1, err
  assert re.search(message, err), err
  assert not os.path.exists(tmp_path / 'run')


def test_the_baselines_refuse_training_ways_in_one_line(
  tmp_path, cli, omniglot_data_dir
):
  code, _, err = cli(
    '--config=baseline_omniglot:baseline_5w1s',
    '--config.train_ways=10',
    f'--workdir={tmp_path}',
    f'--data_dir={omniglot_data_dir}',
    f'--source_dir={SOURCE_DIR}',
  )
  assert code == 1 and len(err.splitlines()) == 1, err
  assert 'config.train_ways=10: baseline trains on minibatches' in err
  assert not (tmp_path / 'config.json').exists()


def test_config_is_checked_before_the_workdir(cli):
  code, _, err = cli('--config=nope')
  assert code == 1 and "unknown config 'nope'" in err, err


def test_print_config_prints_every_field_after_the_overrides(cli):
  code, out, err = cli(
    '--config=maml_omniglot:20w1s',
    '--config.method.first_order=true',
    '--config.model.num_filters=8',
    '--config.meta_lr=3e-4',
    '--print_config',
  )
  assert code == 0 and not err, err
  expected = maml_omniglot.get_config('20w1s')
  expected.method.first_order = True
  expected.model.num_filters = 8
  expected.meta_lr = 3e-4
  printed = dict(line.split(' = ', 1) for line in out.splitlines())
  assert printed == {
    k: repr(v) for k, v in config_checks.flatten(expected).items()
  }


def test_list_configs_lists_every_config_and_preset(cli):
  code, out, err = cli('--list_configs')
  assert code == 0 and not err, err
  assert 'maml_omniglot: 5w1s (default), 5w5s, 20w1s, 20w5s\n' in out
  assert 'sinusoid: maml (default), fomaml, reptile, pretrain\n' in out
  assert '\ndefault\n    The main job' in out


def test_a_missing_config_file_is_one_line(tmp_path, cli):
  code, _, err = cli(f'--config={tmp_path}/nope.py', f'--workdir={tmp_path}')
  assert code == 1 and 'no config file' in err and len(err.splitlines()) == 1


def test_stray_arguments_are_one_line(tmp_path, cli):
  code, _, err = cli(f'--workdir={tmp_path}', 'extra')
  assert code == 1 and "Unexpected arguments: ['extra']" in err


def test_wrappers_default_to_their_config_files():
  assert omniglot.DEFAULT_CONFIG == 'default'
  assert sinusoid.DEFAULT_CONFIG == 'sinusoid'
  assert configs.load('default') == default.get_config()
  assert configs.load('sinusoid') == sinusoid_config.get_config()


@pytest.mark.slow
def test_short_real_run_learns_far_above_chance(tmp_path, omniglot_data_dir):
  """5-way 1-shot on real Omniglot: chance is 20%."""
  results = short_real_run(
    tmp_path, omniglot_data_dir, queries=5, eval_inner_steps=3
  )
  # Measured: 67.4% +- 2.7% (100 test tasks) in under a minute on 2 cores.
  assert results['test_accuracy'] - results['test_ci95'] > 0.5, results


def test_an_unknown_field_is_one_line_in_a_real_process(tmp_path):
  """Overrides are applied after parsing, in a process of its own as at
  start-up (not when absl defines or parses the flags)."""
  import subprocess

  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.omniglot',
      '--config.bogus_field=1',
      f'--workdir={tmp_path}/run',
    ],
    cwd=ROOT,
    env=dict(os.environ, JAXMETA_HUGE_PAGES='0'),
    capture_output=True,
    text=True,
    check=False,
  )
  assert done.returncode == 1 and not done.stdout, done
  assert done.stderr == (
    "Error: --config: unknown config field 'bogus_field'. Fix: "
    '--print_config lists every field.\n'
  )


def test_a_reader_that_stops_early_is_no_error():
  """`--list_configs | head -1`: the reader has gone before the program
  prints (it closes the pipe at once; the program takes seconds to start)."""
  import subprocess

  process = subprocess.Popen(
    [sys.executable, '-m', 'experiments.main', '--list_configs'],
    cwd=ROOT,
    env=dict(os.environ, JAXMETA_HUGE_PAGES='0'),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  process.stdout.close()
  err = process.stderr.read()
  assert process.wait() == 0 and not err, err
