"""Faults of a run's surroundings, injected for real: an unreadable best
checkpoint, a second run on a busy workdir, a full disk.

Each ends in one line (`Error: ... Fix: ...` from the programs), and after
the fault is removed the same command finishes the run, equal bit for bit to
a run that met no fault.
"""

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

from experiments import checkpoints as checkpoints_lib
from experiments import common
from experiments import build
from experiments import workdir as workdir_lib
from experiments import train
from support import REPO
from support import kill_driver

_REPO = str(REPO)


def config(**overrides):
  """Tiny sinusoid MAML, validated and saved at steps 2, 4 and 6, all kept.

  With this meta learning rate the validation error grows after step 2
  (3.78, 3.99, 4.48 on CPU): the best step is the first, the next best the
  second, and the latest the third, all different.
  """
  c = kill_driver.config()
  c.update(meta_lr=0.3, checkpoint_every=2, keep_checkpoints=3)
  c.update(overrides)
  return c


def run(c, workdir):
  return train.train_and_evaluate(c, str(workdir), progress=False)


def final_state(c, workdir, step=6):
  built = build.Run(c, str(workdir), None, None, 'train')
  state, _ = built.checkpoints.restore(built.init_state(), step)
  built.checkpoints.close()
  return state


def damage(step_dir, part='state'):
  """Truncates every file of a part of a checkpoint step to half its size:
  its `state`, or its validation record (`metrics`)."""
  for root, _, files in os.walk(os.path.join(step_dir, part)):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """`(workdir, results)` of the run that met no fault."""
  workdir = tmp_path_factory.mktemp('straight')
  results = run(config(), workdir)
  assert results['best_step'] == 2, results['best_step']
  return workdir, results


def one_line(message):
  assert '\n' not in str(message).strip(), message
  assert 'Fix:' in str(message), message


# An unreadable best checkpoint.


@pytest.mark.parametrize('part', ['state', 'metrics'])
def test_an_unreadable_best_checkpoint_falls_back_to_the_next_best(
  tmp_path, straight, capsys, part
):
  straight_dir, straight_results = straight
  workdir = tmp_path / 'damaged'
  shutil.copytree(straight_dir, workdir)
  damage(workdir / 'checkpoints' / '2', part)
  # What the run should fall back to: the straight run without its step 2.
  expected_dir = tmp_path / 'expected'
  shutil.copytree(straight_dir, expected_dir)
  shutil.rmtree(expected_dir / 'checkpoints' / '2')
  expected = train.evaluate(config(), str(expected_dir))
  assert expected['best_step'] == 4

  # Evaluation changes nothing: one line that says how to recover.
  with pytest.raises(checkpoints_lib.CheckpointError) as error:
    train.evaluate(config(), str(workdir))
  one_line(error.value)
  assert 'Checkpoint step 2 (' in str(error.value)
  assert (workdir / 'checkpoints' / '2').is_dir()

  capsys.readouterr()
  again = run(config(), workdir)
  err = capsys.readouterr().err
  assert 'checkpoint step 2 could not be read' in err
  assert os.listdir(workdir / 'unreadable') == ['2']
  assert again['best_step'] == 4
  assert again['test_mse'] == expected['test_mse']
  assert again['test_mse_by_step'] == expected['test_mse_by_step']
  assert again['iterations'] == straight_results['iterations'] == 6
  chex.assert_trees_all_equal(
    final_state(config(), workdir), final_state(config(), straight_dir)
  )
  # The same command, and evaluation, go on working.
  assert run(config(), workdir)['test_mse'] == expected['test_mse']
  assert train.evaluate(config(), str(workdir))['best_step'] == 4


