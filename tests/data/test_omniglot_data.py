"""Tests of the Omniglot data: split sizes, disjointness, pixels, errors."""

import hashlib
import io
from pathlib import Path
import random
import os
import re
import shutil
import time
import zipfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from jaxmeta.data import omniglot
from jaxmeta.data import omniglot_tfds
from support import REPO

SOURCE_DIR = REPO / 'data' / 'omniglot'
SPLITS_DIR = REPO / 'jaxmeta' / 'data' / 'splits' / 'omniglot' / 'vinyals'
SHARED_DIR = REPO.parent / 'shared' / 'data' / 'omniglot'
ZIPS = ('images_background.zip', 'images_evaluation.zip')

# (train, val, test) classes with the scheme's default rotations.
EXPECTED_CLASSES = {
  'vinyals': (4112, 688, 1692),
  'maml': (1100 * 4, 100, 423),
  'lake': ((964 - 100) * 4, 100, 659),
}
# (train, val, test) characters.
EXPECTED_CHARACTERS = {
  'vinyals': (1028, 172, 423),
  'maml': (1100, 100, 423),
  'lake': (864, 100, 659),
}


def _zip_characters(name):
  """Sorted 'Alphabet/characterNN' of one shipped zip, read independently."""
  with zipfile.ZipFile(SOURCE_DIR / name) as archive:
    return sorted(
      {
        '/'.join(n.split('/')[1:3])
        for n in archive.namelist()
        if n.endswith('.png')
      }
    )


def _characters(class_names):
  return {name.rsplit('/', 1)[0] for name in class_names}


def _no_prepared_dataset(data_dir):
  return not list(Path(data_dir).rglob('dataset_info.json'))


# Shipped files.


@pytest.mark.parametrize('folder', [SOURCE_DIR, SPLITS_DIR])
def test_shipped_files_match_their_sha256sums(folder):
  for line in (folder / 'SHA256SUMS').read_text().splitlines():
    digest, name = line.split()
    actual = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    assert actual == digest, name


@pytest.mark.skipif(not SHARED_DIR.is_dir(), reason='../shared not present')
def test_shipped_zips_match_shared_sha256sums():
  shared = dict(
    reversed(line.split())
    for line in (SHARED_DIR / 'SHA256SUMS').read_text().splitlines()
  )
  for name in ZIPS + (
    'splits/vinyals/train.txt',
    'splits/vinyals/trainval.txt',
    'splits/vinyals/test.txt',
    'LICENSE',
  ):
    path = (
      SPLITS_DIR / Path(name).name
      if name.startswith('splits/')
      else SOURCE_DIR / name
    )
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    assert actual == shared[name], name


def test_builder_registers_official_checksums():
  infos = omniglot_tfds.JaxmetaOmniglot.url_infos
  assert infos[omniglot_tfds.URLS['background']].checksum == (
    'ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640'
  )
  assert infos[omniglot_tfds.URLS['evaluation']].checksum == (
    '1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee'
  )
  assert infos[omniglot_tfds.URLS['background']].size == 9464212
  assert infos[omniglot_tfds.URLS['evaluation']].size == 6462886


# Splits.


@pytest.mark.parametrize('scheme', omniglot.SPLIT_SCHEMES)
def test_split_sizes_and_disjointness(omniglot_data_dir, scheme):
  splits = {
    s: omniglot.load(s, scheme, data_dir=omniglot_data_dir)
    for s in omniglot.SPLITS
  }
  for split, expected in zip(omniglot.SPLITS, EXPECTED_CLASSES[scheme]):
    images, names, counts = splits[split]
    assert counts is None  # Every class has its 20 drawings.
    assert images.shape == (expected, 20, 28, 28, 1)
    assert images.dtype == np.uint8
    assert len(names) == expected == len(set(names))
  characters = {s: _characters(c.class_names) for s, c in splits.items()}
  assert (
    tuple(len(characters[s]) for s in omniglot.SPLITS)
    == (EXPECTED_CHARACTERS[scheme])
  )
  assert not characters['train'] & characters['val']
  assert not characters['train'] & characters['test']
  assert not characters['val'] & characters['test']
  everything = _zip_characters(ZIPS[0]) + _zip_characters(ZIPS[1])
  assert set.union(*characters.values()) == set(everything)


