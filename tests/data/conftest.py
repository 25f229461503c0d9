"""Fixtures of the fake CIFAR-100 and mini-ImageNet sources' tests."""

import pytest

from jaxmeta.data import cifar100
from jaxmeta.data import cifar100_tfds
from jaxmeta.data import miniimagenet
from jaxmeta.data import miniimagenet_tfds
from support.cifar_files import PER_CLASS
from support.miniimagenet_files import LISTS


@pytest.fixture
def cifar_small_classes(monkeypatch):
  """CIFAR-100 preparation expects the fake's `PER_CLASS` images a class."""
  monkeypatch.setattr(cifar100_tfds, 'EXAMPLES_PER_CLASS', PER_CLASS)
  cifar100._read_cache.cache_clear()


@pytest.fixture
def miniimagenet_tiny_lists(tmp_path_factory, monkeypatch):
  """mini-ImageNet's split lists are the fake's `LISTS`; no source in env."""
  folder = tmp_path_factory.mktemp('lists')
  for split, classes in LISTS.items():
    lines = ['filename,label'] + [
      f'{w}{i:08d}.jpg,{w}' for w, indices in classes.items() for i in indices
    ]
    (folder / f'{split}.csv').write_text('\n'.join(lines) + '\n')
  monkeypatch.setattr(miniimagenet_tfds, 'SPLITS_DIR', folder)
  monkeypatch.delenv(miniimagenet.SOURCE_ENV, raising=False)
