"""Tests of tiered-ImageNet on tiny fake sources in the real on-disk formats."""

import io
from pathlib import Path
import pickle

import ml_collections
import numpy as np
from PIL import Image
import pytest

from experiments import train
from experiments.configs import protonet_tieredimagenet
from jaxmeta.data import registry
from jaxmeta.data import tieredimagenet
from jaxmeta.data import tieredimagenet_tfds
from support import tieredimagenet_files as files
from support.ilsvrc_files import write_folder
from support.ilsvrc_files import write_tar
from support.tieredimagenet_files import COUNTS
from support.tieredimagenet_files import SHIPPED

Error = tieredimagenet.TieredImageNetError


@pytest.fixture(autouse=True)
def tiny_lists(tmp_path_factory, monkeypatch):
  """tiered-ImageNet's split lists are the fake's `COUNTS`; no source in env."""
  folder = files.write_lists(tmp_path_factory.mktemp('lists'))
  monkeypatch.setattr(tieredimagenet_tfds, 'SPLITS_DIR', folder)
  monkeypatch.delenv(tieredimagenet.SOURCE_ENV, raising=False)


def _load(split, source, data_dir, **kwargs):
  return tieredimagenet.load(
    split, data_dir=str(data_dir), source_dir=str(source), **kwargs
  )


def _one_line_error(call, match):
  with pytest.raises(Error, match=match) as info:
    call()
  assert '\n' not in str(info.value)
  return str(info.value)


def _no_prepared_dataset(data_dir):
  return not list(Path(data_dir).rglob('dataset_info.json'))


def _check_ragged(data, split):
  """Class names, counts and zero padding of a loaded split."""
  counts = list(COUNTS[split].values())
  assert data.class_names == tuple(COUNTS[split])
  assert data.images.dtype == np.uint8
  assert data.images.shape[:2] == (len(counts), max(counts))
  np.testing.assert_array_equal(data.counts, counts)
  for c, count in enumerate(counts):
    assert not data.images[c, count:].any()


def test_shipped_lists_and_names():
  sizes = {'train': (351, 20), 'val': (97, 6), 'test': (160, 8)}
  words = tieredimagenet_tfds.read_words(SHIPPED)
  assert len(words) == 642
  seen = set()
  for split, (num_classes, num_categories) in sizes.items():
    classes = tieredimagenet_tfds.read_split_list(split, SHIPPED)
    assert list(classes) == list(files.shipped_classes(split))
    assert (len(classes), len(set(classes.values()))) == sizes[split]
    wnids = set(classes) | set(classes.values())
    assert not seen & wnids  # Classes and categories split apart.
    seen |= wnids
    assert len({words[w] for w in classes}) == num_classes  # Names unique.
  assert seen == set(words)


def test_registered():
  assert registry.DATASETS['tieredimagenet'] is tieredimagenet.load


def _pil_8x8(jpeg):
  """The reference: PIL's whole-image LANCZOS resize to 8x8, RGB."""
  with Image.open(io.BytesIO(jpeg)) as image:
    image = image.convert('RGB').resize((8, 8), Image.Resampling.LANCZOS)
    return np.asarray(image)


def test_ilsvrc_folder_every_image_in_numeric_order_of_k(tmp_path):
  classes = files.fake_ilsvrc()
  source = write_folder(tmp_path / 'ilsvrc', classes)
  for split in COUNTS:
    data = _load(split, source, tmp_path / 'd', image_size=8)
    _check_ragged(data, split)
    for c, wnid in enumerate(data.class_names):
      ks = sorted(int(n[10:-5]) for n in classes[wnid])  # nXXXXXXXX_<k>.JPEG
      for j, k in enumerate(ks):
        expected = _pil_8x8(classes[wnid][f'{wnid}_{k}.JPEG'])
        np.testing.assert_array_equal(data.images[c, j], expected)
    if split == 'train':  # Its third class is stored grayscale: R = G = B.
      assert (data.images[2, ..., 0] == data.images[2, ..., 2]).all()