@pytest.mark.parametrize(
  'scheme,split,rotations,classes',
  [
    ('vinyals', 'train', False, 1028),
    ('vinyals', 'val', True, 688),
    ('maml', 'train', False, 1100),
    ('maml', 'test', True, 423 * 4),
    ('lake', 'val', True, 400),
    ('lake', 'train', False, 864),
  ],
)
def test_forced_rotations(omniglot_data_dir, scheme, split, rotations, classes):
  images, names, _ = omniglot.load(
    split, scheme, rotations=rotations, data_dir=omniglot_data_dir
  )
  assert images.shape[0] == len(names) == classes
  rotation_names = {name.rsplit('/', 1)[1] for name in names}
  assert rotation_names == (
    {'rot000', 'rot090', 'rot180', 'rot270'} if rotations else {'rot000'}
  )


def test_vinyals_classes_are_the_list_files(omniglot_data_dir):
  lines = {
    name: (SPLITS_DIR / f'{name}.txt').read_text().split()
    for name in ('train', 'trainval', 'test')
  }
  expected = {
    'train': lines['train'],
    'val': [c for c in lines['trainval'] if c not in set(lines['train'])],
    'test': lines['test'],
  }
  for split in omniglot.SPLITS:
    names = omniglot.load(split, 'vinyals', data_dir=omniglot_data_dir)[1]
    assert list(names) == expected[split]


def test_maml_and_lake_splits_follow_the_documented_procedure(
  omniglot_data_dir,
):
  background = _zip_characters(ZIPS[0])
  evaluation = _zip_characters(ZIPS[1])
  shuffled = sorted(background + evaluation)
  random.Random(1).shuffle(shuffled)
  maml = {
    s: _characters(
      omniglot.load(s, 'maml', data_dir=omniglot_data_dir).class_names
    )
    for s in omniglot.SPLITS
  }
  assert maml['train'] == set(shuffled[:1100])
  assert maml['val'] == set(shuffled[1100:1200])
  assert maml['test'] == set(shuffled[1200:])

  shuffled = list(background)
  random.Random(0).shuffle(shuffled)
  lake = {
    s: _characters(
      omniglot.load(s, 'lake', data_dir=omniglot_data_dir).class_names
    )
    for s in omniglot.SPLITS
  }
  assert lake['val'] == set(shuffled[:100])
  assert lake['train'] == set(shuffled[100:])
  assert lake['test'] == set(evaluation)


def test_env_var_sets_the_data_dir(omniglot_data_dir, monkeypatch):
  monkeypatch.setenv('JAXMETA_DATA_DIR', omniglot_data_dir)
  assert omniglot.load('val', 'lake').images.shape == (100, 20, 28, 28, 1)


# Pixels.


def _expected_image(member, size=28):
  """The documented preprocessing, straight from the PNG with PIL."""
  with zipfile.ZipFile(SOURCE_DIR / 'images_evaluation.zip') as archive:
    png = Image.open(io.BytesIO(archive.read(member)))
    png.load()
  assert png.size == (105, 105)
  ink = np.where(np.array(png) > 0, 0.0, 1.0).astype(np.float32)  # Strokes=1.
  small = Image.fromarray(ink, mode='F').resize(
    (size, size), Image.Resampling.BOX
  )
  return np.round(np.array(small) * 255).astype(np.uint8)


