"""The TFDS caches behind the image datasets: where, how prepared, how read.

Every image dataset is prepared once, from its source files, by a
TensorFlow-free tensorflow-datasets builder into a TFDS data dir (array_record;
images as `tfds.features.Tensor(uint8)`, since `tfds.features.Image` imports
TensorFlow); later loads read that cache with `builder.as_data_source()`.
Errors are the dataset's `DataError` subclass, whose `dataset` names it.

Where the cache goes: `data_dir`, else `$JAXMETA_DATA_DIR`, else TFDS's
default (`$TFDS_DATA_DIR` or ~/tensorflow_datasets). Where a source is looked
for while no cache is prepared: `source_dir`, else the dataset's environment
variable, else TFDS's manual dir (`<data_dir>/downloads/manual`).
"""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path
import pickle
import tarfile
from typing import Any, BinaryIO, Callable, Mapping, Sequence
import zipfile
import zlib

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxmeta.data.registry import DataError
from jaxmeta.data.registry import SPLITS

DATA_DIR_ENV = 'JAXMETA_DATA_DIR'
# What reading a truncated or corrupted tar or zip raises.
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile)
ARCHIVE_ERRORS += (zlib.error, EOFError, OSError)
_NO_SPACE = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)
_WRITABLE_FIX = (
  f'Fix: pass `data_dir=` (--data_dir, or set ${DATA_DIR_ENV}) to a '
  'writable folder.'
)


def data_dir_or_default(data_dir: os.PathLike | str | None) -> str | None:
  """`data_dir`, else `$JAXMETA_DATA_DIR`, else None (TFDS's default)."""
  if data_dir is None:
    data_dir = os.environ.get(DATA_DIR_ENV) or None
  return None if data_dir is None else str(data_dir)


def check_split(
  split: str,
  scheme: str,
  schemes: tuple[str, ...],
  error: type[DataError],
  name: str = '',
) -> None:
  """Raises `error` unless `split` is in `SPLITS` and `scheme` in `schemes`."""
  if split not in SPLITS:
    raise error(f'Unknown split {split!r}. Fix: use one of {SPLITS}.')
  if scheme not in schemes:
    raise error(
      f'Unknown split scheme {scheme!r} of {name or error.dataset}. Fix: '
      f'use one of {schemes}.'
    )


def check_image_size(
  image_size: int, error: type[DataError], example: str, largest: int = 0
) -> None:
  """Raises `error` unless `image_size` is an int in 1..`largest` (0: any)."""
  if (
    isinstance(image_size, bool)
    or not isinstance(image_size, int)
    or not 1 <= image_size <= (largest or image_size)
  ):
    within = (
      'a positive int'
      if not largest
      else f'an int in 1..{largest} (the originals are {largest}x{largest})'
    )
    raise error(
      f'image_size must be {within}, got {image_size!r}. Fix: pass e.g. '
      f'{example}.'
    )


def decode_text(value: bytes | str) -> str:
  """A TFDS text feature as read back (bytes) or as written (str)."""
  return value.decode() if isinstance(value, bytes) else str(value)


def manual_dir(builder: tfds.core.DatasetBuilder) -> Path:
  """TFDS's manual download folder of `builder`'s data dir."""
  return Path(os.fspath(builder.data_dir_root)) / 'downloads' / 'manual'


def source_folders(
  source_dir: os.PathLike | str | None,
  env: str,
  manual: os.PathLike | str | None,
  *others: tuple[str, Path],
) -> list[tuple[str, Path]]:
  """`(how chosen, folder)` in order: `source_dir`, `$env`, `others`, `manual`.

  Folders that are None or unset are left out.
  """
  folders = [] if source_dir is None else [('source_dir', Path(source_dir))]
  if os.environ.get(env):
    folders.append((f'${env}', Path(os.environ[env])))
  folders += others
  if manual is not None:
    folders.append(('the TFDS manual dir', Path(manual)))
  return folders


