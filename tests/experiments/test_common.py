"""Tests of experiments/common.py: the start-up restart with huge pages,
metrics and TensorBoard, workdir paths and locks, JSON writes."""

import json
import os
import platform
import sys

from etils import epath
from etils.epath import backend as epath_backend
import fsspec
from fsspec.implementations import memory
import numpy as np
import pytest

from experiments import common
from experiments import config_checks
from experiments import workdir as workdir_lib
from support import tb_events


class _Exec(Exception):
  pass


@pytest.fixture
def execve(monkeypatch):
  calls = []

  def fake_execve(path, argv, env):
    calls.append((path, argv, env))
    raise _Exec()

  monkeypatch.setattr(os, 'execve', fake_execve)
  monkeypatch.setattr(sys, 'platform', 'linux')
  monkeypatch.setattr(platform, 'libc_ver', lambda: ('glibc', '2.36'))
  for name in ('GLIBC_TUNABLES', 'JAXMETA_HUGE_PAGES', 'JAXMETA_REEXECUTED'):
    monkeypatch.delenv(name, raising=False)
  return calls


def test_restarts_the_same_command_with_the_tunable_added(execve, monkeypatch):
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.arena_max=2')
  monkeypatch.setattr(
    sys, 'orig_argv', ['python3', '-m', 'experiments.omniglot', '--x=1']
  )
  with pytest.raises(_Exec):
    common.reexec_with_huge_pages()
  ((path, argv, env),) = execve
  assert path == sys.executable
  assert argv == [sys.executable, '-m', 'experiments.omniglot', '--x=1']
  assert env['GLIBC_TUNABLES'] == (
    'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
  )


@pytest.mark.parametrize(
  'env, libc',
  [
    ({'JAXMETA_HUGE_PAGES': '0'}, ('glibc', '2.36')),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, ('glibc', '2.36')),
    ({'JAXMETA_REEXECUTED': '1'}, ('glibc', '2.36')),
    ({}, ('glibc', '2.31')),
    ({}, ('', '')),
  ],
)
def test_does_nothing_when_off_set_or_unsupported(
  execve, monkeypatch, env, libc
):
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setattr(platform, 'libc_ver', lambda: libc)
  common.reexec_with_huge_pages()
  assert not execve


def test_metric_writer_writes_records_scalars_and_hparams(tmp_path):
  writer = common.MetricWriter(tmp_path)
  writer.write(1, {'loss': np.float32(0.5)}, prefix='train/')
  writer.write(2, {'loss': 0.25, 'accuracy': 0.75}, prefix='train/')
  writer.write_hparams(
    2,
    {
      'algorithm': 'maml',
      'inner_lr': 0.4,
      'ways': 5,
      'bn': True,
      'hidden': (8,),
    },
    {'train/accuracy': 0.75},
  )
  writer.close()
  records = [
    json.loads(line)
    for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()
  ]
  assert records == [
    {'step': 1, 'train/loss': 0.5},
    {'step': 2, 'train/loss': 0.25, 'train/accuracy': 0.75},
  ]
  logdir = tmp_path / 'tensorboard'
  assert tb_events.scalars(logdir) == {
    'train/loss': [(1, 0.5), (2, 0.25)],
    'train/accuracy': [(2, 0.75)],
  }
  values, metric_tags = tb_events.hparams(logdir)
  assert values == {
    'algorithm': 'maml',
    'inner_lr': 0.4,
    'ways': 5.0,
    'bn': True,
    'hidden': '[8]',
  }
  assert metric_tags == ['train/accuracy']


class _MemoryGcs(memory.MemoryFileSystem):
  """fsspec's in-memory file system standing in for `gs://` (no network)."""

  protocol = ('gs', 'gcs')
  store = {}
  pseudo_dirs = ['']

  @classmethod
  def _strip_protocol(cls, path):
    path = fsspec.utils.stringify_path(path)
    for prefix in ('gs://', 'gcs://'):
      path = path.removeprefix(prefix)
    return '/' + path.strip('/')


@pytest.fixture
def memory_gcs(monkeypatch, tmp_path):
  """`gs://` paths of `etils.epath` in memory, the working directory in
  `tmp_path` (where a path mistaken for a local one would land)."""
  registry = sys.modules['fsspec.registry']._registry
  monkeypatch.setitem(registry, 'gcs', _MemoryGcs)
  monkeypatch.setitem(registry, 'gs', _MemoryGcs)
  monkeypatch.setattr(_MemoryGcs, 'store', {})
  monkeypatch.setattr(_MemoryGcs, 'pseudo_dirs', [''])
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  monkeypatch.chdir(tmp_path)
  yield _MemoryGcs
  epath_backend.fsspec_backend._get_filesystem.cache_clear()


def test_workdir_files_go_to_a_remote_store(memory_gcs, tmp_path):
  workdir = common.workdir_path('gs://bucket/run')
  workdir_lib.prepare_workdir(workdir)
  with common.locked_workdir(workdir):  # Local only: nothing to lock.
    common.write_json(workdir / 'config.json', {'seed': 0})
    writer = common.MetricWriter(workdir)
    for step in (1, 2, 3):
      writer.write(step, {'loss': 1.0 / step}, prefix='train/')
    writer.write_hparams(3, {'seed': 0}, {'train/loss': 1.0 / 3})
    writer.close()
    workdir_lib.keep_records_up_to(
      workdir / 'metrics.jsonl', 2
    )  # As on resume.
    writer = common.MetricWriter(workdir)
    writer.write(3, {'loss': 0.5}, prefix='train/')
    writer.close()
  assert not os.listdir(tmp_path)  # No local `gs:` folder.
  store = memory_gcs.store
  assert json.loads(store['/bucket/run/config.json'].getvalue()) == {'seed': 0}
  records = [
    json.loads(line)
    for line in store['/bucket/run/metrics.jsonl'].getvalue().splitlines()
  ]
  assert records == [
    {'step': 1, 'train/loss': 1.0},
    {'step': 2, 'train/loss': 0.5},
    {'step': 3, 'train/loss': 0.5},
  ]
  event_files = [k for k in store if '/tensorboard/events.' in k]
  assert len(event_files) == 2  # One per writer, none overwritten.
  events = [
    e for k in event_files for e in tb_events.parse_events(store[k].getvalue())
  ]
  steps = sorted(e.step for e in events for v in e.summary.value)
  # Four scalars, and the hparams' experiment, session start and end.
  assert steps == [1, 2, 3, 3, 3, 3, 3]
  tags = {v.tag for e in events for v in e.summary.value}
  assert {'train/loss', '_hparams_/session_start_info'} <= tags


def test_a_remote_workdir_without_its_file_system_package_is_one_line():
  # s3fs is not a dependency: epath cannot reach s3:// without it.
  with pytest.raises(
    config_checks.ConfigError, match='s3://bucket/run: .*Fix:'
  ):
    workdir_lib.prepare_workdir(common.workdir_path('s3://bucket/run'))


def test_file_uris_and_relative_paths_are_local(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert common.workdir_path(f'file://{tmp_path}/run') == epath.Path(
    f'{tmp_path}/run'
  )
  relative = common.workdir_path('runs/x')
  assert os.fspath(relative) == 'runs/x' and common.is_local(relative)
  common.write_json(relative / 'a.json', [1])
  assert json.loads((tmp_path / 'runs' / 'x' / 'a.json').read_text()) == [1]
  assert sorted(os.listdir(tmp_path / 'runs' / 'x')) == ['a.json']
