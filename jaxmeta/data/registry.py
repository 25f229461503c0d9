"""The dataset registry: a name -> a loader of class-major image arrays.

A few-shot image dataset is, to the rest of jaxmeta, one function
`load(split, *, data_dir=None, source_dir=None, **options) -> ClassImages`;
the sampler (`jaxmeta.data.episodes`) and the harness know nothing else, so
adding one is a module with such a loader and a `register_dataset` line.
"""

from typing import Callable, NamedTuple

import numpy as np

SPLITS = ('train', 'val', 'test')


class DataError(ValueError):
  """Missing, malformed or unusable data; the message names the fix.

  Every dataset's error type derives from it (so that a program reports any
  as one line); its `dataset` names the data in messages.
  """

  dataset = 'the data'


class ClassImages(NamedTuple):
  """Every example of every class of one split.

  Classes may hold unequal numbers of examples (e.g. CUB-200, a user's own
  folders): `examples` is then the largest class's, class c's real examples
  are its first `counts[c]` rows and the rows past them are padding (zeros),
  which the samplers never draw (see `jaxmeta.data.episodes.sample_task`).

  Attributes:
    images: uint8 `[classes, examples, H, W, C]`, class-major; the examples
      of a class in a fixed, documented order.
    class_names: one name per class, e.g. `'Angelic/character01/rot090'` for
      Omniglot or a WordNet id `'n01532829'` for mini-ImageNet.
    counts: None (every class has all `examples`) or int `[classes]`, the
      real examples of each class, each in `[1, examples]`.
  """

  images: np.ndarray
  class_names: tuple[str, ...]
  counts: np.ndarray | None = None


def union(*parts: ClassImages) -> ClassImages:
  """The classes of every part, in order (e.g. a training and a validation
  split); classes of unequal examples are padded as `ClassImages` says.

  Raises:
    ValueError: parts whose images differ in shape (but for the examples)
      or dtype.
  """
  shapes = {p.images.shape[2:] + (p.images.dtype,) for p in parts}
  if len(shapes) != 1:
    raise ValueError(f'Cannot join splits of different image shapes {shapes}.')
  examples = max(p.images.shape[1] for p in parts)
  if all(p.counts is None and p.images.shape[1] == examples for p in parts):
    counts = None
  else:
    counts = np.concatenate(
      [
        np.full(len(p.images), p.images.shape[1])
        if p.counts is None
        else np.asarray(p.counts)
        for p in parts
      ]
    )
  images = np.concatenate(
    [
      np.pad(
        p.images, [(0, 0), (0, examples - p.images.shape[1])] + [(0, 0)] * 3
      )
      for p in parts
    ]
  )
  names = tuple(name for p in parts for name in p.class_names)
  return ClassImages(images, names, counts)


Loader = Callable[..., ClassImages]  # See the module docstring.

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