def test_ilsvrc_tar_matches_the_folder(tmp_path):
  classes = files.fake_ilsvrc()
  folder = write_folder(tmp_path / 'ILSVRC' / 'train', classes)
  tar = write_tar(tmp_path / 'tar', classes)
  for split in COUNTS:
    from_folder = _load(split, folder.parent, tmp_path / 'a', image_size=8)
    from_tar = _load(split, tar.parent, tmp_path / 'b', image_size=8)
    _check_ragged(from_tar, split)
    np.testing.assert_array_equal(from_tar.images, from_folder.images)
  assert (tmp_path / 'b' / 'jaxmeta_tieredimagenet' / 'ilsvrc8').is_dir()


def _expected_ren(content, split):
  """`[classes, max count, 84, 84, 3]` from Ren et al.'s files: each class's
  images in file order, classes in split-list order."""
  images, labels = content[split]
  words = files.shipped_words()
  names = labels['label_specific_str']
  expected = np.zeros(
    (len(COUNTS[split]), max(COUNTS[split].values()), 84, 84, 3), np.uint8
  )
  for c, wnid in enumerate(COUNTS[split]):
    rows = np.flatnonzero(labels['label_specific'] == names.index(words[wnid]))
    expected[c, : len(rows)] = images[rows]
  return expected


@pytest.mark.parametrize('kind', ['pickles', 'npz', 'npz_compressed'])
def test_ren_files_exact(tmp_path, kind):
  content = files.ren_content()
  if kind == 'pickles':
    source = files.write_pickles(tmp_path / 'ren', content)
  else:
    compressed = kind == 'npz_compressed'
    source = files.write_npz(tmp_path / 'ren', content, compressed)
  words = files.shipped_words()
  for split in COUNTS:
    names = content[split][1]['label_specific_str']
    assert names != [words[w] for w in COUNTS[split]]  # Numbered otherwise.
    data = _load(split, source, tmp_path / 'd')
    _check_ragged(data, split)
    # The npz holds BGR (cv2.imdecode): loaded as the RGB originals.
    np.testing.assert_array_equal(data.images, _expected_ren(content, split))
  family = kind.split('_')[0]
  assert (tmp_path / 'd' / 'jaxmeta_tieredimagenet' / f'{family}84').is_dir()


def test_labels_pickled_with_bytes_keys_and_names(tmp_path):
  content = files.ren_content()
  source = files.write_pickles(tmp_path / 'ren', content)
  for split, (_, labels) in content.items():
    path = source / tieredimagenet_tfds.LABEL_NAMES[split]
    path.write_bytes(pickle.dumps(files.as_bytes(labels), protocol=2))
  data = _load('train', source, tmp_path / 'd')
  np.testing.assert_array_equal(data.images, _expected_ren(content, 'train'))


def test_env_var_manual_dir_and_cache_without_source(tmp_path, monkeypatch):
  content = files.ren_content()
  reference = _expected_ren(content, 'test')
  source = files.write_npz(tmp_path / 'env', content)
  monkeypatch.setenv(tieredimagenet.SOURCE_ENV, str(source))
  data = tieredimagenet.load('test', data_dir=str(tmp_path / 'a'))
  np.testing.assert_array_equal(data.images, reference)
  monkeypatch.delenv(tieredimagenet.SOURCE_ENV)
  data = tieredimagenet.load('test', data_dir=str(tmp_path / 'a'))  # Cached.
  np.testing.assert_array_equal(data.images, reference)
  _check_ragged(data, 'test')
  files.write_pickles(tmp_path / 'b' / 'downloads' / 'manual', content)
  data = tieredimagenet.load('test', data_dir=str(tmp_path / 'b'))
  np.testing.assert_array_equal(data.images, reference)