def test_unreadable_validated_steps_are_skipped_until_none_is_left(tmp_path):
  ckpt = checkpoints_lib.Checkpoints(str(tmp_path), 5, 'val_mse', False)
  state = {'w': np.arange(4, dtype=np.float32)}
  ckpt.save(1, state, {'config': {}}, val_metric=0.5)
  ckpt.save(2, state, {'config': {}}, val_metric=0.2)
  ckpt.save(3, state, {'config': {}})
  damage(tmp_path / 'checkpoints' / '2')
  read_only = checkpoints_lib.Checkpoints(
    str(tmp_path), 5, 'val_mse', False, read_only=True
  )
  with pytest.raises(checkpoints_lib.CheckpointError, match='Fix:'):
    read_only.restore_best_readable(state)
  read_only.close()
  step, restored, meta = ckpt.restore_best_readable(state)
  assert step == 1 and meta == {'config': {}}
  chex.assert_trees_all_equal(restored, state)
  damage(tmp_path / 'checkpoints' / '1')
  assert ckpt.restore_best_readable(state) is None
  assert sorted(os.listdir(tmp_path / 'unreadable')) == ['1', '2']
  assert ckpt.manager.all_steps() == [3]
  ckpt.close()


def test_a_run_whose_every_validated_step_is_unreadable_validates_again(
  tmp_path, straight
):
  """Only the latest step is left unvalidated and intact: the rerun
  validates the final state afresh and tests it."""
  straight_dir, _ = straight
  workdir = tmp_path / 'damaged'
  shutil.copytree(straight_dir, workdir)
  for step in (2, 4):
    damage(workdir / 'checkpoints' / str(step))
  # Step 6 stays readable, but its validation record is lost: re-save it
  # without a metric.
  built = build.Run(config(), str(workdir), None, None, 'train')
  state, meta = built.checkpoints.restore(built.init_state(), 6)
  built.checkpoints.manager.delete(6)
  built.checkpoints.save(6, state, meta)
  built.checkpoints.close()
  results = run(config(), workdir)
  assert results['best_step'] == 6
  expected_dir = tmp_path / 'expected'
  shutil.copytree(straight_dir, expected_dir)
  for step in (2, 4):
    shutil.rmtree(expected_dir / 'checkpoints' / str(step))
  assert (
    results['test_mse'] == train.evaluate(config(), expected_dir)['test_mse']
  )


# Two runs on one workdir.


def test_a_busy_workdir_is_refused_in_one_line(tmp_path):
  workdir = tmp_path / 'busy'
  workdir.mkdir()
  with common.locked_workdir(common.workdir_path(str(workdir))):
    with pytest.raises(common.OneLineError) as error:
      run(config(), workdir)
    one_line(error.value)
    assert f'pid {os.getpid()}' in str(error.value)
    assert not (workdir / 'config.json').exists()
  results = run(config(), workdir)
  assert results['iterations'] == 6
  assert (workdir / 'lock').read_text() == ''  # No holder recorded now.
  # Evaluations share the workdir with each other, not with a run.
  with common.locked_workdir(common.workdir_path(workdir), exclusive=False):
    assert train.evaluate(config(), str(workdir))['best_step'] == 2
    with pytest.raises(common.OneLineError, match='an evaluation of it'):
      run(config(), workdir)


# A full disk.


@contextlib.contextmanager
def small_disk(path):
  """A fresh tmpfs at `path` (True), or a plain directory (False) where
  mounting is not permitted (not root, no CAP_SYS_ADMIN)."""
  path.mkdir()
  try:
    mounted = (
      subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', str(path)],
        capture_output=True,
        check=False,
      ).returncode
      == 0
    )
  except OSError:  # No mount program.
    mounted = False
  try:
    yield mounted
  finally:
    if mounted:
      subprocess.run(['umount', '-l', str(path)], check=False)


def fill(directory):
  """Writes a ballast file until the disk holding `directory` is full."""
  block = b'\0' * (1 << 16)
  with open(os.path.join(directory, 'ballast'), 'wb', buffering=0) as f:
    try:
      while True:
        f.write(block)
    except OSError as e:
      assert e.errno == errno.ENOSPC, e
  try:  # The last pages too.
    with open(os.path.join(directory, 'ballast2'), 'wb', buffering=0) as f:
      while True:
        f.write(b'\0')
  except OSError as e:
    assert e.errno == errno.ENOSPC, e


