"""A tiny synthetic CUB-200-2011 in the real layout: the tgz and its folder.

The 200 real class folders (from the shipped split lists), each with 2 to 4
small JPEGs of varied sizes (one grayscale, one CMYK), listed in the
dataset's three lists. Within a class, image ids do not follow the file
names' order, so that reading in image-id order is what a test sees.
"""

import io
import json
from pathlib import Path
import tarfile

import numpy as np
from PIL import Image

from jaxmeta.data.registry import SPLITS
from support import REPO

SHIPPED = REPO / 'jaxmeta' / 'data' / 'splits' / 'cub' / 'chen'
ROOT = 'CUB_200_2011'
# (class index, image index in the class) stored in another colour mode.
MODES = {(1, 0): 'L', (2, 1): 'CMYK'}


def shipped_split(split):
  return json.loads((SHIPPED / f'{split}.json').read_text())


def class_names():
  """The 200 class folders in numbered order."""
  return sorted(n for split in SPLITS for n in shipped_split(split))


def per_class(c):
  """Images of class index `c`: 2, 3, 4, 2, 3, 4, ..."""
  return 2 + c % 3


def _jpeg(rng, c, mode):
  """A small noisy image whose brightness grows with the class (learnable)."""
  height, width = (int(v) for v in rng.integers(10, 40, 2))
  pixels = rng.integers(0, 64, (height, width, 3)) + (c * 37) % 192
  image = Image.fromarray(pixels.astype(np.uint8))
  if mode != 'RGB':
    image = image.convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def fake_cub(seed=0):
  """`(files, classes)`: {path under CUB_200_2011/: bytes}, and {class
  folder: [path under images/, in image-id order]}."""
  rng = np.random.default_rng(seed)
  files, classes = {}, {}
  images, labels, boxes, split = [], [], [], []
  image_id = 0
  for c, name in enumerate(class_names()):
    species = name.split('.', 1)[1]
    # File names in reverse alphabetical order of their ids.
    paths = [
      f'{name}/{species}_{9 - k:04d}_{c}.jpg' for k in range(per_class(c))
    ]
    classes[name] = paths
    for k, path in enumerate(paths):
      image_id += 1
      mode = MODES.get((c, k), 'RGB')
      files[f'images/{path}'] = _jpeg(rng, c, mode)
      images.append(f'{image_id} {path}')
      labels.append(f'{image_id} {c + 1}')
      boxes.append(f'{image_id} 1.0 2.0 8.0 6.0')
      split.append(f'{image_id} {k % 2}')
  lists = {
    'images.txt': images,
    'classes.txt': [f'{c + 1} {n}' for c, n in enumerate(classes)],
    'image_class_labels.txt': labels,
    'bounding_boxes.txt': boxes,
    'train_test_split.txt': split,
  }
  for name, lines in lists.items():
    files[name] = ('\n'.join(lines) + '\n').encode()
  files['README'] = b'The Caltech-UCSD Birds-200-2011 Dataset (synthetic)\n'
  return files, classes


def write_folder(parent, files):
  """Writes `parent/CUB_200_2011/...`; returns that folder."""
  root = Path(parent) / ROOT
  for path, data in files.items():
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_bytes(data)
  return root


def write_tgz(parent, files):
  """Writes `parent/CUB_200_2011.tgz` (folder entries, then the files under
  `CUB_200_2011/`); returns its path."""
  path = Path(parent) / f'{ROOT}.tgz'
  path.parent.mkdir(parents=True, exist_ok=True)
  folders = sorted({str(q) for p in files for q in Path(p).parents} - {'.'})
  with tarfile.open(path, 'w:gz') as archive:
    for folder in [ROOT] + [f'{ROOT}/{f}' for f in folders]:
      info = tarfile.TarInfo(folder)
      info.type = tarfile.DIRTYPE
      archive.addfile(info)
    for name, data in files.items():
      info = tarfile.TarInfo(f'{ROOT}/{name}')
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  return path
