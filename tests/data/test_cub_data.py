"""Tests of CUB-200-2011 on a tiny synthetic copy in the real layout: the 200
real class folders, 2 to 4 JPEGs each, as the tgz and as its folder."""

import io
import json
from pathlib import Path
import tarfile

import numpy as np
from PIL import Image
import pytest

from jaxmeta.data import cub
from jaxmeta.data import cub_tfds
from jaxmeta.data import registry
from support import cub_files

CUBError = cub.CUBError


@pytest.fixture(autouse=True)
def no_source_in_env(monkeypatch):
  monkeypatch.delenv(cub.SOURCE_ENV, raising=False)


@pytest.fixture(scope='module')
def fake():
  """`(files, classes)` of `cub_files.fake_cub`, made once."""
  return cub_files.fake_cub()


def _no_prepared_dataset(data_dir):
  return not list(Path(data_dir).rglob('dataset_info.json'))


def _expected(files, classes, name, size=84):
  """A class's images as PIL makes them from the files written: RGB, the
  whole image resized with LANCZOS, in image-id order."""
  out = []
  for path in classes[name]:
    with Image.open(io.BytesIO(files[f'images/{path}'])) as image:
      image = image.convert('RGB').resize((size, size), Image.LANCZOS)
      out.append(np.asarray(image))
  return np.stack(out)


def _one_line_error(match, load, *args, **kwargs):
  with pytest.raises(CUBError, match=match) as raised:
    load(*args, **kwargs)
  assert '\n' not in str(raised.value)
  return str(raised.value)


def test_shipped_lists_are_chens_rule_over_the_numbered_classes():
  lists = {s: cub_tfds.read_split_list(s) for s in registry.SPLITS}
  assert {s: len(v) for s, v in lists.items()} == {
    'train': 100,
    'val': 50,
    'test': 50,
  }
  names = sorted(n for v in lists.values() for n in v)
  assert [int(n.split('.')[0]) for n in names] == list(range(1, 201))
  for i, name in enumerate(names):
    rule = 'train' if i % 2 == 0 else 'val' if i % 4 == 1 else 'test'
    assert name in lists[rule], (i, name)
  for classes in lists.values():
    assert classes == sorted(classes)  # Numbered order.
  assert lists['val'][0] == '002.Laysan_Albatross'
  assert lists['test'][-1] == '200.Common_Yellowthroat'


def test_registered():
  assert registry.DATASETS['cub'] is cub.load


def _source(kind, tmp_path, files):
  """`source_dir` of each accepted form."""
  if kind.startswith('tgz'):
    path = cub_files.write_tgz(tmp_path / 'src', files)
    return path if kind == 'tgz_itself' else path.parent
  root = cub_files.write_folder(tmp_path / 'src', files)
  return root if kind == 'folder_itself' else root.parent


@pytest.mark.parametrize(
  'kind', ['tgz', 'tgz_itself', 'folder', 'folder_itself']
)
def test_every_source_form_end_to_end(tmp_path, fake, kind):
  files, classes = fake
  source = _source(kind, tmp_path, files)
  for split in registry.SPLITS:
    data = cub.load(split, data_dir=str(tmp_path / 'd'), source_dir=str(source))
    names = cub_files.shipped_split(split)
    assert data.class_names == tuple(names)
    all_names = cub_files.class_names()
    counts = [cub_files.per_class(all_names.index(n)) for n in names]
    np.testing.assert_array_equal(data.counts, counts)
    assert data.images.dtype == np.uint8
    assert data.images.shape == (len(names), max(counts), 84, 84, 3)
    for c, name in enumerate(names):
      expected = _expected(files, classes, name)
      np.testing.assert_array_equal(data.images[c, : counts[c]], expected)
      assert not data.images[c, counts[c] :].any()  # Padding: zeros.


def test_the_grey_and_cmyk_jpegs_are_read_as_rgb(tmp_path, fake):
  files, classes = fake
  names = cub_files.class_names()
  for (c, k), mode in cub_files.MODES.items():
    with Image.open(io.BytesIO(files[f'images/{classes[names[c]][k]}'])) as f:
      assert f.mode == mode  # Exact pixels: test_every_source_form_...
  root = cub_files.write_folder(tmp_path / 'src', files)
  data = cub.load('val', data_dir=str(tmp_path / 'd'), source_dir=str(root))
  assert data.class_names[0] == names[1]  # Its first image is grey.
  grey = data.images[0, 0].astype(int)
  assert (grey == grey[..., :1]).all() and grey.std() > 0