def test_known_image_round_trips(omniglot_data_dir):
  with zipfile.ZipFile(SOURCE_DIR / 'images_evaluation.zip') as archive:
    members = sorted(
      n
      for n in archive.namelist()
      if re.fullmatch(
        r'images_evaluation/Angelic/character01/\d{4}_\d{2}\.png', n
      )
    )
  assert len(members) == 20 and members[0].endswith('_01.png')
  images, names, _ = omniglot.load(
    'test', 'lake', rotations=False, data_dir=omniglot_data_dir
  )
  index = names.index('Angelic/character01/rot000')
  for drawer in (0, 19):
    expected = _expected_image(members[drawer])
    np.testing.assert_array_equal(images[index, drawer, :, :, 0], expected)
  # Strokes are bright on a dark background.
  assert 0 < images[index].mean() < 64
  assert images[index].max() == 255


def test_rotations_are_counter_clockwise(omniglot_data_dir):
  images, names, _ = omniglot.load(
    'train', 'vinyals', data_dir=omniglot_data_dir
  )
  base = names.index('Angelic/character01/rot000')
  upright = images[base, 3, :, :, 0]
  for k in range(4):
    assert names[base + k] == f'Angelic/character01/rot{90 * k:03d}'
    rotated = images[base + k, 3, :, :, 0]
    # Counter-clockwise: the top row becomes the left column, reversed.
    manual = upright
    for _ in range(k):
      manual = np.array(
        [[manual[c, -1 - r] for c in range(28)] for r in range(28)]
      )
    np.testing.assert_array_equal(rotated, manual)


# Errors.


@pytest.mark.parametrize(
  'kwargs,message',
  [
    (dict(split='validation'), 'Unknown split'),
    (dict(scheme='ravi'), 'Unknown split scheme'),
    (dict(image_size=0), 'image_size'),
    (dict(image_size=28.0), 'image_size'),
    (dict(resample='bilinear'), 'resample must be one of'),
  ],
)
def test_bad_arguments_raise(kwargs, message):
  with pytest.raises(omniglot.OmniglotError, match=message):
    omniglot.load(**kwargs)


def test_bad_input_errors_are_value_errors():
  assert issubclass(omniglot.OmniglotError, ValueError)


def _copy_zips(tmp_path):
  source = tmp_path / 'source'
  source.mkdir()
  for name in ZIPS:
    shutil.copy(SOURCE_DIR / name, source / name)
  return source


def _assert_load_fails(source, tmp_path, match):
  data_dir = tmp_path / 'tfds'
  for _ in range(2):  # The failure is not cached either.
    with pytest.raises(omniglot.OmniglotError, match=match):
      omniglot.load('train', data_dir=str(data_dir), source_dir=str(source))
  assert _no_prepared_dataset(data_dir)


def test_truncated_zip_raises_and_is_not_cached(tmp_path):
  source = _copy_zips(tmp_path)
  path = source / 'images_evaluation.zip'
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  _assert_load_fails(source, tmp_path, 'not a readable zip')


def test_corrupted_member_raises(tmp_path):
  source = _copy_zips(tmp_path)
  path = source / 'images_background.zip'
  data = bytearray(path.read_bytes())
  with zipfile.ZipFile(path) as archive:
    info = archive.infolist()[1000]
  name_length, extra_length = np.frombuffer(
    data[info.header_offset + 26 : info.header_offset + 30], '<u2'
  )
  start = info.header_offset + 30 + int(name_length) + int(extra_length) + 10
  data[start : start + 20] = bytes(20)  # Zero 20 bytes of one PNG's data.
  path.write_bytes(bytes(data))
  _assert_load_fails(source, tmp_path, 'corrupted')


def test_sha256sums_mismatch_raises(tmp_path):
  source = _copy_zips(tmp_path)
  shutil.copy(SOURCE_DIR / 'SHA256SUMS', source / 'SHA256SUMS')
  with zipfile.ZipFile(source / 'images_evaluation.zip', 'a') as archive:
    archive.writestr('images_evaluation/README.txt', 'extra')
  _assert_load_fails(source, tmp_path, 'sha256')