@pytest.mark.parametrize(
  'writing, overrides',
  [
    # The disk fills after the checkpoint of step 2; then a metric record.
    ('metrics', {}),
    # Only checkpoints in between (validation and records at the end): the
    # checkpoint of step 4 meets the full disk, inside orbax.
    ('checkpoint', dict(eval_every=100, log_every=100)),
    # Everything but results.json fits.
    ('results', {}),
  ],
)
def test_a_full_disk_stops_in_one_line_and_the_rerun_finishes(
  tmp_path, monkeypatch, straight, writing, overrides
):
  c = config(**overrides)
  reference_dir = straight[0]
  if overrides:
    reference_dir = tmp_path / 'reference'
    run(c, reference_dir)
  reference = json.loads((reference_dir / 'results.json').read_text())
  with small_disk(tmp_path / 'disk') as mounted:
    workdir = tmp_path / 'disk' / 'run'
    simulated_full = []

    def full_disk():
      if mounted:
        fill(tmp_path / 'disk')
      else:
        simulated_full.append(True)

    def failing(fn):
      def wrapped(*args, **kwargs):
        if simulated_full:
          raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fn(*args, **kwargs)

      return wrapped

    save = checkpoints_lib.Checkpoints.save
    write_json = common.write_json

    def save_then_fill(self, step, *args, **kwargs):
      save(self, step, *args, **kwargs)
      if step == 2 and writing != 'results':
        full_disk()

    def fill_then_write(path, obj):
      if str(path).endswith('results.json'):
        full_disk()
      failing(write_json)(path, obj)

    with monkeypatch.context() as patches:
      patches.setattr(checkpoints_lib.Checkpoints, 'save', save_then_fill)
      patches.setattr(common, 'write_json', fill_then_write)
      manager = checkpoints_lib.ocp.CheckpointManager
      patches.setattr(manager, 'save', failing(manager.save))
      patches.setattr(
        common.MetricWriter, 'write', failing(common.MetricWriter.write)
      )
      with pytest.raises(common.DiskFullError) as error:
        run(c, workdir)
      one_line(error.value)
      intact = 6 if writing == 'results' else 2
      assert f'step {intact}, is intact' in str(error.value)
    for name in ('ballast', 'ballast2'):
      if (tmp_path / 'disk' / name).exists():
        os.remove(tmp_path / 'disk' / name)
    again = run(c, workdir)
    assert again['test_mse'] == reference['test_mse']
    assert again['best_step'] == reference['best_step']
    chex.assert_trees_all_equal(
      final_state(c, workdir), final_state(c, reference_dir)
    )
    checkpoint_dirs = os.listdir(workdir / 'checkpoints')
    assert all(name.isdigit() for name in checkpoint_dirs), checkpoint_dirs
    steps = [
      json.loads(line)['step']
      for line in (workdir / 'metrics.jsonl').read_text().splitlines()
      if 'train/loss' in line
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 6


# The programs, as processes: one line each.

_TINY = [
  '--config=experiments/configs/sinusoid.py',
  '--config.model.hidden=(8,)',
  '--config.num_iterations=6',
  '--config.eval_every=2',
  '--config.checkpoint_every=2',
  '--config.keep_checkpoints=3',
  '--config.log_every=1',
  '--config.num_val_tasks=4',
  '--config.num_eval_tasks=6',
  '--config.eval_batch_size=6',
  '--config.meta_batch_size=2',
  '--config.meta_lr=0.3',
  '--noprogress',
]


def _command(workdir, *extra):
  return [
    sys.executable,
    '-m',
    'experiments.main',
    *_TINY,
    f'--workdir={workdir}',
    *extra,
  ]


def _env():
  return dict(
    os.environ,
    PYTHONPATH=_REPO,
    JAXMETA_HUGE_PAGES='0',
    JAX_PLATFORMS='cpu',
  )


def _program(workdir, *extra):
  """`(exit status, stderr)` of the program on `workdir`."""
  done = subprocess.run(
    _command(workdir, *extra),
    cwd=_REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  return done.returncode, done.stderr


def _error_line(status, stderr):
  """The one line of a failed program (warnings of libraries aside)."""
  assert status == 1, stderr[-3000:]
  assert 'Traceback' not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.startswith('Error:')]
  assert len(lines) == 1 and 'Fix:' in lines[0], stderr[-3000:]
  return lines[0]


@pytest.mark.slow
def test_the_programs_say_each_fault_in_one_line_and_then_finish(tmp_path):
  straight_dir = tmp_path / 'straight'
  status, err = _program(straight_dir)
  assert status == 0, err[-3000:]
  straight_results = json.loads((straight_dir / 'results.json').read_text())

  # A second run while the first holds the workdir (stopped, then killed).
  busy = tmp_path / 'busy'
  first = subprocess.Popen(
    _command(busy),
    cwd=_REPO,
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.monotonic() + 300
    while not (
      (busy / 'lock').exists()
      and f'pid {first.pid}' in (busy / 'lock').read_text()
    ):
      assert first.poll() is None and time.monotonic() < deadline
      time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)
    line = _error_line(*_program(busy))
    assert 'in use by another run' in line and f'pid {first.pid}' in line
  finally:
    first.kill()  # SIGKILL: the kernel drops its lock.
    first.wait()
  status, err = _program(busy)
  assert status == 0, err[-3000:]
  assert (
    json.loads((busy / 'results.json').read_text())['test_mse']
    == (straight_results['test_mse'])
  )

  # The best checkpoint unreadable: eval says how to recover, train does.
  damaged = tmp_path / 'damaged'
  shutil.copytree(straight_dir, damaged)
  damage(damaged / 'checkpoints' / '2')
  line = _error_line(*_program(damaged, '--mode=eval'))
  assert 'step 2 (the best on validation)' in line
  status, err = _program(damaged)
  assert status == 0, err[-3000:]
  assert 'Traceback' not in err
  status, err = _program(damaged, '--mode=eval')
  assert status == 0, err[-3000:]

  # A disk too full for the first checkpoint.
  with small_disk(tmp_path / 'disk') as mounted:
    if not mounted:
      pytest.skip('Mounting a tmpfs is not permitted here.')
    workdir = tmp_path / 'disk' / 'run'
    workdir.mkdir()
    fill(tmp_path / 'disk')
    os.remove(tmp_path / 'disk' / 'ballast2')  # Room for the small files.
    line = _error_line(*_program(workdir))
    assert 'is full' in line
    for name in ('ballast',):
      os.remove(tmp_path / 'disk' / name)
    status, err = _program(workdir)
    assert status == 0, err[-3000:]
    results = json.loads((workdir / 'results.json').read_text())
    assert results['test_mse'] == straight_results['test_mse']
    chex.assert_trees_all_equal(
      final_state(config(), workdir), final_state(config(), straight_dir)
    )


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path):
  workdir = common.workdir_path(str(tmp_path / 'run'))
  (tmp_path / 'run' / 'checkpoints' / '4').mkdir(parents=True)
  enospc = lambda path: OSError(errno.ENOSPC, 'No space left on device', path)
  inside = str(
    workdir_lib.disk_full(workdir, enospc(f'{workdir}/metrics.jsonl'))
  )
  assert inside.startswith(f'The disk of --workdir={workdir} (')
  assert 'step 4, is intact' in inside
  elsewhere = workdir_lib.disk_full(
    workdir, enospc('/data/tfds/x.array_record')
  )
  assert str(elsewhere).startswith('The disk of /data/tfds/x.array_record is')
  assert common.is_disk_full(RuntimeError('write: Disk quota exceeded'))
  assert not common.is_disk_full(OSError(errno.EACCES, 'Permission denied'))


# Something else where the run writes.


@pytest.mark.parametrize(
  'name, kind',
  [
    ('checkpoints', 'file'),
    ('lock', 'folder'),
    ('metrics.jsonl', 'folder'),
    ('tensorboard', 'file'),
    ('results.json', 'folder'),
  ],
)
def test_a_blocked_path_in_the_workdir_is_one_line(
  tmp_path, straight, name, kind
):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  blocker = workdir / name
  if kind == 'file':
    blocker.write_text('x')
  else:
    blocker.mkdir()
  with pytest.raises(common.OneLineError) as error:
    run(config(), workdir)
  one_line(error.value)
  assert str(blocker) in str(error.value)
  if kind == 'file':
    blocker.unlink()
  else:
    blocker.rmdir()
  assert run(config(), workdir)['test_mse'] == straight[1]['test_mse']
