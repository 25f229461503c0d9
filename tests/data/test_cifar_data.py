"""Tests of CIFAR-FS and FC100 on a tiny fake CIFAR-100 in the real format."""

from pathlib import Path

import numpy as np
import pytest

from jaxmeta.data import cifar100
from jaxmeta.data import cifar100_tfds
from jaxmeta.data import registry
from support.cifar_files import fake_cifar
from support.cifar_files import fine_to_coarse
from support.cifar_files import PER_CLASS
from support.cifar_files import split_lists
from support.cifar_files import write_archive
from support.cifar_files import write_folder

pytestmark = pytest.mark.usefixtures('cifar_small_classes')

EXPECTED_CLASSES = {'cifar_fs': (64, 16, 20), 'fc100': (60, 20, 20)}


@pytest.fixture(scope='module')
def fake(tmp_path_factory):
  """A fake archive and a prepared data dir: (meta, files, source, data_dir)."""
  meta, files = fake_cifar()
  root = tmp_path_factory.mktemp('cifar')
  write_archive(root, meta, files)
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  with pytest.MonkeyPatch.context() as m:
    m.setattr(cifar100_tfds, 'EXAMPLES_PER_CLASS', PER_CLASS)
    cifar100.load_cifar_fs('train', data_dir=data_dir, source_dir=str(root))
  return meta, files, root, data_dir


def _expected_images(files, fine_index):
  """A class's images read independently: train rows, then test rows."""
  out = []
  for name in ('train', 'test'):
    f = files[name]
    for row in np.flatnonzero(np.asarray(f[b'fine_labels']) == fine_index):
      planes = f[b'data'][row]
      image = np.empty((32, 32, 3), np.uint8)
      for c in range(3):
        for i in range(32):
          image[i, :, c] = planes[c * 1024 + i * 32 : c * 1024 + i * 32 + 32]
      out.append(image)
  return np.stack(out)


def test_shipped_lists():
  fs, fc = split_lists('cifar-fs'), split_lists('fc100')
  assert [len(fs[s]) for s in registry.SPLITS] == [64, 16, 20]
  assert len({f for s in fs.values() for _, f in s}) == 100
  assert [len(fc[s]) for s in registry.SPLITS] == [12, 4, 4]
  assert len({c for s in fc.values() for c in s}) == 20
  coarse_of = fine_to_coarse()
  assert len(set(coarse_of.values())) == 20
  for s, expected in zip(registry.SPLITS, EXPECTED_CLASSES['fc100']):
    assert sum(coarse_of[f] in fc[s] for f in coarse_of) == expected


def test_registered():
  assert registry.DATASETS['cifar_fs'] is cifar100.load_cifar_fs
  assert registry.DATASETS['fc100'] is cifar100.load_fc100


@pytest.mark.parametrize('dataset', ['cifar_fs', 'fc100'])
def test_splits_classes_and_pixels(fake, dataset):
  meta, files, _, data_dir = fake
  fine_names = [n.decode() for n in meta[b'fine_label_names']]
  coarse_of = fine_to_coarse()
  lists = split_lists({'cifar_fs': 'cifar-fs', 'fc100': 'fc100'}[dataset])
  seen = set()
  for split, num in zip(registry.SPLITS, EXPECTED_CLASSES[dataset]):
    data = registry.load(dataset, split, data_dir=data_dir)
    assert data.images.dtype == np.uint8
    assert data.images.shape == (num, PER_CLASS, 32, 32, 3)
    if dataset == 'cifar_fs':
      assert data.class_names == tuple(f'{c}/{f}' for c, f in lists[split])
    else:
      expected = [
        f'{coarse_of[f]}/{f}'
        for c in lists[split]
        for f in sorted(coarse_of)
        if coarse_of[f] == c
      ]
      assert data.class_names == tuple(expected)
    assert not seen & set(data.class_names)
    seen |= set(data.class_names)
    for k in (0, num - 1):
      fine = data.class_names[k].split('/')[1]
      np.testing.assert_array_equal(
        data.images[k], _expected_images(files, fine_names.index(fine))
      )
  assert len(seen) == 100


def test_folder_env_and_manual_dir_sources_match_archive(
  fake, tmp_path, monkeypatch
):
  meta, files, _, data_dir = fake
  reference = cifar100.load_fc100('test', data_dir=data_dir)
  folder = tmp_path / 'src'
  write_folder(folder, meta, files)
  got = cifar100.load_fc100(
    'test', data_dir=str(tmp_path / 'a'), source_dir=str(folder)
  )
  np.testing.assert_array_equal(got.images, reference.images)
  monkeypatch.setenv(cifar100.SOURCE_ENV, str(folder))
  got = cifar100.load_fc100('test', data_dir=str(tmp_path / 'b'))
  np.testing.assert_array_equal(got.images, reference.images)
  monkeypatch.delenv(cifar100.SOURCE_ENV)
  manual = tmp_path / 'c' / 'downloads' / 'manual'
  write_archive(manual, meta, files)
  got = cifar100.load_fc100('test', data_dir=str(tmp_path / 'c'))
  np.testing.assert_array_equal(got.images, reference.images)


