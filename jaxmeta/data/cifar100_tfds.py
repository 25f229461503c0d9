"""The TensorFlow-free TFDS builder behind `jaxmeta.data.cifar100`.

The cache holds all 60,000 CIFAR-100 images, uint8 `[32, 32, 3]`, unchanged,
as one record per fine class (TFDS split 'classes', 100 records of
`[600, 32, 32, 3]`: the class's images of the `train` pickle, then those of
the `test` pickle, each in pickle order).

Source: `cifar-100-python.tar.gz` (https://www.cs.toronto.edu/~kriz/cifar.html)
or the `cifar-100-python/` folder it extracts to, holding the pickles `train`,
`test` and `meta` written by Python 2 (byte-string keys; `data` uint8
`[N, 3072]`, rows of three row-major 32x32 planes, red, green, blue).
"""

from __future__ import annotations

import os
from pathlib import Path
import tarfile
from typing import Any, Mapping, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jaxmeta.data import registry
from jaxmeta.data import tfds_cache

ARCHIVE_NAME = 'cifar-100-python.tar.gz'
FOLDER_NAME = 'cifar-100-python'
URL = 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz'
SOURCE_ENV = 'JAXMETA_CIFAR100_DIR'
FILES = ('train', 'test')  # The pickles holding images, in record order.
NUM_FINE = 100
NUM_COARSE = 20
IMAGE_SHAPE = (32, 32, 3)
# Images of each fine class, train and test pickles together (500 + 100).
EXAMPLES_PER_CLASS = 600

# Appended to every error about the source: what to bring, where to put it.
HOW_TO_GET = (
  f'Get it from {URL} (161 MB; https://www.cs.toronto.edu/~kriz/cifar.html) '
  f'and put {ARCHIVE_NAME} (or the {FOLDER_NAME}/ folder it extracts to) in '
  f'that folder, or pass `source_dir=` / set ${SOURCE_ENV} to the folder '
  'that holds it.'
)


class Cifar100Error(registry.DataError):
  """CIFAR-100 data is missing, corrupted, malformed or asked for wrongly."""

  dataset = 'CIFAR-100'


class Cifar100Arrays(NamedTuple):
  """CIFAR-100's images, train pickle then test pickle, checked."""

  images: np.ndarray  # uint8 [N, 32, 32, 3]
  fine_labels: np.ndarray  # int64 [N], indices into fine_label_names
  coarse_labels: np.ndarray  # int64 [N], indices into coarse_label_names
  files: np.ndarray  # int64 [N], the pickle of each image: 0 train, 1 test
  rows: np.ndarray  # int64 [N], its row in that pickle


def locate(folder: os.PathLike | str) -> Path | None:
  """The archive or extracted folder in `folder` (or `folder` itself), the
  folder first (no decompression); None if neither is there."""
  folder = Path(folder)
  if folder.is_file() and folder.name.endswith('.tar.gz'):
    return folder
  if (folder / 'meta').is_file() and (folder / 'train').is_file():
    return folder
  if (folder / FOLDER_NAME).is_dir():
    return folder / FOLDER_NAME
  if (folder / ARCHIVE_NAME).is_file():
    return folder / ARCHIVE_NAME
  return None


def _read_members(source: Path) -> dict[str, tuple[bytes, str]]:
  """name -> (pickle bytes, where it came from) for meta, train and test."""
  names = ('meta',) + FILES
  if source.is_dir():
    paths = [source / n for n in names if (source / n).is_file()]
    members = {p.name: (p.read_bytes(), str(p)) for p in paths}
  else:
    try:
      with tarfile.open(source, 'r:*') as archive:
        members = {
          m.name.rsplit('/', 1)[-1]: (
            archive.extractfile(m).read(),
            f'{source}:{m.name}',
          )
          for m in archive.getmembers()
          if m.isfile() and m.name.rsplit('/', 1)[-1] in names
        }
    except tfds_cache.ARCHIVE_ERRORS as e:
      fix = f'Fix: download it again. {HOW_TO_GET}'
      raise tfds_cache.unreadable(
        Cifar100Error, source, 'tar.gz', e, fix
      ) from e
  missing = [n for n in names if n not in members]
  if missing:
    raise Cifar100Error(
      f'{source} lacks the pickle(s) {missing} ({FOLDER_NAME}/meta, train, '
      f'test). Fix: extract or download {ARCHIVE_NAME} again. {HOW_TO_GET}'
    )
  return members


def _names(
  meta: Mapping[str, Any], key: str, count: int, where: str
) -> tuple[str, ...]:
  names = meta.get(key)
  if not isinstance(names, (list, tuple)) or len(names) != count:
    raise Cifar100Error(
      f'{where}: {key!r} should list {count} names, got '
      f'{type(names).__name__} of length {len(names or ())}. {HOW_TO_GET}'
    )
  return tuple(
    n.decode('latin1') if isinstance(n, bytes) else str(n) for n in names
  )