def test_missing_zip_raises(tmp_path):
  source = _copy_zips(tmp_path)
  (source / 'images_evaluation.zip').unlink()
  _assert_load_fails(source, tmp_path, 'Missing Omniglot zip')


def test_wrong_layout_inside_zip_raises(tmp_path):
  source = _copy_zips(tmp_path)
  with zipfile.ZipFile(SOURCE_DIR / 'images_background.zip') as archive:
    name = next(n for n in archive.namelist() if n.endswith('.png'))
    png = archive.read(name)
  with zipfile.ZipFile(source / 'images_background.zip', 'w') as archive:
    # Missing the top-level images_background/ folder.
    archive.writestr('Angelic/character01/0001_01.png', png)
  _assert_load_fails(source, tmp_path, 'Unexpected file')


def test_missing_characters_raise(tmp_path):
  source = _copy_zips(tmp_path)
  with zipfile.ZipFile(SOURCE_DIR / 'images_background.zip') as archive:
    names = [n for n in archive.namelist() if n.endswith('.png')][:40]
    pngs = {n: archive.read(n) for n in names}
  with zipfile.ZipFile(source / 'images_background.zip', 'w') as archive:
    for name, png in pngs.items():
      archive.writestr(name, png)
  _assert_load_fails(source, tmp_path, 'holds 2 characters')


def test_extracted_folders_instead_of_zips_raise(tmp_path):
  source = tmp_path / 'source'
  (source / 'images_background' / 'Angelic').mkdir(parents=True)
  _assert_load_fails(source, tmp_path, 'extracted folders')


def _nowhere_else(monkeypatch):
  """No zips in $JAXMETA_OMNIGLOT_DIR or the checkout for this test."""
  monkeypatch.delenv(omniglot_tfds.SOURCE_DIR_ENV, raising=False)
  monkeypatch.setattr(omniglot_tfds, 'DEFAULT_SOURCE_DIR', None)


def test_absent_zips_are_downloaded_from_the_official_urls(
  tmp_path, monkeypatch
):
  _nowhere_else(monkeypatch)
  monkeypatch.setattr(omniglot_tfds, 'can_reach', lambda url: True)
  requested = []

  def offline_download(self, urls):
    requested.append(urls)
    raise ConnectionError('offline')

  monkeypatch.setattr(
    tfds.download.DownloadManager, 'download', offline_download
  )
  empty = tmp_path / 'empty'
  empty.mkdir()
  _assert_load_fails(empty, tmp_path, 'downloading them .* failed')
  assert requested[0] == omniglot_tfds.URLS


def test_other_image_sizes_are_builder_configs(tmp_path):
  assert omniglot_tfds.config_for_size(28).name == 'size28'
  assert omniglot_tfds.config_for_size(84).name == 'size84'
  builder = omniglot_tfds.JaxmetaOmniglot(
    config=omniglot_tfds.config_for_size(14), data_dir=str(tmp_path)
  )
  assert builder.info.features['image'].shape == (14, 14, 1)
  with zipfile.ZipFile(SOURCE_DIR / 'images_evaluation.zip') as archive:
    name = next(n for n in archive.namelist() if n.endswith('.png'))
    image = omniglot_tfds.preprocess(archive.read(name), 84)
  assert image.shape == (84, 84, 1) and image.dtype == np.uint8
  np.testing.assert_array_equal(image[:, :, 0], _expected_image(name, 84))