def test_builder_alone_records_the_counts(tmp_path):
  import tensorflow_datasets as tfds

  files.write_pickles(tmp_path / 'manual', files.ren_content())
  builder = tieredimagenet_tfds.JaxmetaTieredImageNet(
    data_dir=str(tmp_path / 'd'), config='pickles84'
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=str(tmp_path / 'manual')
    )
  )
  fresh = tieredimagenet_tfds.JaxmetaTieredImageNet(
    data_dir=str(tmp_path / 'd'), config='pickles84'
  )
  assert fresh.info.metadata['counts'] == COUNTS
  assert len(fresh.as_data_source()['train']) == len(COUNTS['train'])


def test_missing_source_lists_what_to_bring(tmp_path):
  _one_line_error(
    lambda: _load('train', tmp_path / 'empty', tmp_path / 'd'),
    r'not prepared.*ILSVRC2012_img_train\.tar.*_images_png\.pkl',
  )


def test_missing_class_is_one_line_naming_it(tmp_path):
  classes = files.fake_ilsvrc()
  wnid = list(COUNTS['test'])[1]
  del classes[wnid]
  folder = write_folder(tmp_path / 'ilsvrc', classes)
  _one_line_error(
    lambda: _load('train', folder, tmp_path / 'd'), f'Class {wnid} is missing'
  )
  content = files.ren_content()
  images, labels = content['val']
  keep = labels['label_specific'] != 0  # Label 0's class has no images.
  content['val'] = (
    images[keep],
    {
      **labels,
      'label_specific': labels['label_specific'][keep],
    },
  )
  words = files.shipped_words()
  wnid = {words[w]: w for w in COUNTS['val']}[labels['label_specific_str'][0]]
  source = files.write_pickles(tmp_path / 'ren', content)
  _one_line_error(
    lambda: _load('train', source, tmp_path / 'e'),
    f'val_labels.pkl has no images of class {wnid} .* of the val split',
  )
  assert _no_prepared_dataset(tmp_path / 'd')
  assert _no_prepared_dataset(tmp_path / 'e')


def test_some_of_ren_files_only(tmp_path):
  source = files.write_pickles(tmp_path / 'ren', files.ren_content())
  (source / 'test_images_png.pkl').unlink()
  _one_line_error(
    lambda: _load('train', source, tmp_path / 'd'),
    r"some of Ren et al.'s .* not \['test_images_png\.pkl'\]",
  )


@pytest.mark.parametrize(
  'name', ['val_labels.pkl', 'val_images_png.pkl', 'val_images.npz']
)
def test_truncated_file_is_one_line_naming_it(tmp_path, name):
  make = files.write_npz if name.endswith('npz') else files.write_pickles
  source = make(tmp_path / 'ren', files.ren_content())
  path = source / name
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  _one_line_error(
    lambda: _load('train', source, tmp_path / 'd'),
    f'{name} is not a readable',
  )
  assert _no_prepared_dataset(tmp_path / 'd')


def test_truncated_tar_is_one_line(tmp_path):
  path = write_tar(tmp_path / 'src', files.fake_ilsvrc())
  path.write_bytes(path.read_bytes()[:3000])
  _one_line_error(
    lambda: _load('train', path.parent, tmp_path / 'd', image_size=8),
    'ILSVRC2012_img_train.tar is not a readable tar',
  )


def test_undecodable_png_is_one_line_and_leaves_no_cache(tmp_path):
  content = files.ren_content()
  source = files.write_pickles(tmp_path / 'ren', content)
  path = source / 'test_images_png.pkl'
  pngs = pickle.loads(path.read_bytes())
  pngs[1] = pngs[1][:40]
  path.write_bytes(pickle.dumps(pngs))
  _, labels = content['test']
  words = files.shipped_words()
  name = labels['label_specific_str'][labels['label_specific'][1]]
  wnid = {words[w]: w for w in COUNTS['test']}[name]
  _one_line_error(
    lambda: _load('train', source, tmp_path / 'd'),
    f'Cannot decode .*test_images_png.pkl, item 1 \\(class {wnid}\\)',
  )
  assert _no_prepared_dataset(tmp_path / 'd')
  assert not list(Path(tmp_path / 'd').rglob('*.array_record*'))