def test_image_size_env_var_manual_dir_and_cache_alone(tmp_path, fake):
  files, classes = fake
  tgz = cub_files.write_tgz(tmp_path / 'env', files)
  name = cub_files.shipped_split('test')[0]
  expected = _expected(files, classes, name, size=32)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(cub.SOURCE_ENV, str(tgz.parent))
    data = cub.load('test', image_size=32, data_dir=str(tmp_path / 'a'))
  np.testing.assert_array_equal(data.images[0, : len(expected)], expected)
  assert (tmp_path / 'a' / 'jaxmeta_cub' / 'whole32').is_dir()
  cached = cub.load('test', image_size=32, data_dir=str(tmp_path / 'a'))
  np.testing.assert_array_equal(cached.images, data.images)
  cub_files.write_folder(tmp_path / 'b' / 'downloads' / 'manual', files)
  data = cub.load('test', image_size=32, data_dir=str(tmp_path / 'b'))
  np.testing.assert_array_equal(data.images[0, : len(expected)], expected)


def test_missing_download_says_what_to_bring(tmp_path):
  message = _one_line_error(
    r'no CUB_200_2011\.tgz or CUB_200_2011/ in .*empty',
    cub.load,
    'train',
    data_dir=str(tmp_path / 'd'),
    source_dir=str(tmp_path / 'empty'),
  )
  assert 'Fix: download CUB_200_2011.tgz (1.1 GB' in message


def test_truncated_tgz_names_the_file_and_leaves_no_cache(tmp_path, fake):
  path = cub_files.write_tgz(tmp_path / 'src', fake[0])
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  _one_line_error(
    f'{path} is not a readable tgz \\(truncated',
    cub.load,
    'train',
    data_dir=str(tmp_path / 'd'),
    source_dir=str(path),
  )
  assert _no_prepared_dataset(tmp_path / 'd')


@pytest.mark.parametrize('kind', ['tgz', 'folder'])
def test_undecodable_image_names_the_file_and_next_load_rebuilds(
  tmp_path, fake, kind
):
  files, classes = dict(fake[0]), fake[1]
  name = cub_files.shipped_split('test')[-1]  # The last class written.
  path = f'images/{classes[name][1]}'
  good, files[path] = files[path], files[path][:60]
  source = _source(kind, tmp_path, files)
  data_dir = str(tmp_path / 'd')
  _one_line_error(
    f'Cannot decode .*{classes[name][1]} \\(class {name}\\)',
    cub.load,
    'train',
    data_dir=data_dir,
    source_dir=str(source),
  )
  assert _no_prepared_dataset(data_dir)
  assert not list(Path(data_dir).rglob('*.array_record*'))
  files[path] = good
  source = _source(kind, tmp_path / 'fixed', files)
  data = cub.load('test', data_dir=data_dir, source_dir=str(source))
  assert data.images.shape[0] == 50


@pytest.mark.parametrize('kind', ['tgz', 'folder'])
def test_missing_class_folder_or_image_names_it(tmp_path, fake, kind):
  files, classes = fake
  name = cub_files.shipped_split('val')[3]
  folder = f'images/{name}/'
  without_class = {p: v for p, v in files.items() if not p.startswith(folder)}
  _one_line_error(
    f'Class {name} of the val split is missing: no .*{folder} ',
    cub.load,
    'test',
    data_dir=str(tmp_path / 'd'),
    source_dir=str(_source(kind, tmp_path / 'a', without_class)),
  )
  assert _no_prepared_dataset(tmp_path / 'd')
  lacking = f'images/{classes[name][-1]}'
  without_image = {p: v for p, v in files.items() if p != lacking}
  _one_line_error(
    f'Class {name} of the val split is incomplete: no .*{lacking} ',
    cub.load,
    'val',
    data_dir=str(tmp_path / 'd'),
    source_dir=str(_source(kind, tmp_path / 'b', without_image)),
  )
  assert _no_prepared_dataset(tmp_path / 'd')


