"""Tiny fake mini-ImageNet split lists and pickles in the real formats."""

import csv
import pickle

import numpy as np

from jaxmeta.data import miniimagenet_tfds
from support import REPO

SHIPPED = REPO / 'jaxmeta' / 'data' / 'splits' / 'miniimagenet' / 'ravi'


def shipped_classes(split):
  with open(SHIPPED / f'{split}.csv') as f:
    rows = list(csv.reader(f))[1:]
  classes = {}
  for name, wnid in rows:
    classes.setdefault(wnid, []).append(name)
  return classes


# Tiny split lists: real wnids of each split, 2 images per class, chosen by
# 1-based rank among the fake class's files (numeric order of k).
LISTS = {
  'train': {w: [1, 4] for w in list(shipped_classes('train'))[:3]},
  'val': {w: [2, 3] for w in list(shipped_classes('val'))[:1]},
  'test': {w: [5, 1] for w in list(shipped_classes('test'))[:1]},
}


def fake_pickles(seed=0):
  """{split: {'image_data': ..., 'class_dict': ...}}, rows shuffled."""
  rng = np.random.default_rng(seed)
  out = {}
  for split, classes in LISTS.items():
    n = sum(len(v) for v in classes.values())
    rows = rng.permutation(n).tolist()
    class_dict, start = {}, 0
    for wnid, indices in classes.items():
      class_dict[wnid] = rows[start : start + len(indices)]
      start += len(indices)
    out[split] = {
      'image_data': rng.integers(0, 256, (n, 84, 84, 3), np.uint8),
      'class_dict': class_dict,
    }
  return out


def write_pickles(root, content):
  root.mkdir(parents=True, exist_ok=True)
  for split, value in content.items():
    (root / miniimagenet_tfds.PICKLE_NAMES[split]).write_bytes(
      pickle.dumps(value)
    )
  return root