def check_data_dir(root: os.PathLike | str, error: type[DataError]) -> Path:
  """The nearest existing of `root` and its parents; `error` if a file."""
  existing = Path(root)
  while not existing.exists() and existing.parent != existing:
    existing = existing.parent
  if not existing.is_dir():
    raise error(
      f'The data dir {root} cannot be a folder: {existing} is a file. Fix: '
      f'pass `data_dir=` (--data_dir, or set ${DATA_DIR_ENV}) to a folder, '
      'or remove that file.'
    )
  return existing


def prepare_cache(
  builder: tfds.core.DatasetBuilder, error: type[DataError]
) -> None:
  """Prepares a builder's cache; an unwritable or vanished data dir is one
  `error` naming the fix."""
  what = error.dataset
  root = Path(os.fspath(builder.data_dir_root))
  existing = check_data_dir(root, error)
  if not os.access(existing, os.W_OK):
    raise error(
      f'Cannot write the {what} cache into the data dir {root}: {existing} '
      f'is read-only. {_WRITABLE_FIX}'
    )
  try:
    builder.download_and_prepare()
  except DataError:
    raise
  except Exception as e:
    # TFDS reports a folder removed under it with its own error types.
    if not root.is_dir():
      raise error(
        f'The data dir {root} was removed while the {what} cache was being '
        f'prepared in it ({type(e).__name__}). Fix: leave it in place and '
        'load again: the cache is prepared afresh.'
      ) from e
    if isinstance(e, PermissionError) or (
      isinstance(e, OSError) and e.errno in _NO_SPACE
    ):
      raise error(
        f'Cannot write the {what} cache into the data dir {root}: {e}. '
        f'{_WRITABLE_FIX}'
      ) from e
    raise


def load_pickle(
  source: bytes | BinaryIO, where: str, error: type[DataError], how_to_get: str
) -> Any:
  """A pickle's content, from bytes or a binary file (large pickles: no
  second copy). Python 2 pickles load as `latin1`, as NumPy's arrays need;
  `where` names the file and `how_to_get` ends every message."""
  try:
    if isinstance(source, bytes):
      return pickle.loads(source, encoding='latin1')
    return pickle.load(source, encoding='latin1')
  except Exception as e:
    # Truncated or corrupted pickles raise EOFError, UnpicklingError,
    # ValueError, ... depending on where they break.
    fix = f'Fix: replace it by an intact copy. {how_to_get}'
    raise unreadable(error, where, 'pickle', e, fix) from e


def unpickle(
  data: bytes, where: str, error: type[DataError], how_to_get: str
) -> Mapping[str, Any]:
  """A pickled dict (`load_pickle`) with str keys (bytes keys decoded)."""
  content = load_pickle(data, where, error, how_to_get)
  if not isinstance(content, dict):
    raise error(
      f'{where} holds a {type(content).__name__}, not the dict of a '
      f'{error.dataset} pickle. {how_to_get}'
    )
  return {
    k.decode('latin1') if isinstance(k, bytes) else k: v
    for k, v in content.items()
  }


def unreadable(
  error: type[DataError], where: str, kind: str, e: Exception, fix: str
) -> DataError:
  """`error` saying that the file `where` is not a readable `kind`."""
  return error(
    f'{where} is not a readable {kind} (truncated or corrupted?): {e!r}. {fix}'
  )


def class_images_feature(image_shape: tuple[int, ...]) -> tfds.features.Tensor:
  """A record's images `[n, *image_shape]` uint8, stored as raw bytes.

  A record per class: TFDS decodes records one by one in Python, so 100 large
  records read far faster than 60,000 small ones; raw bytes, as TFDS's
  default int64 list is several times slower (benchmarks/README.md).
  """
  return tfds.features.Tensor(
    shape=(None,) + tuple(image_shape),
    dtype=np.uint8,
    encoding=tfds.features.Encoding.BYTES,
  )


@dataclasses.dataclass
class SourceConfig(tfds.core.BuilderConfig):
  """Builder config: the family of sources the pixels come from ('ilsvrc',
  a preprocessed format, ...), and their size."""

  source: str = 'ilsvrc'
  image_size: int = 84


