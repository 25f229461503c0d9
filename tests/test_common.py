"""Tests of experiments/common.py: the start-up restart with huge pages,
metrics and TensorBoard, workdir paths and locks, JSON writes."""

import json
import os
import platform
import sys

import numpy as np
import pytest

from experiments import common
import tb_events  # tests/ is on sys.path under pytest.


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