def test_nearest_resampling_is_that_of_the_reference_code(tmp_path):
  config = omniglot_tfds.config_for_size(28, 'nearest')
  assert (config.name, config.resample) == ('size28_nearest', 'nearest')
  with zipfile.ZipFile(SOURCE_DIR / 'images_evaluation.zip') as archive:
    names = [n for n in archive.namelist() if n.endswith('.png')][:20]
    for name in names:
      png = archive.read(name)
      image = omniglot_tfds.preprocess(png, 28, 'nearest')
      # The Prototypical Networks reference: PIL's default resize of the
      # 1-bit image (always NEAREST), then `1 - x`.
      ink = Image.open(io.BytesIO(png)).resize((28, 28))
      expected = (1 - np.array(ink, np.float32)) * 255
      np.testing.assert_array_equal(image[:, :, 0], expected)
      assert set(np.unique(image)) <= {0, 255}


def test_offline_without_zips_fails_in_seconds(tmp_path, monkeypatch):
  # Before: no probe, and TFDS's download retries took ~3.5 minutes.
  _nowhere_else(monkeypatch)
  # A port on which nothing listens: the probe is refused at once, and the
  # test touches no network.
  monkeypatch.setattr(
    omniglot_tfds,
    'URLS',
    {
      s: f'http://127.0.0.1:9/{name}'
      for s, name in omniglot_tfds.ZIP_NAMES.items()
    },
  )

  def download(self, urls):
    raise AssertionError('download attempted although the host is down')

  monkeypatch.setattr(tfds.download.DownloadManager, 'download', download)
  empty = tmp_path / 'empty'
  empty.mkdir()
  start = time.monotonic()
  with pytest.raises(
    omniglot.OmniglotError,
    match=r'cannot be reached.*JAXMETA_OMNIGLOT_DIR.*'
    r'downloads/manual',
  ):
    omniglot.load(
      'train', 'lake', data_dir=str(tmp_path / 'tfds'), source_dir=str(empty)
    )
  assert time.monotonic() - start < 10


def test_can_reach_answers_quickly_for_a_refused_port():
  start = time.monotonic()
  assert not omniglot_tfds.can_reach('http://127.0.0.1:9/x.zip', timeout=3)
  assert time.monotonic() - start < 5


def test_zips_are_looked_for_in_the_documented_order(tmp_path, monkeypatch):
  monkeypatch.setenv(omniglot_tfds.SOURCE_DIR_ENV, str(tmp_path / 'env'))
  monkeypatch.setattr(omniglot_tfds, 'DEFAULT_SOURCE_DIR', tmp_path / 'repo')
  folders = [
    f
    for _, f in omniglot_tfds.source_dirs(tmp_path / 'arg', tmp_path / 'manual')
  ]
  assert folders == [
    tmp_path / 'arg',
    tmp_path / 'env',
    tmp_path / 'repo',
    tmp_path / 'manual',
  ]
  _nowhere_else(monkeypatch)
  assert [f for _, f in omniglot_tfds.source_dirs(None, tmp_path / 'm')] == [
    tmp_path / 'm'
  ]


def test_zips_in_the_env_var_folder_are_used(tmp_path, monkeypatch):
  # The search stops at the first folder holding both zips; a bad copy there
  # is reported, proving it was the one read.
  _nowhere_else(monkeypatch)
  source = tmp_path / 'env'
  source.mkdir()
  for name in ZIPS:
    (source / name).write_bytes(b'not a zip')
  monkeypatch.setenv(omniglot_tfds.SOURCE_DIR_ENV, str(source))
  with pytest.raises(
    omniglot.OmniglotError,
    match=re.escape(str(source / 'images_background.zip')),
  ):
    omniglot.load('train', 'lake', data_dir=str(tmp_path / 'tfds'))


def test_zips_in_the_tfds_manual_dir_are_used(tmp_path, monkeypatch):
  _nowhere_else(monkeypatch)
  manual = tmp_path / 'tfds' / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  for name in ZIPS:
    (manual / name).write_bytes(b'not a zip')
  with pytest.raises(
    omniglot.OmniglotError,
    match=re.escape(str(manual / 'images_background.zip')),
  ):
    omniglot.load('train', 'lake', data_dir=str(tmp_path / 'tfds'))