def _no_prepared_dataset(data_dir):
  return not list(Path(data_dir).rglob('dataset_info.json'))


def test_missing_source_says_what_to_put_where(tmp_path, monkeypatch):
  monkeypatch.delenv(cifar100.SOURCE_ENV, raising=False)
  with pytest.raises(
    cifar100.Cifar100Error, match=r'cifar-100-python\.tar\.gz.*kriz/cifar'
  ):
    cifar100.load_cifar_fs(
      'train', data_dir=str(tmp_path / 'd'), source_dir=str(tmp_path)
    )


def test_truncated_archive_raises_and_is_not_cached(tmp_path):
  path = write_archive(tmp_path, *fake_cifar())
  path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
  with pytest.raises(cifar100.Cifar100Error, match='truncated or corrupted'):
    cifar100.load_cifar_fs(
      'train', data_dir=str(tmp_path / 'd'), source_dir=str(tmp_path)
    )
  assert _no_prepared_dataset(tmp_path / 'd')


def test_truncated_pickle_raises(tmp_path):
  folder = write_folder(tmp_path, *fake_cifar())
  data = (folder / 'test').read_bytes()
  (folder / 'test').write_bytes(data[: len(data) // 2])
  with pytest.raises(cifar100.Cifar100Error, match=r'test.*truncated'):
    cifar100.load_cifar_fs(
      'train', data_dir=str(tmp_path / 'd'), source_dir=str(tmp_path)
    )
  assert _no_prepared_dataset(tmp_path / 'd')


def test_wrong_class_count_names_the_class(tmp_path):
  meta, files = fake_cifar()
  row = files['test'][b'fine_labels'].index(0)
  for key in (b'fine_labels', b'coarse_labels'):
    del files['test'][key][row]
  files['test'][b'data'] = np.delete(files['test'][b'data'], row, axis=0)
  write_folder(tmp_path, meta, files)
  with pytest.raises(cifar100.Cifar100Error, match=r"\('apple', 2\)"):
    cifar100.load_cifar_fs(
      'train', data_dir=str(tmp_path / 'd'), source_dir=str(tmp_path)
    )


def test_wrong_image_shape_raises(tmp_path):
  write_folder(tmp_path, *fake_cifar(row_length=3000))
  with pytest.raises(cifar100.Cifar100Error, match=r'\[N, 3072\].*3000'):
    cifar100.load_cifar_fs(
      'train', data_dir=str(tmp_path / 'd'), source_dir=str(tmp_path)
    )


def test_failure_midway_leaves_no_cache_and_next_load_rebuilds(
  tmp_path, monkeypatch
):
  write_archive(tmp_path, *fake_cifar())
  generate = cifar100_tfds.JaxmetaCifar100._generate_examples

  def fail_after_first(self, *args):
    for i, example in enumerate(generate(self, *args)):
      if i == 1:
        raise OSError('disk full')
      yield example

  monkeypatch.setattr(
    cifar100_tfds.JaxmetaCifar100, '_generate_examples', fail_after_first
  )
  data_dir = str(tmp_path / 'd')
  with pytest.raises(OSError, match='disk full'):
    cifar100.load_cifar_fs('val', data_dir=data_dir, source_dir=str(tmp_path))
  assert _no_prepared_dataset(data_dir)
  monkeypatch.setattr(
    cifar100_tfds.JaxmetaCifar100, '_generate_examples', generate
  )
  data = cifar100.load_cifar_fs(
    'val', data_dir=data_dir, source_dir=str(tmp_path)
  )
  assert data.images.shape == (16, PER_CLASS, 32, 32, 3)


@pytest.mark.parametrize(
  'loader, kwargs, message',
  [
    (cifar100.load_cifar_fs, {'split': 'valid'}, 'Unknown split'),
    (cifar100.load_cifar_fs, {'scheme': 'oreshkin'}, "'bertinetto'"),
    (cifar100.load_fc100, {'scheme': 'bertinetto'}, "'oreshkin'"),
  ],
)
def test_bad_arguments(loader, kwargs, message):
  with pytest.raises(cifar100.Cifar100Error, match=message):
    loader(**kwargs)


def test_errors_are_value_errors():
  assert issubclass(cifar100.Cifar100Error, ValueError)


def test_builder_alone_reads_the_tfds_manual_dir(tmp_path):
  import tensorflow_datasets as tfds

  write_archive(tmp_path / 'manual', *fake_cifar())
  builder = cifar100_tfds.JaxmetaCifar100(
    data_dir=str(tmp_path / 'd'), file_format='array_record'
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=str(tmp_path / 'manual')
    )
  )
  assert len(builder.as_data_source()['classes']) == 100
  empty = cifar100_tfds.JaxmetaCifar100(
    data_dir=str(tmp_path / 'e'), file_format='array_record'
  )
  with pytest.raises(cifar100.Cifar100Error, match='cifar-100-python'):
    empty.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path / 'nothing')
      )
    )
