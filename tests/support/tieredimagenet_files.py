"""Tiny fake tiered-ImageNet split lists and sources in the real formats."""

import csv
import io
import pickle

import numpy as np
from PIL import Image

from jaxmeta.data import tieredimagenet_tfds
from support import REPO

SHIPPED = REPO / 'jaxmeta' / 'data' / 'splits' / 'tieredimagenet' / 'ren'


def shipped_classes(split):
  """class wnid -> category wnid of a shipped split list."""
  with open(SHIPPED / f'{split}.csv') as f:
    return dict(csv.reader(f))


def shipped_words():
  with open(SHIPPED / 'words.tsv') as f:
    return dict(csv.reader(f, delimiter='\t'))


# Tiny split lists: real classes of each split, each with its own number of
# images (ragged, as every ILSVRC image of a class is used).
COUNTS = {
  split: dict(zip(shipped_classes(split), counts))
  for split, counts in (('train', (3, 1, 4)), ('val', (2, 3)), ('test', (3, 2)))
}
ALL_WNIDS = [w for classes in COUNTS.values() for w in classes]


def write_lists(folder):
  """The tiny split lists and the shipped words.tsv in `folder`."""
  folder.mkdir(parents=True, exist_ok=True)
  for split, classes in COUNTS.items():
    category = shipped_classes(split)
    rows = ''.join(f'{w},{category[w]}\n' for w in classes)
    (folder / f'{split}.csv').write_text(rows)
  (folder / 'words.tsv').write_bytes((SHIPPED / 'words.tsv').read_bytes())
  return folder


# ---- ILSVRC-2012 training images -----------------------------------------

# Each fake class's files have k among these (as many as its count): numeric
# order differs from the string order.
KS = (10, 2, 33, 7)


def ilsvrc_jpeg(rng, mode='RGB'):
  """A small noisy JPEG, 12 wide and 10 high."""
  pixels = rng.integers(0, 256, (10, 12, 3), np.uint8)
  image = Image.fromarray(pixels).convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def fake_ilsvrc(seed=0):
  """{wnid: {file name: jpeg bytes}}, COUNTS' number of files a class; the
  third class stored as grayscale."""
  rng = np.random.default_rng(seed)
  count = {w: n for classes in COUNTS.values() for w, n in classes.items()}
  return {
    w: {
      f'{w}_{k}.JPEG': ilsvrc_jpeg(rng, 'L' if i == 2 else 'RGB')
      for k in KS[: count[w]]
    }
    for i, w in enumerate(ALL_WNIDS)
  }


# ---- Ren et al.'s preprocessed files --------------------------------------


def ren_content(seed=0):
  """{split: (RGB images uint8 [N, 84, 84, 3], labels dict)}: the classes
  numbered in another order than the split list's, their images shuffled
  together, as `{split}_labels.pkl` holds them."""
  rng = np.random.default_rng(seed)
  words = shipped_words()
  out = {}
  for split, counts in COUNTS.items():
    order = list(rng.permutation(len(counts)))  # Label index -> class.
    wnids = [list(counts)[c] for c in order]
    labels = np.concatenate(
      [np.full(counts[w], i, np.int32) for i, w in enumerate(wnids)]
    )
    labels = labels[rng.permutation(len(labels))]
    category = shipped_classes(split)
    categories = sorted({category[w] for w in wnids})
    out[split] = (
      rng.integers(0, 256, (len(labels), 84, 84, 3), np.uint8),
      {
        'label_specific': labels,
        'label_general': np.array(
          [categories.index(category[wnids[i]]) for i in labels], np.int32
        ),
        'label_specific_str': [words[w] for w in wnids],
        'label_general_str': [words[c] for c in categories],
      },
    )
  return out


def png_array(image):
  """A PNG file's bytes as `cv2.imencode` returns them: uint8 `[n, 1]`."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return np.frombuffer(buffer.getvalue(), np.uint8)[:, None]


def as_bytes(labels):
  """A labels dict as loaded with `encoding='bytes'` from Python 2: bytes
  keys and bytes names."""
  encode = lambda v: [s.encode() for s in v] if isinstance(v, list) else v
  return {k.encode(): encode(v) for k, v in labels.items()}


def write_labels(root, content):
  root.mkdir(parents=True, exist_ok=True)
  for split, (_, labels) in content.items():
    name = tieredimagenet_tfds.LABEL_NAMES[split]
    (root / name).write_bytes(pickle.dumps(labels, protocol=2))
  return root


def write_pickles(root, content):
  """`{split}_labels.pkl` and `{split}_images_png.pkl` in `root`."""
  write_labels(root, content)
  for split, (images, _) in content.items():
    name = tieredimagenet_tfds.PNG_NAMES[split]
    pngs = [png_array(image) for image in images]
    (root / name).write_bytes(pickle.dumps(pngs, protocol=2))
  return root


def write_npz(root, content, compressed=False):
  """`{split}_labels.pkl` and `{split}_images.npz` (BGR, as cv2 decodes)."""
  write_labels(root, content)
  save = np.savez_compressed if compressed else np.savez
  for split, (images, _) in content.items():
    name = tieredimagenet_tfds.NPZ_NAMES[split]
    save(root / name, images=np.ascontiguousarray(images[..., ::-1]))
  return root
