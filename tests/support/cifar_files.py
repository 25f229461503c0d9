"""A tiny fake CIFAR-100 in the real on-disk format (pickles, tar.gz).

Every fine class of the shipped CIFAR-FS lists, `PER_CLASS` images each.
"""

import json
from pathlib import Path
import pickle
import tarfile

import numpy as np

from jaxmeta.data import registry
from support import REPO

SPLITS_DIR = REPO / 'jaxmeta' / 'data' / 'splits' / 'cifar100'
PER_CLASS = 3  # 2 in the fake train pickle, 1 in the fake test pickle.


def split_lists(folder):
  return {
    s: json.loads((SPLITS_DIR / folder / f'{s}.json').read_text())
    for s in registry.SPLITS
  }


def fine_to_coarse():
  return {
    fine: coarse
    for entries in split_lists('cifar-fs').values()
    for coarse, fine in entries
  }


def fake_cifar(seed=0, per_class=PER_CLASS, row_length=3072):
  """The pickles' content (meta, {'train': ..., 'test': ...}), bytes keys."""
  rng = np.random.default_rng(seed)
  coarse_of = fine_to_coarse()
  fine_names = sorted(coarse_of)
  coarse_names = sorted(set(coarse_of.values()))
  meta = {
    b'fine_label_names': [n.encode() for n in fine_names],
    b'coarse_label_names': [n.encode() for n in coarse_names],
  }
  files = {}
  for name, count in (('train', per_class - 1), ('test', 1)):
    fine = rng.permutation(np.repeat(np.arange(100), count))
    coarse = [coarse_names.index(coarse_of[fine_names[f]]) for f in fine]
    files[name] = {
      b'filenames': [b'x.png'] * len(fine),
      b'batch_label': b'fake',
      b'fine_labels': fine.tolist(),
      b'coarse_labels': coarse,
      b'data': rng.integers(0, 256, (len(fine), row_length), np.uint8),
    }
  return meta, files


def write_folder(folder, meta, files):
  folder = Path(folder) / 'cifar-100-python'
  folder.mkdir(parents=True)
  for name, content in (('meta', meta), *files.items()):
    (folder / name).write_bytes(pickle.dumps(content, protocol=2))
  return folder


def write_archive(folder, meta, files):
  extracted = write_folder(Path(folder) / 'tmp', meta, files)
  path = Path(folder) / 'cifar-100-python.tar.gz'
  with tarfile.open(path, 'w:gz') as archive:
    archive.add(extracted, arcname='cifar-100-python')
  return path