def read_cifar100(
  source: os.PathLike | str,
) -> tuple[Cifar100Arrays, tuple[str, ...], tuple[str, ...]]:
  """(all 60,000 images, fine label names [100], coarse label names [20])
  from the archive or extracted folder `source`, checked: readable, well
  formed, `EXAMPLES_PER_CLASS` images and one superclass per fine class."""
  source = Path(source)
  members = _read_members(source)
  meta = tfds_cache.unpickle(*members['meta'], Cifar100Error, HOW_TO_GET)
  fine_names = _names(meta, 'fine_label_names', NUM_FINE, members['meta'][1])
  coarse_names = _names(
    meta, 'coarse_label_names', NUM_COARSE, members['meta'][1]
  )
  arrays = []
  for file, name in enumerate(FILES):
    content = tfds_cache.unpickle(*members[name], Cifar100Error, HOW_TO_GET)
    where = members[name][1]
    missing = [
      k for k in ('data', 'fine_labels', 'coarse_labels') if k not in content
    ]
    if missing:
      raise Cifar100Error(f'{where} lacks the key(s) {missing}. {HOW_TO_GET}')
    data = np.asarray(content['data'])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
      raise Cifar100Error(
        f'{where}: data should be uint8 [N, 3072] (32x32 RGB planes), got '
        f'{data.dtype} {list(data.shape)}. {HOW_TO_GET}'
      )
    fine = np.asarray(content['fine_labels'], np.int64)
    coarse = np.asarray(content['coarse_labels'], np.int64)
    if fine.shape != (len(data),) or coarse.shape != (len(data),):
      raise Cifar100Error(
        f'{where}: {len(data)} images but {fine.size} fine and {coarse.size} '
        f'coarse labels. {HOW_TO_GET}'
      )
    out_of_range = (fine < 0) | (fine >= NUM_FINE) | (coarse < 0)
    if (out_of_range | (coarse >= NUM_COARSE)).any():
      raise Cifar100Error(
        f'{where}: labels out of range (fine 0..{NUM_FINE - 1}, coarse '
        f'0..{NUM_COARSE - 1}). {HOW_TO_GET}'
      )
    rows = np.arange(len(data))
    # Rows [N, 3072] of R, G, B planes -> [N, 32, 32, 3].
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    files = np.full_like(rows, file)
    arrays.append(Cifar100Arrays(images, fine, coarse, files, rows))
  pooled = Cifar100Arrays(*map(np.concatenate, zip(*arrays)))
  fine, coarse = pooled.fine_labels, pooled.coarse_labels
  counts = np.bincount(fine, minlength=NUM_FINE)
  wrong = [
    (fine_names[i], int(c))
    for i, c in enumerate(counts)
    if c != EXAMPLES_PER_CLASS
  ]
  if wrong:
    raise Cifar100Error(
      f'{source}: every fine class should have {EXAMPLES_PER_CLASS} images '
      f'(train and test together), but {wrong[:5]} (class, images)'
      f'{" and more" if len(wrong) > 5 else ""} do not. Fix: use the '
      f'original, complete archive. {HOW_TO_GET}'
    )
  for i in range(NUM_FINE):
    parents = np.unique(coarse[fine == i])
    if len(parents) != 1:
      raise Cifar100Error(
        f'{source}: fine class {fine_names[i]!r} is in superclasses '
        f'{[coarse_names[j] for j in parents]}; each fine class belongs to '
        f'exactly one. {HOW_TO_GET}'
      )
  return pooled, fine_names, coarse_names


class JaxmetaCifar100(tfds_cache.SourceBuilder):
  """CIFAR-100 with fine and coarse label names, without TensorFlow.

  `source_dir=`: the folder holding `cifar-100-python.tar.gz` or
  `cifar-100-python/` (or that folder or archive itself).
  """

  MANUAL_DOWNLOAD_INSTRUCTIONS = HOW_TO_GET
  error = Cifar100Error
  HOMEPAGE = 'https://www.cs.toronto.edu/~kriz/cifar.html'
  CITATION = (
    '@techreport{krizhevsky2009learning, title={Learning multiple layers of '
    'features from tiny images}, author={Krizhevsky, Alex}, '
    'institution={University of Toronto}, year={2009}}'
  )

  def _description(self) -> str:
    return (
      'CIFAR-100 (Krizhevsky 2009), one record per fine class: its uint8 '
      '[n, 32, 32, 3] RGB images (train pickle, then test pickle) with '
      'the fine and coarse label names.'
    )

  def _features(self) -> dict[str, Any]:
    return {
      'images': tfds_cache.class_images_feature(IMAGE_SHAPE),
      'fine_label_name': tfds.features.Text(),
      'coarse_label_name': tfds.features.Text(),
      # Where each image comes from: pickle (0 train, 1 test) and row.
      'files': tfds.features.Tensor(shape=(None,), dtype=np.int64),
      'rows': tfds.features.Tensor(shape=(None,), dtype=np.int64),
    }

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    _, source = self.find_source(
      dl_manager, locate, f'{ARCHIVE_NAME} or {FOLDER_NAME}/'
    )
    # Read and check everything before writing anything.
    arrays, fine_names, coarse_names = read_cifar100(source)
    return {
      'classes': self._generate_examples(arrays, fine_names, coarse_names)
    }

  def _generate_examples(
    self,
    arrays: Cifar100Arrays,
    fine_names: tuple[str, ...],
    coarse_names: tuple[str, ...],
  ):
    for fine, fine_name in enumerate(fine_names):
      chosen = np.flatnonzero(arrays.fine_labels == fine)
      yield (
        fine_name,
        {
          'images': arrays.images[chosen],
          'fine_label_name': fine_name,
          # One superclass per fine class (checked).
          'coarse_label_name': coarse_names[arrays.coarse_labels[chosen[0]]],
          'files': arrays.files[chosen],
          'rows': arrays.rows[chosen],
        },
      )