def config_for(
  configs: Sequence[SourceConfig], source: str, image_size: int
) -> SourceConfig:
  """The config of `configs` (a builder's registered ones) for a source
  family and size, else an ad-hoc one."""
  for config in configs:
    if config.source == source and config.image_size == image_size:
      return config
  return SourceConfig(
    name=f'{source}{image_size}',
    source=source,
    image_size=image_size,
    description=f'From {source}, {image_size}x{image_size}.',
  )


class SourceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A TFDS builder reading its source from `source_dir=`, else the manual dir.

  A dataset sets `error` (its `DataError` subclass), `HOMEPAGE`, `CITATION`,
  `_description` and `_features` (and `_metadata` to keep more than the
  records); the file format defaults to array_record.
  """

  error: type[DataError] = DataError
  HOMEPAGE = ''
  CITATION = ''

  # Bump when the preprocessing or the features change: caches are per version.
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  # TFDS finds `checksums.tsv` next to `code_path`. Its own lookup of
  # `code_path` needs the `importlib_resources` backport for builders outside
  # tensorflow_datasets; this folder is the answer anyway.
  code_path = epath.Path(__file__)

  def __init__(self, *, source_dir: os.PathLike | str | None = None, **kwargs):
    """`**kwargs`: `tfds.core.DatasetBuilder`'s (data_dir, config, ...)."""
    self._source_dir = None if source_dir is None else Path(source_dir)
    super().__init__(**{'file_format': 'array_record', **kwargs})

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self._description(),
      features=tfds.features.FeaturesDict(self._features()),
      homepage=self.HOMEPAGE,
      citation=self.CITATION,
      metadata=self._metadata(),
    )

  def _metadata(self) -> tfds.core.MetadataDict | None:
    """None, or a dict filled while preparing and saved with the cache
    (`builder.info.metadata`), e.g. the classes' sizes."""
    return None

  def find_source(
    self,
    dl_manager: tfds.download.DownloadManager,
    locate: Callable[[Path], Any],
    missing: str,
  ) -> tuple[Path, Any]:
    """`(folder, locate(folder))` for `source_dir`, else TFDS's manual dir;
    `self.error` if there is no folder or `locate` finds no `missing`."""
    folder = self._source_dir
    if folder is None:
      try:
        folder = Path(os.fspath(dl_manager.manual_dir))
      except AssertionError as e:  # TFDS's way to say: missing or empty.
        raise self.error(' '.join(str(e).split('\n'))) from e
    source = locate(folder)
    if source is None:
      raise self.error(
        f'No {missing} in {folder}. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}'
      )
    return folder, source


def _class_records(
  builder: tfds.core.DatasetBuilder,
  split: str,
  num_classes: int,
  slot: Callable[[Mapping[str, Any]], int | None],
  error: type[DataError],
  image_shape: tuple[int, ...],
  examples: int | None = None,
):
  """Yields `(slot, images)` of each record of a `split` of `num_classes`
  records, one per class, after checking that it fills a new slot and holds
  images `[n, *image_shape]` (`n == examples` unless `examples` is None,
  else `n >= 1`); `error` naming the fix otherwise."""
  source = builder.as_data_source()[split]
  where = f'The prepared {error.dataset} cache in {builder.data_dir}'
  fix = f'Fix: delete {builder.data_dir} and load again to rebuild it.'
  if len(source) != num_classes:
    raise error(
      f'{where} has {len(source)} classes in its {split} split, not '
      f'{num_classes}. {fix}'
    )
  filled = np.zeros(num_classes, bool)
  for i in range(len(source)):  # One class at a time: no second copy.
    record = source[i]
    index, images = slot(record), record['images']
    count = images.shape[0]
    if (
      index is None
      or images.shape[1:] != tuple(image_shape)
      or (count < 1 if examples is None else count != examples)
      or filled[index]
    ):
      wanted = ('n' if examples is None else examples, *image_shape)
      raise error(
        f'{where} holds a class with images {images.shape} that is not one '
        f'of the {split} split, of images {wanted}. {fix}'
      )
    filled[index] = True
    yield index, images


