"""Tests of mini-ImageNet on tiny fake sources in the real on-disk formats."""

import io
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from jaxmeta.data import miniimagenet
from jaxmeta.data import miniimagenet_tfds
from jaxmeta.data import registry
from support.miniimagenet_files import fake_pickles
from support.miniimagenet_files import LISTS
from support.miniimagenet_files import SHIPPED
from support.miniimagenet_files import shipped_classes
from support.miniimagenet_files import write_pickles
from support.ilsvrc_files import write_folder
from support.ilsvrc_files import write_tar

pytestmark = pytest.mark.usefixtures('miniimagenet_tiny_lists')

# Each fake ILSVRC class has files with these k; numeric order 2, 7, 10, 33,
# 150 differs from the string order 10, 150, 2, 33, 7.
KS = (10, 2, 33, 7, 150)
NUMERIC_KS = sorted(KS)
ALL_WNIDS = [w for split in LISTS.values() for w in split]


def _colour(wnid, k):
  """A solid colour that identifies (class, k)."""
  c = ALL_WNIDS.index(wnid)
  return (k % 256, 40 * c + 20, 255 - (k % 200))


def _jpeg(wnid, k, rng, mode='RGB'):
  size = tuple(int(v) for v in rng.integers(20, 60, 2))
  image = Image.new('RGB', size, _colour(wnid, k))
  if mode != 'RGB':
    image = image.convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


def _fake_ilsvrc(seed=0):
  """{wnid: {file name: jpeg bytes}}; one class stored as grayscale."""
  rng = np.random.default_rng(seed)
  return {
    w: {f'{w}_{k}.JPEG': _jpeg(w, k, rng, 'L' if i == 1 else 'RGB') for k in KS}
    for i, w in enumerate(ALL_WNIDS)
  }


def _no_prepared_dataset(data_dir):
  return not list(Path(data_dir).rglob('dataset_info.json'))


def test_shipped_lists():
  sizes = {'train': 64, 'val': 16, 'test': 20}
  seen = set()
  for split, num in sizes.items():
    classes = miniimagenet_tfds.read_split_list(split, SHIPPED)
    assert len(classes) == num
    assert {len(v) for v in classes.values()} == {600}
    assert not seen & set(classes)
    seen |= set(classes)
    assert list(classes) == list(shipped_classes(split))


def test_registered():
  assert registry.DATASETS['miniimagenet'] is miniimagenet.load


def test_folder_source_selects_by_numeric_rank(tmp_path):
  source = write_folder(tmp_path / 'ilsvrc', _fake_ilsvrc())
  data_dir = str(tmp_path / 'd')
  for split, classes in LISTS.items():
    data = registry.load(
      'miniimagenet', split, data_dir=data_dir, source_dir=str(source)
    )
    assert data.class_names == tuple(classes)
    assert data.images.dtype == np.uint8
    assert data.images.shape == (len(classes), 2, 84, 84, 3)
    for c, (wnid, indices) in enumerate(classes.items()):
      for j, index in enumerate(indices):
        colour = np.array(_colour(wnid, NUMERIC_KS[index - 1]), float)
        if ALL_WNIDS.index(wnid) == 1:  # Stored grayscale: R = G = B.
          colour = np.full(3, colour @ [0.299, 0.587, 0.114])
        got = data.images[c, j].reshape(-1, 3).astype(float)
        np.testing.assert_allclose(got.mean(0), colour, atol=2.5)
        assert np.ptp(got, axis=0).max() <= 4  # Solid: a whole-image resize.


def test_tar_source_matches_folder_and_one_image_matches_pil(tmp_path):
  classes = _fake_ilsvrc()
  folder = write_folder(tmp_path / 'ilsvrc', classes)
  tar = write_tar(tmp_path / 'tar', classes)
  from_folder = miniimagenet.load(
    'train', data_dir=str(tmp_path / 'a'), source_dir=str(folder)
  )
  from_tar = miniimagenet.load(
    'train', data_dir=str(tmp_path / 'b'), source_dir=str(tar.parent)
  )
  np.testing.assert_array_equal(from_tar.images, from_folder.images)
  wnid = ALL_WNIDS[0]
  name = f'{wnid}_{NUMERIC_KS[LISTS["train"][wnid][1] - 1]}.JPEG'
  with Image.open(io.BytesIO(classes[wnid][name])) as image:
    expected = np.asarray(
      image.convert('RGB').resize((84, 84), Image.Resampling.LANCZOS)
    )
  np.testing.assert_array_equal(from_tar.images[0, 1], expected)


def test_other_image_size_and_a_train_subfolder(tmp_path):
  write_folder(tmp_path / 'ILSVRC' / 'train', _fake_ilsvrc())
  data = miniimagenet.load(
    'val',
    image_size=32,
    data_dir=str(tmp_path / 'd'),
    source_dir=str(tmp_path / 'ILSVRC'),
  )
  assert data.images.shape == (1, 2, 32, 32, 3)