def test_vinyals_lists_are_package_data_read_without_a_checkout(monkeypatch):
  _nowhere_else(monkeypatch)
  assert SPLITS_DIR.parent.parent.parent == Path(omniglot.__file__).parent
  sizes = [
    len(omniglot._split_characters('vinyals', s, None, None))
    for s in omniglot.SPLITS
  ]
  assert sizes == list(EXPECTED_CHARACTERS['vinyals'])


def _write_vinyals_lists(folder, train, trainval, test):
  lists = folder / 'splits' / 'vinyals'
  lists.mkdir(parents=True)
  for name, characters in (
    ('train', train),
    ('trainval', trainval),
    ('test', test),
  ):
    (lists / f'{name}.txt').write_text(
      ''.join(f'{c}/rot{r:03d}\n' for c in characters for r in (0, 90))
    )


def test_overlapping_split_lists_are_refused(tmp_path):
  # Before: accepted, so test characters were also trained on.
  train = ['Greek/character01', 'Greek/character02']
  _write_vinyals_lists(
    tmp_path,
    train,
    train + ['Greek/character03'],
    ['Greek/character02', 'Greek/character04'],
  )
  with pytest.raises(
    omniglot.OmniglotError,
    match=r'test and train splits share 1 characters, e\.g\. '
    r"\['Greek/character02'\]",
  ):
    omniglot.load(
      'test',
      'vinyals',
      data_dir=str(tmp_path / 'tfds'),
      source_dir=str(tmp_path),
    )


def test_check_disjoint_names_the_shared_characters():
  omniglot.check_disjoint(
    {'train': ['a/c1'], 'val': ['a/c2'], 'test': ['a/c3']}, 'x'
  )
  with pytest.raises(omniglot.OmniglotError, match=r"train and val .*'a/c2'"):
    omniglot.check_disjoint(
      {'train': ['a/c1', 'a/c2'], 'val': ['a/c2'], 'test': []}, 'x'
    )


def _corrupted_copy(omniglot_data_dir, tmp_path, corrupt):
  data_dir = tmp_path / 'tfds'
  shutil.copytree(omniglot_data_dir, data_dir)
  version_dir = next(data_dir.rglob('dataset_info.json')).parent
  corrupt(version_dir)
  return data_dir, version_dir


def _truncate_record(version_dir):
  path = next(version_dir.glob('*background.array_record*'))
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage_info(version_dir):
  (version_dir / 'dataset_info.json').write_text('garbage')


@pytest.mark.parametrize('corrupt', [_truncate_record, _garbage_info])
def test_corrupted_cache_names_the_folder_to_delete(
  omniglot_data_dir, tmp_path, corrupt
):
  # Before: a raw RuntimeError from the record reader, or a protobuf
  # ParseError.
  data_dir, version_dir = _corrupted_copy(omniglot_data_dir, tmp_path, corrupt)
  with pytest.raises(
    omniglot.OmniglotError,
    match=f'cache in {re.escape(str(version_dir))} cannot be '
    'read.*delete that folder',
  ):
    omniglot.load('train', 'lake', data_dir=str(data_dir))


def test_data_dir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / 'file'
  path.write_text('')
  for data_dir in (path, path / 'below'):
    with pytest.raises(omniglot.OmniglotError, match='is a file'):
      omniglot.load('train', 'lake', data_dir=str(data_dir))


def test_read_only_data_dir_is_refused(tmp_path, monkeypatch):
  # Permissions do not bind root, so the answer of os.access is faked.
  real_access = os.access
  read_only = tmp_path / 'ro'
  read_only.mkdir()
  monkeypatch.setattr(
    os,
    'access',
    lambda p, mode, **kw: (
      False
      if Path(p) == read_only and mode & os.W_OK
      else real_access(p, mode, **kw)
    ),
  )
  with pytest.raises(omniglot.OmniglotError, match='is read-only'):
    omniglot.load('train', 'lake', data_dir=str(read_only / 'tfds'))
