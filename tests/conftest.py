"""Shared pytest fixtures.

The tests mirror the code: tests/algorithms, tests/models, tests/data and
tests/training for the library's modules, tests/experiments (with benchmark/
and studies/) for the experiment programs, tests/project for the repository
itself (README, notebooks, packaging, docs). Test modules import no other test
module: what they share is in the `support` package (this folder is on
`sys.path`), fixtures in conftest.py files. Test file names are unique across
folders (pytest imports them by base name).
"""

import os
from pathlib import Path
import tempfile

import pytest

_REPO = Path(__file__).resolve().parents[1]
OMNIGLOT_SOURCE_DIR = _REPO / 'data' / 'omniglot'
# Faster XLA:CPU compilation. The tests compile hundreds of small programs
# and run each for a few steps, so compiling is most of their time; without
# LLVM's optimisation passes it takes about half as long, for slower machine
# code of the same programs.
_FAST_COMPILE = (
  '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
)


def pytest_configure(config):
  """Compiles for speed of compilation; shares compiled XLA programs.

  `XLA_FLAGS` gets `_FAST_COMPILE`, unless it sets an optimisation level
  already (`XLA_FLAGS=--xla_backend_optimization_level=2` runs the tests as
  compiled by default). The flags are read when JAX starts its backend, so
  they hold for the whole session and its subprocesses.

  Many tests build the same meta-step (in-process and via `python -m
  experiments...`); JAX's persistent compilation cache turns every repeat
  compilation into a disk read. A fresh directory per session, so nothing
  leaks between runs.
  """
  del config
  xla_flags = os.environ.get('XLA_FLAGS', '')
  if '--xla_backend_optimization_level' not in xla_flags:
    os.environ['XLA_FLAGS'] = f'{xla_flags} {_FAST_COMPILE}'.strip()
  if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
      prefix='jaxmeta_xla_cache_'
    )
  import jax

  jax.config.update(
    'jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR']
  )


@pytest.fixture(scope='session')
def omniglot_data_dir(tmp_path_factory) -> str:
  """A TFDS data dir holding the prepared 28x28 Omniglot cache.

  Prepared once per test session from the repository's shipped zips
  (`data/omniglot`), so tests never touch the user's TFDS cache or the network.
  """
  zips = [
    OMNIGLOT_SOURCE_DIR / name
    for name in ('images_background.zip', 'images_evaluation.zip')
  ]
  missing = [str(p) for p in zips if not p.is_file()]
  if missing:
    pytest.skip(f'Omniglot zips not in the checkout: {missing}')
  import filelock
  from jaxmeta.data import omniglot

  # Under pytest-xdist every worker is a session of its own; they share the
  # parent of their temporary directories, so the first to get here prepares
  # and the others wait for it rather than decoding the zips again.
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    shared = shared.parent
  data_dir = shared / 'tfds_omniglot'
  with filelock.FileLock(str(data_dir) + '.lock'):
    omniglot.load(
      'train', data_dir=str(data_dir), source_dir=str(OMNIGLOT_SOURCE_DIR)
    )
  return str(data_dir)


TINY_DATASET = 'tiny_images'


@pytest.fixture(scope='session')
def tiny_dataset() -> str:
  """Registers `'tiny_images'`: random uint8 class images per split.

  12 classes x 6 examples of 8x8x1 per split, different per split and the
  same on every call; options `image_size` and `channels` change the shape.
  """
  import numpy as np
  from jaxmeta.data import registry

  def load(
    split,
    *,
    data_dir=None,
    source_dir=None,
    scheme='random',
    image_size=8,
    channels=1,
  ):
    del data_dir, source_dir
    if split not in registry.SPLITS:
      raise registry.DataError(f'Unknown split {split!r}.')
    rng = np.random.default_rng(registry.SPLITS.index(split))
    images = rng.integers(
      0, 256, (12, 6, image_size, image_size, channels), dtype=np.uint8
    )
    # Classes that differ in mean brightness, so that a model can learn.
    images = (
      images // 2 + (np.arange(12) * 10)[:, None, None, None, None]
    ).astype(np.uint8)
    names = tuple(f'{scheme}/{split}/{i}' for i in range(12))
    return registry.ClassImages(images, names)

  registry.register_dataset(TINY_DATASET)(load)
  yield TINY_DATASET
  del registry.DATASETS[TINY_DATASET]