def test_split_list_class_absent_from_the_source(tmp_path, fake, monkeypatch):
  lists = tmp_path / 'lists'
  lists.mkdir()
  for split in registry.SPLITS:
    names = cub_files.shipped_split(split)
    if split == 'test':
      names = names + ['201.Dodo']
    (lists / f'{split}.json').write_text(json.dumps(names))
  monkeypatch.setattr(cub_tfds, 'SPLITS_DIR', lists)
  root = cub_files.write_folder(tmp_path / 'src', fake[0])
  _one_line_error(
    r'Class 201\.Dodo of the test split is missing: .*images\.txt lists no',
    cub.load,
    'train',
    data_dir=str(tmp_path / 'd'),
    source_dir=str(root),
  )


def test_malformed_or_inconsistent_lists_name_the_line(tmp_path, fake):
  files = dict(fake[0])
  files['image_class_labels.txt'] = b'1 1\n2 two classes\n'
  root = cub_files.write_folder(tmp_path / 'a', files)
  _one_line_error(
    r'image_class_labels\.txt:2: expected "<id> <value>"',
    cub.load,
    'train',
    data_dir=str(tmp_path / 'd'),
    source_dir=str(root),
  )
  labels = fake[0]['image_class_labels.txt']
  files['image_class_labels.txt'] = b'1 2' + labels[len(b'1 1') :]
  root = cub_files.write_folder(tmp_path / 'b', files)
  _one_line_error(
    r'image 1 \(001\.Black_footed_Albatross/.*\) has no class',
    cub.load,
    'train',
    data_dir=str(tmp_path / 'd'),
    source_dir=str(root),
  )


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'split': 'novel'}, 'Unknown split'),
    ({'scheme': 'hilliard'}, "'chen'"),
    ({'image_size': 0}, 'positive int'),
  ],
)
def test_bad_arguments(kwargs, message):
  with pytest.raises(CUBError, match=message):
    cub.load(**kwargs)


def test_errors_are_data_errors():
  assert issubclass(CUBError, registry.DataError)
  assert issubclass(CUBError, ValueError)


def test_builder_alone_reads_the_tfds_manual_dir(tmp_path, fake):
  import tensorflow_datasets as tfds

  cub_files.write_tgz(tmp_path / 'manual', fake[0])
  builder = cub_tfds.JaxmetaCUB(data_dir=str(tmp_path / 'd'))
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=str(tmp_path / 'manual')
    )
  )
  source = builder.as_data_source()['val']
  assert len(source) == 50
  names = cub_files.class_names()
  last = names.index(cub_files.shipped_split('val')[-1])
  first_id = 1 + sum(cub_files.per_class(c) for c in range(last))
  (record,) = [
    source[i]
    for i in range(50)
    if source[i]['class_name'] == names[last].encode()
  ]
  assert record['image_ids'].tolist() == list(
    range(first_id, first_id + cub_files.per_class(last))
  )


def test_tgz_members_may_start_with_dot_slash(tmp_path, fake):
  path = tmp_path / 'src' / cub_tfds.TGZ_NAME
  path.parent.mkdir()
  with tarfile.open(path, 'w:gz') as archive:
    for name, data in fake[0].items():
      info = tarfile.TarInfo(f'./CUB_200_2011/{name}')
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  data = cub.load('val', data_dir=str(tmp_path / 'd'), source_dir=str(path))
  assert data.counts.sum() == sum(
    cub_files.per_class(i) for i in range(1, 200, 4)
  )


def test_a_cache_of_other_classes_is_refused(tmp_path, fake, monkeypatch):
  root = cub_files.write_folder(tmp_path / 'src', fake[0])
  cub.load('val', data_dir=str(tmp_path / 'd'), source_dir=str(root))
  lists = tmp_path / 'lists'
  lists.mkdir()
  for split in registry.SPLITS:
    names = cub_files.shipped_split(split)
    if split == 'val':  # Same size, one class another.
      names = names[:-1] + cub_files.shipped_split('test')[:1]
    (lists / f'{split}.json').write_text(json.dumps(names))
  monkeypatch.setattr(cub_tfds, 'SPLITS_DIR', lists)
  _one_line_error(
    r'holds a class with images \(\d, 84, 84, 3\) that is not one of the '
    r'val split, of images \(.n., 84, 84, 3\)\. Fix: delete',
    cub.load,
    'val',
    data_dir=str(tmp_path / 'd'),
  )