def _csv_named_files(seed=0):
  """{split: {wnid: {csv file name: 84x84 jpeg bytes}}}."""
  rng = np.random.default_rng(seed)
  out = {}
  for split, classes in LISTS.items():
    out[split] = {}
    for wnid, indices in classes.items():
      out[split][wnid] = {}
      for i in indices:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (84, 84, 3), np.uint8)).save(
          buffer, format='JPEG'
        )
        out[split][wnid][f'{wnid}{i:08d}.jpg'] = buffer.getvalue()
  return out


@pytest.mark.parametrize('layout', ['images', 'split_folders'])
def test_csv_named_image_files(tmp_path, layout):
  files = _csv_named_files()
  root = tmp_path / 'mini'
  for split, classes in files.items():
    for wnid, named in classes.items():
      folder = root / ('images' if layout == 'images' else f'{split}/{wnid}')
      folder.mkdir(parents=True, exist_ok=True)
      for name, data in named.items():
        (folder / name).write_bytes(data)
  for split, classes in LISTS.items():
    data = miniimagenet.load(
      split, data_dir=str(tmp_path / 'd'), source_dir=str(root)
    )
    assert data.class_names == tuple(classes)
    for c, (wnid, indices) in enumerate(classes.items()):
      for j, index in enumerate(indices):
        jpeg = files[split][wnid][f'{wnid}{index:08d}.jpg']
        with Image.open(io.BytesIO(jpeg)) as image:  # 84x84: not resampled.
          np.testing.assert_array_equal(
            data.images[c, j], np.asarray(image.convert('RGB'))
          )
  assert (tmp_path / 'd' / 'jaxmeta_miniimagenet' / 'images84').is_dir()
  wnid = ALL_WNIDS[-1]
  name = f'{wnid}{LISTS["test"][wnid][0]:08d}.jpg'
  next(root.rglob(name)).unlink()
  with pytest.raises(
    miniimagenet.MiniImageNetError,
    match=f'Class {wnid} of the test split is incomplete: no {name}',
  ):
    miniimagenet.load(
      'test', data_dir=str(tmp_path / 'e'), source_dir=str(root)
    )


def test_pickles_source_exact(tmp_path):
  content = fake_pickles()
  source = write_pickles(tmp_path / 'p', content)
  for split, classes in LISTS.items():
    data = miniimagenet.load(
      split, data_dir=str(tmp_path / 'd'), source_dir=str(source)
    )
    assert data.class_names == tuple(classes)
    for c, wnid in enumerate(classes):
      rows = content[split]['class_dict'][wnid]
      np.testing.assert_array_equal(
        data.images[c], content[split]['image_data'][rows]
      )


def test_env_var_manual_dir_and_cache_without_source(tmp_path, monkeypatch):
  content = fake_pickles()
  reference = content['test']['image_data'][
    content['test']['class_dict'][ALL_WNIDS[-1]]
  ]
  monkeypatch.setenv(
    miniimagenet.SOURCE_ENV, str(write_pickles(tmp_path / 'env', content))
  )
  data = miniimagenet.load('test', data_dir=str(tmp_path / 'a'))
  np.testing.assert_array_equal(data.images[0], reference)
  monkeypatch.delenv(miniimagenet.SOURCE_ENV)
  data = miniimagenet.load('test', data_dir=str(tmp_path / 'a'))  # Cached.
  np.testing.assert_array_equal(data.images[0], reference)
  write_pickles(tmp_path / 'b' / 'downloads' / 'manual', content)
  data = miniimagenet.load('test', data_dir=str(tmp_path / 'b'))
  np.testing.assert_array_equal(data.images[0], reference)


def test_missing_source_lists_the_options(tmp_path):
  with pytest.raises(
    miniimagenet.MiniImageNetError,
    match=r'ILSVRC2012_img_train\.tar.*mini-imagenet-cache',
  ):
    miniimagenet.load(
      'train', data_dir=str(tmp_path / 'd'), source_dir=str(tmp_path / 'empty')
    )


def test_missing_class_folder_names_the_class(tmp_path):
  classes = _fake_ilsvrc()
  wnid = ALL_WNIDS[2]
  del classes[wnid]
  folder = write_folder(tmp_path / 'ilsvrc', classes)
  with pytest.raises(
    miniimagenet.MiniImageNetError, match=f'{wnid} is missing'
  ):
    miniimagenet.load(
      'train', data_dir=str(tmp_path / 'd'), source_dir=str(folder)
    )
  assert _no_prepared_dataset(tmp_path / 'd')


@pytest.mark.parametrize('kind', ['folder', 'tar'])
def test_incomplete_class_names_the_class(tmp_path, kind):
  classes = _fake_ilsvrc()
  wnid = ALL_WNIDS[-1]  # Test class; its list needs image #5.
  del classes[wnid][f'{wnid}_150.JPEG']
  if kind == 'folder':
    source = write_folder(tmp_path / 'src', classes)
  else:
    source = write_tar(tmp_path / 'src', classes).parent
  with pytest.raises(
    miniimagenet.MiniImageNetError, match=f'{wnid} has 4 images.*needs image #5'
  ):
    miniimagenet.load(
      'train', data_dir=str(tmp_path / 'd'), source_dir=str(source)
    )
  assert _no_prepared_dataset(tmp_path / 'd')