def test_unknown_or_repeated_class_name_is_one_line(tmp_path):
  content = files.ren_content()
  labels = content['train'][1]
  labels['label_specific_str'][1] = 'tench, Tinca tinca'  # Not of train.
  source = files.write_pickles(tmp_path / 'a', content)
  _one_line_error(
    lambda: _load('train', source, tmp_path / 'd'),
    r"train_labels\.pkl: label_specific_str\[1\] = 'tench, Tinca tinca' is "
    'the name of no class of the train split',
  )
  content = files.ren_content()
  names = content['val'][1]['label_specific_str']
  names[1] = names[0]
  source = files.write_pickles(tmp_path / 'b', content)
  _one_line_error(
    lambda: _load('train', source, tmp_path / 'd'),
    r'label_specific_str\[1\] = .* names class n\d{8} a second time',
  )


def test_wrong_npz_shape_or_png_count_is_one_line(tmp_path):
  content = files.ren_content()
  source = files.write_npz(tmp_path / 'a', content)
  images = content['val'][0][:, :80]
  np.savez(source / 'val_images.npz', images=images)
  _one_line_error(
    lambda: _load('train', source, tmp_path / 'd'),
    r'val_images\.npz: images should be uint8 \[5, 84, 84, 3\].*got uint8 '
    r'\[5, 80, 84, 3\]',
  )
  source = files.write_pickles(tmp_path / 'b', content)
  path = source / 'val_images_png.pkl'
  path.write_bytes(pickle.dumps(pickle.loads(path.read_bytes())[:-1]))
  _one_line_error(
    lambda: _load('train', source, tmp_path / 'e'),
    'val_images_png.pkl should hold a list of 5 PNG files.*got 4 items',
  )


def test_ren_files_at_another_size_and_bad_arguments(tmp_path):
  source = files.write_npz(tmp_path / 'ren', files.ren_content())
  _one_line_error(
    lambda: _load('train', source, tmp_path / 'd', image_size=32),
    'needs the ILSVRC-2012 images',
  )
  for kwargs, message in (
    ({'split': 'valid'}, 'Unknown split'),
    ({'scheme': 'ravi'}, "'ren'"),
    ({'image_size': 0}, 'positive int'),
  ):
    with pytest.raises(Error, match=message):
      tieredimagenet.load(**kwargs)
  assert issubclass(Error, ValueError)


def test_protonet_preset_trains_on_ragged_classes(tmp_path):
  """The training program, end to end on the fake ILSVRC folder at 8x8; the
  train split's second class (one image) cannot fill a task of one shot and
  one query, and the sampler leaves it out."""
  source = write_folder(tmp_path / 'ilsvrc', files.fake_ilsvrc())
  config = protonet_tieredimagenet.get_config('conv4_5w1s')
  config.data.image_size = 8
  config.model = ml_collections.ConfigDict({'num_filters': 4, 'num_blocks': 2})
  config.update(
    ways=2,
    train_ways=2,
    shots=1,
    queries=1,
    num_iterations=2,
    eval_every=2,
    checkpoint_every=2,
    log_every=1,
    num_val_tasks=2,
    num_eval_tasks=2,
    eval_batch_size=2,
  )
  results = train.train_and_evaluate(
    config,
    str(tmp_path / 'run'),
    data_dir=str(tmp_path / 'tfds'),
    source_dir=str(source),
    progress=False,
  )
  assert results['dataset'] == 'tieredimagenet' and results['split'] == 'ren'
  assert results['iterations'] == 2 and 0 <= results['test_accuracy'] <= 1
  assert results['preset'] == 'protonet_tieredimagenet:conv4_5w1s'


def test_cache_without_its_counts_is_one_line(tmp_path):
  source = files.write_npz(tmp_path / 'ren', files.ren_content())
  _load('val', source, tmp_path / 'd')
  (metadata,) = Path(tmp_path / 'd').rglob('npz84/*/metadata.json')
  metadata.unlink()
  _one_line_error(
    lambda: tieredimagenet.load('val', data_dir=str(tmp_path / 'd')),
    'does not count the images of each class of the val split list. Fix: '
    'delete',
  )
