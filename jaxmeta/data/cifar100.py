"""CIFAR-FS and FC100: few-shot splits of CIFAR-100, as class-major arrays.

Two registered datasets, separate benchmarks in the literature and in configs,
read one TFDS cache of CIFAR-100 (`jaxmeta.data.cifar100_tfds`):

* `'cifar_fs'`, scheme `'bertinetto'`: CIFAR-FS (Bertinetto et al., ICLR 2019),
  random fine classes: 64 / 16 / 20 classes.
* `'fc100'`, scheme `'oreshkin'`: FC100 (Oreshkin et al., NeurIPS 2018), split
  by superclass, 12 / 4 / 4, whose fine classes are the classes: 60 / 20 / 20.

Every class has 600 images, uint8 `[32, 32, 3]` RGB, unchanged: its 500 of
the `train` pickle, then its 100 of the `test` pickle (both papers pool them).
Class names are `'superclass/class'`, e.g. `'aquatic_mammals/whale'`, in the
order of CIFAR-FS's list file, or of FC100's superclass list with fine
classes alphabetically within one. The lists are shipped in
`jaxmeta/data/splits/cifar100` (from pytorch-meta, MIT). The source
(`$JAXMETA_CIFAR100_DIR`) and the cache are found as `jaxmeta.data.tfds_cache`
says. Memory: 184 MB for the whole of CIFAR-100 (CIFAR-FS train: 118 MB).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from jaxmeta.data import cifar100_tfds
from jaxmeta.data import tfds_cache
from jaxmeta.data.cifar100_tfds import Cifar100Error
from jaxmeta.data.registry import ClassImages
from jaxmeta.data.registry import register_dataset

SCHEMES = {'cifar_fs': ('bertinetto',), 'fc100': ('oreshkin',)}
SPLITS_DIR = Path(__file__).resolve().parent / 'splits' / 'cifar100'
SOURCE_ENV = cifar100_tfds.SOURCE_ENV


@register_dataset('cifar_fs')
def load_cifar_fs(
  split: str = 'train',
  scheme: str = 'bertinetto',
  *,
  data_dir: str | None = None,
  source_dir: str | None = None,
) -> ClassImages:
  """Loads one split of CIFAR-FS (Bertinetto et al., 2019).

  Args:
    split: 'train' (64 classes), 'val' (16) or 'test' (20).
    scheme: 'bertinetto', the only one.
    data_dir: TFDS data dir of the cache (see the module docstring).
    source_dir: folder with `cifar-100-python.tar.gz` or `cifar-100-python/`;
      only read to prepare the cache.

  Returns:
    `ClassImages`, images uint8 `[classes, 600, 32, 32, 3]`.

  Raises:
    Cifar100Error (a ValueError): a bad split or scheme, a missing, corrupted
      or malformed source.
  """
  return _load('cifar_fs', split, scheme, data_dir, source_dir)


@register_dataset('fc100')
def load_fc100(
  split: str = 'train',
  scheme: str = 'oreshkin',
  *,
  data_dir: str | None = None,
  source_dir: str | None = None,
) -> ClassImages:
  """Loads one split of FC100 (Oreshkin et al., 2018), as `load_cifar_fs`.

  Splits: 'train' (12 superclasses, 60 classes), 'val' (4, 20) or 'test'
  (4, 20); scheme: 'oreshkin', the only one.
  """
  return _load('fc100', split, scheme, data_dir, source_dir)


def split_list(dataset: str, split: str) -> list:
  """The shipped list of one split: CIFAR-FS `[[coarse, fine], ...]`, FC100
  `[coarse, ...]`."""
  path = SPLITS_DIR / dataset.replace('_', '-') / f'{split}.json'
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise Cifar100Error(
      f'Cannot read the {dataset} split list {path}: {e!r}. Fix: reinstall '
      'jaxmeta or restore jaxmeta/data/splits/cifar100 from the '
      'repository.'
    ) from e


def _load(
  dataset: str,
  split: str,
  scheme: str,
  data_dir: str | None,
  source_dir: str | None,
) -> ClassImages:
  tfds_cache.check_split(
    split, scheme, SCHEMES[dataset], Cifar100Error, dataset
  )
  images, names = _read_cache(
    tfds_cache.data_dir_or_default(data_dir),
    None if source_dir is None else str(source_dir),
  )
  index = {name: i for i, name in enumerate(names)}
  entries = split_list(dataset, split)
  if dataset == 'cifar_fs':
    wanted = [f'{coarse}/{fine}' for coarse, fine in entries]
  else:
    by_coarse = {}
    for name in sorted(names, key=lambda n: n.split('/')[1]):
      by_coarse.setdefault(name.split('/')[0], []).append(name)
    wanted = [name for coarse in entries for name in by_coarse.get(coarse, [])]
    empty = [coarse for coarse in entries if coarse not in by_coarse]
    if empty:
      raise Cifar100Error(
        f'The fc100 {split} list names superclasses that are not in '
        f'CIFAR-100: {empty}. Fix: restore {SPLITS_DIR} from the repository.'
      )
  unknown = [name for name in wanted if name not in index]
  if unknown:
    raise Cifar100Error(
      f'The {dataset} {split} list names classes that are not in CIFAR-100: '
      f'{unknown[:5]}. Fix: restore {SPLITS_DIR} from the repository.'
    )
  return ClassImages(
    images=images[[index[name] for name in wanted]], class_names=tuple(wanted)
  )


@functools.lru_cache(maxsize=2)
def _read_cache(
  data_dir: str | None, source_dir: str | None
) -> tuple[np.ndarray, tuple[str, ...]]:
  """Prepares (if needed) and reads the cache: (uint8 `[100, 600, 32, 32,
  3]`, names 'coarse/fine' in CIFAR's fine label order, alphabetical)."""
  builder = cifar100_tfds.JaxmetaCifar100(data_dir=data_dir)
  if not builder.is_prepared():
    how, folder = tfds_cache.source_folders(
      source_dir, SOURCE_ENV, tfds_cache.manual_dir(builder)
    )[0]
    if cifar100_tfds.locate(folder) is None:
      raise Cifar100Error(
        f'CIFAR-100 is not prepared in {builder.data_dir_root} and there is '
        f'no {cifar100_tfds.ARCHIVE_NAME} or {cifar100_tfds.FOLDER_NAME}/ in '
        f'{folder} ({how}). {cifar100_tfds.HOW_TO_GET}'
      )
    builder = cifar100_tfds.JaxmetaCifar100(
      data_dir=data_dir, source_dir=folder
    )
    tfds_cache.prepare_cache(builder, Cifar100Error)
  names = []

  def slot(record) -> int:
    fine, coarse = (
      tfds_cache.decode_text(record[k])
      for k in ('fine_label_name', 'coarse_label_name')
    )
    names.append(f'{coarse}/{fine}')
    return len(names) - 1

  images = tfds_cache.read_class_records(
    builder,
    'classes',
    (cifar100_tfds.NUM_FINE, cifar100_tfds.EXAMPLES_PER_CLASS)
    + cifar100_tfds.IMAGE_SHAPE,
    slot,
    Cifar100Error,
  )
  # Records are in TFDS's order; sort by fine name, CIFAR's label order.
  order = sorted(range(len(names)), key=lambda i: names[i].split('/')[1])
  return images[order], tuple(names[i] for i in order)