def read_class_records(
  builder: tfds.core.DatasetBuilder,
  split: str,
  shape: tuple[int, ...],
  slot: Callable[[Mapping[str, Any]], int | None],
  error: type[DataError],
  counts: Sequence[int] | None = None,
) -> np.ndarray:
  """Reads a `split` of one record per class (its `images`) into one uint8
  array of `shape` `[classes, examples, H, W, C]`, each class filled once at
  `slot(record)` (None: the record is not a class of it).

  With `counts` (ragged classes, int `[classes]`), the record of slot c holds
  `counts[c]` images, the first rows of its class; the rest stay zero.
  """
  if counts is None:
    images = np.empty(shape, np.uint8)
    records = _class_records(
      builder, split, shape[0], slot, error, shape[2:], shape[1]
    )
    for index, class_images in records:
      images[index] = class_images
    return images
  images = np.zeros(shape, np.uint8)
  for index, class_images in _class_records(
    builder, split, shape[0], slot, error, shape[2:]
  ):
    if len(class_images) != counts[index]:
      raise error(
        f'The prepared {error.dataset} cache in {builder.data_dir} holds '
        f'{len(class_images)} images of class {index} of its {split} split, '
        f'not the {counts[index]} it records. Fix: delete '
        f'{builder.data_dir} and load again to rebuild it.'
      )
    images[index, : len(class_images)] = class_images
  return images


def prepared_builder(
  make: Callable[..., tfds.core.DatasetBuilder],
  families: Sequence[str],
  source_dir: os.PathLike | str | None,
  env: str,
  locate: Callable[[Path], tuple[str, Path] | None],
  error: type[DataError],
  how_to_get: str,
  what: str,
) -> tfds.core.DatasetBuilder:
  """The builder of the cache to read; prepares it from a source if needed.

  The source folder is the first of `source_folders`; where it holds no
  source, the first prepared cache of `families` serves.

  Args:
    make: `make(family, **kwargs)`, the dataset's builder of the builder
      config family `family` ('ilsvrc', 'pickles', ...), `source_dir=`
      among TFDS's `kwargs`.
    families: the families whose caches serve without a source, in order of
      preference; the first's data dir holds the TFDS manual dir.
    source_dir: the folder of a source, else `$env`, else the manual dir.
    env: the dataset's environment variable naming a source folder.
    locate: `locate(folder) -> (family, path)` of the source in `folder`
      (raising `error` for an unusable one), or None.
    error: the dataset's `DataError` subclass.
    how_to_get: what to bring, ending the error for no source and no cache.
    what: the data in that error, e.g. 'mini-ImageNet (84x84)'.

  Returns:
    The prepared builder.
  """
  probe = make(families[0])
  how, folder = source_folders(source_dir, env, manual_dir(probe))[0]
  found = locate(folder)
  if found is not None:
    family, path = found
    builder = make(family, source_dir=path)
    if not builder.is_prepared():
      prepare_cache(builder, error)
    return builder
  for family in families:
    builder = make(family)
    if builder.is_prepared():
      return builder
  raise error(
    f'{what} is not prepared in {probe.data_dir_root} and there is no '
    f'source in {folder} ({how}). {how_to_get}'
  )


def read_ragged_class_records(
  builder: tfds.core.DatasetBuilder,
  split: str,
  num_classes: int,
  image_shape: tuple[int, ...],
  slot: Callable[[Mapping[str, Any]], int | None],
  error: type[DataError],
) -> tuple[np.ndarray, np.ndarray]:
  """`read_class_records` for classes of unequal sizes.

  Returns:
    `(images, counts)`: uint8 `[classes, examples, *image_shape]` with
    `examples` the largest class's and zeros past each class's images, and
    int64 `[classes]`, the images of each class (`ClassImages`'s contract).
    The split is read twice (sizes, then images) to hold one class at a time
    besides the result.
  """
  args = (builder, split, num_classes, slot, error, image_shape)
  counts = np.zeros(num_classes, np.int64)
  for index, class_images in _class_records(*args):
    counts[index] = len(class_images)
  images = np.zeros((num_classes, counts.max(), *image_shape), np.uint8)
  for index, class_images in _class_records(*args):
    images[index, : len(class_images)] = class_images
  return images, counts
