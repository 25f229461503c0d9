"""Omniglot, mini-ImageNet, CIFAR-FS/FC100 and CUB with a data dir that cannot be
written, or that is removed while their cache is prepared: one `DataError`
each, and the next load (with the fault removed) prepares the cache."""

import contextlib
import errno
import os
import shutil
import subprocess

import pytest
import tensorflow_datasets as tfds

from jaxmeta.data import cifar100
from jaxmeta.data import cifar100_tfds
from jaxmeta.data import cub
from jaxmeta.data import cub_tfds
from jaxmeta.data import miniimagenet
from jaxmeta.data import miniimagenet_tfds
from jaxmeta.data import omniglot
from jaxmeta.data import omniglot_tfds
from jaxmeta.data import registry

from support import cub_files
from support import REPO
from support.cifar_files import fake_cifar
from support.cifar_files import write_archive
from support.miniimagenet_files import fake_pickles
from support.miniimagenet_files import write_pickles

# The fake sources' split lists and class sizes.
pytestmark = pytest.mark.usefixtures(
  'cifar_small_classes', 'miniimagenet_tiny_lists'
)


def _mini(tmp_path):
  source = write_pickles(tmp_path / 'pickles', fake_pickles())
  load = lambda data_dir: miniimagenet.load(
    'train', data_dir=str(data_dir), source_dir=str(source)
  )
  return load, miniimagenet_tfds.JaxmetaMiniImageNet


def _cifar(tmp_path):
  meta, files = fake_cifar()
  write_archive(tmp_path / 'cifar', meta, files)

  def load(data_dir):
    cifar100._read_cache.cache_clear()
    return cifar100.load_fc100(
      'train', data_dir=str(data_dir), source_dir=str(tmp_path / 'cifar')
    )

  return load, cifar100_tfds.JaxmetaCifar100


def _cub(tmp_path):
  tgz = cub_files.write_tgz(tmp_path / 'cub', cub_files.fake_cub()[0])
  load = lambda data_dir: cub.load(
    'val', data_dir=str(data_dir), source_dir=str(tgz)
  )
  return load, cub_tfds.JaxmetaCUB


def _omniglot(tmp_path):
  del tmp_path
  source = REPO / 'data' / 'omniglot'
  load = lambda data_dir: omniglot.load(
    'test', 'lake', data_dir=str(data_dir), source_dir=str(source)
  )
  return load, omniglot_tfds.JaxmetaOmniglot


DATASETS = {
  'miniimagenet': _mini,
  'fc100': _cifar,
  'cub': _cub,
  'omniglot': _omniglot,
}
# Omniglot's cache is its 32,460 real drawings: prepared twice, ~30 s a test.
NAMES = [
  'fc100',
  'miniimagenet',
  'cub',
  pytest.param('omniglot', marks=pytest.mark.slow),
]


@contextlib.contextmanager
def read_only_dir(path):
  """`path`, a folder this process cannot write (as root too: a read-only
  mount); skips where that cannot be made."""
  path.mkdir()
  if os.geteuid() != 0:
    path.chmod(0o555)
    try:
      yield path
    finally:
      path.chmod(0o755)
    return
  try:
    mounted = (
      subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', str(path)],
        capture_output=True,
        check=False,
      ).returncode
      == 0
    )
  except OSError:
    mounted = False
  if not mounted:
    pytest.skip('Root, and no read-only mount can be made here.')
  try:
    yield path
  finally:
    subprocess.run(['umount', '-l', str(path)], check=False)


@pytest.mark.parametrize('dataset', NAMES)
def test_a_read_only_data_dir_is_one_error(tmp_path, dataset):
  load, _ = DATASETS[dataset](tmp_path)
  with read_only_dir(tmp_path / 'ro') as data_dir:
    with pytest.raises(registry.DataError) as error:
      load(data_dir / 'tfds')
  message = str(error.value)
  assert 'is read-only' in message and 'Fix:' in message, message
  assert '\n' not in message
  assert load(tmp_path / 'writable').images.dtype.name == 'uint8'


@pytest.mark.parametrize('dataset', NAMES)
def test_a_data_dir_removed_while_preparing_is_one_error(
  tmp_path, monkeypatch, dataset
):
  load, builder_class = DATASETS[dataset](tmp_path)
  data_dir = tmp_path / 'tfds'
  generate = builder_class._generate_examples

  def removed_midway(self, *args, **kwargs):
    shutil.rmtree(data_dir)
    yield from generate(self, *args, **kwargs)

  with monkeypatch.context() as patches:
    patches.setattr(builder_class, '_generate_examples', removed_midway)
    with pytest.raises(registry.DataError) as error:
      load(data_dir)
  message = str(error.value)
  assert 'was removed while' in message and 'Fix:' in message, message
  assert '\n' not in message
  first = load(data_dir)  # Prepared afresh.
  assert first.images.shape[0] > 0


@pytest.mark.parametrize('dataset', NAMES[:3])
def test_a_full_disk_is_one_error(tmp_path, monkeypatch, dataset):
  load, builder_class = DATASETS[dataset](tmp_path)

  def disk_full(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')
    yield

  monkeypatch.setattr(builder_class, '_generate_examples', disk_full)
  with pytest.raises(registry.DataError) as error:
    load(tmp_path / 'tfds')
  message = str(error.value)
  assert 'Cannot write the' in message and 'No space left' in message, message
  assert 'Fix:' in message and '\n' not in message, message


@pytest.mark.parametrize(
  'builder_class, config',
  [
    (miniimagenet_tfds.JaxmetaMiniImageNet, 'pickles84'),
    (cifar100_tfds.JaxmetaCifar100, None),
    (cub_tfds.JaxmetaCUB, None),
  ],
)
def test_a_builder_with_an_empty_manual_dir_is_one_line(
  tmp_path, builder_class, config
):
  builder = builder_class(
    data_dir=str(tmp_path / 'tfds'), config=config, file_format='array_record'
  )
  with pytest.raises(registry.DataError) as error:
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path / 'empty')
      )
    )
  message = str(error.value)
  assert 'Fix:' in message or 'source_dir=' in message, message
  assert '\n' not in message, message
