"""The dataset registry: a name -> a loader of class-major image arrays.

A few-shot image dataset is, to the rest of jaxmeta, one function:
`load(split, *, data_dir=None, source_dir=None, **options) -> ClassImages`,
returning every example of every class of one split as a single uint8 array
`[classes, examples, H, W, C]`. The on-device episodic sampler
(`jaxmeta.data.episodes`) and the experiment harness know nothing else about
a dataset, so adding one is a module with such a loader and a `register`
line.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable, NamedTuple, Protocol

import numpy as np

SPLITS = ('train', 'val', 'test')


class DataError(ValueError):
  """Missing, malformed or unusable data; the message names the fix.

  Every dataset's own error type derives from it, so that a program can
  report any of them as one line.
  """


class ClassImages(NamedTuple):
  """Every example of every class of one split.

  Attributes:
    images: uint8 `[classes, examples, H, W, C]`, class-major; the examples
      of a class in a fixed, documented order.
    class_names: one name per class, e.g. `'Angelic/character01/rot090'` for
      Omniglot or a WordNet id `'n01532829'` for mini-ImageNet.
  """

  images: np.ndarray
  class_names: tuple[str, ...]


class Loader(Protocol):
  def __call__(
    self,
    split: str,
    *,
    data_dir: str | None = None,
    source_dir: str | None = None,
    **options,
  ) -> ClassImages: ...


DATASETS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
  """Decorator: `@register_dataset('omniglot')` adds a loader to `DATASETS`."""

  def add(loader: Loader) -> Loader:
    if name in DATASETS and DATASETS[name] is not loader:
      raise ValueError(f'Dataset {name!r} is already registered.')
    DATASETS[name] = loader
    return loader

  return add


def load(name: str, split: str, **kwargs) -> ClassImages:
  """Loads `split` of the registered dataset `name` (see `register_dataset`)."""
  if name not in DATASETS:
    raise ValueError(
      f'Unknown dataset {name!r}; choose one of {sorted(DATASETS)}.'
    )
  return DATASETS[name](split, **kwargs)


def prepare_cache(builder, what: str, error: type[DataError]) -> None:
  """Prepares a TFDS builder's cache; a data dir that cannot be written, or
  that is removed meanwhile, is one `error` naming the fix.

  Args:
    builder: a `tfds.core.DatasetBuilder`.
    what: the cache's name in messages, e.g. 'mini-ImageNet'.
    error: the dataset's `DataError` subclass.
  """
  root = Path(os.fspath(builder.data_dir_root))
  existing = root
  while not existing.exists() and existing.parent != existing:
    existing = existing.parent
  fix = (
    'Fix: pass `data_dir=` (--data_dir, or set $JAXMETA_DATA_DIR) to a '
    'writable folder.'
  )
  if not existing.is_dir() or not os.access(existing, os.W_OK):
    raise error(
      f'Cannot write the {what} cache into the data dir {root}: '
      f'{existing} is {"read-only" if existing.is_dir() else "a file"}. {fix}'
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
      isinstance(e, OSError) and e.errno == errno.EROFS
    ):
      raise error(
        f'Cannot write the {what} cache into the data dir {root}: {e}. {fix}'
      ) from e
    raise