def test_truncated_tar_raises_and_is_not_cached(tmp_path):
  path = write_tar(tmp_path / 'src', _fake_ilsvrc())
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(miniimagenet.MiniImageNetError, match='truncated'):
    miniimagenet.load(
      'train', data_dir=str(tmp_path / 'd'), source_dir=str(path.parent)
    )
  assert _no_prepared_dataset(tmp_path / 'd')


def test_corrupt_jpeg_midway_leaves_no_cache_and_next_load_rebuilds(tmp_path):
  classes = _fake_ilsvrc()
  wnid = ALL_WNIDS[-1]  # The last class written.
  name = f'{wnid}_{NUMERIC_KS[0]}.JPEG'
  good = classes[wnid][name]
  classes[wnid][name] = good[:40]
  folder = write_folder(tmp_path / 'ilsvrc', classes)
  data_dir = str(tmp_path / 'd')
  with pytest.raises(
    miniimagenet.MiniImageNetError,
    match=f'Cannot decode .*{name}.*class {wnid}',
  ):
    miniimagenet.load('train', data_dir=data_dir, source_dir=str(folder))
  assert _no_prepared_dataset(data_dir)
  assert not list(Path(data_dir).rglob('*.array_record*'))
  (folder / wnid / name).write_bytes(good)
  data = miniimagenet.load('test', data_dir=data_dir, source_dir=str(folder))
  assert data.images.shape == (1, 2, 84, 84, 3)


def test_truncated_pickle_raises(tmp_path):
  source = write_pickles(tmp_path / 'p', fake_pickles())
  path = source / miniimagenet_tfds.PICKLE_NAMES['val']
  path.write_bytes(path.read_bytes()[:1000])
  with pytest.raises(
    miniimagenet.MiniImageNetError,
    match=r'cache-val\.pkl is not a readable pickle',
  ):
    miniimagenet.load(
      'train', data_dir=str(tmp_path / 'd'), source_dir=str(source)
    )
  assert _no_prepared_dataset(tmp_path / 'd')


def test_pickle_wrong_shape_and_count(tmp_path):
  content = fake_pickles()
  content['train']['image_data'] = content['train']['image_data'][:, :80]
  source = write_pickles(tmp_path / 'p', content)
  with pytest.raises(
    miniimagenet.MiniImageNetError,
    match=r'uint8 \[N, 84, 84, 3\], got uint8 \[6, 80, 84, 3\]',
  ):
    miniimagenet.load(
      'train', data_dir=str(tmp_path / 'd'), source_dir=str(source)
    )
  content = fake_pickles()
  wnid = ALL_WNIDS[1]
  content['train']['class_dict'][wnid].pop()
  source = write_pickles(tmp_path / 'q', content)
  with pytest.raises(
    miniimagenet.MiniImageNetError,
    match=f'class {wnid} has 1 images, the split list 2',
  ):
    miniimagenet.load(
      'train', data_dir=str(tmp_path / 'e'), source_dir=str(source)
    )


def test_partial_pickles_and_pickles_at_other_size(tmp_path):
  source = write_pickles(tmp_path / 'p', fake_pickles())
  with pytest.raises(
    miniimagenet.MiniImageNetError, match='needs the ILSVRC-2012 images'
  ):
    miniimagenet.load(
      'train',
      image_size=32,
      data_dir=str(tmp_path / 'd'),
      source_dir=str(source),
    )
  (source / miniimagenet_tfds.PICKLE_NAMES['test']).unlink()
  with pytest.raises(miniimagenet.MiniImageNetError, match='put all three'):
    miniimagenet.load(
      'train', data_dir=str(tmp_path / 'd'), source_dir=str(source)
    )


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'split': 'valid'}, 'Unknown split'),
    ({'scheme': 'vinyals'}, "'ravi'"),
    ({'image_size': 0}, 'positive int'),
    ({'image_size': True}, 'positive int'),
  ],
)
def test_bad_arguments(kwargs, message):
  with pytest.raises(miniimagenet.MiniImageNetError, match=message):
    miniimagenet.load(**kwargs)


def test_errors_are_value_errors():
  assert issubclass(miniimagenet.MiniImageNetError, ValueError)


def test_builder_alone_reads_the_tfds_manual_dir(tmp_path):
  import tensorflow_datasets as tfds

  write_pickles(tmp_path / 'manual', fake_pickles())
  builder = miniimagenet_tfds.JaxmetaMiniImageNet(
    data_dir=str(tmp_path / 'd'), config='pickles84', file_format='array_record'
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=str(tmp_path / 'manual')
    )
  )
  assert len(builder.as_data_source()['train']) == len(LISTS['train'])
  wrong = miniimagenet_tfds.JaxmetaMiniImageNet(
    data_dir=str(tmp_path / 'e'), config='ilsvrc84', file_format='array_record'
  )
  with pytest.raises(miniimagenet.MiniImageNetError, match='holds pickles'):
    wrong.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path / 'manual')
      )
    )
