"""The mini-ImageNet sources a user may bring: finding and checking them.

The builder of `jaxmeta.data.miniimagenet_tfds` reads one of four:

* `'folder'`: the ILSVRC-2012 training images extracted, a folder of class
  folders `nXXXXXXXX/` holding `nXXXXXXXX_<k>.JPEG`;
* `'tar'`: `ILSVRC2012_img_train.tar` itself, a tar of per-class tars
  `nXXXXXXXX.tar` (read in place, nothing is extracted to disk);
* `'images'`: mini-ImageNet image files named as in the CSVs
  (`n0153282900000005.jpg`), as Ravi & Larochelle's `images/` folder or the
  `{train,val,test}/<wnid>/` folders that common preparation scripts write
  (e.g. MAML's `proc_images.py`); usually already 84x84;
* `'pickles'`: the preprocessed caches `mini-imagenet-cache-{train,val,test}.pkl`
  (Ren et al., 2018), dicts with `image_data` uint8 `[N, 84, 84, 3]` and
  `class_dict` {wnid: [row indices]}.

Every class of every split is checked before the builder writes anything.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
import tarfile
from typing import NamedTuple

import numpy as np

from jaxmeta.data import registry
from jaxmeta.data import tfds_cache
from jaxmeta.data.registry import SPLITS

SOURCE_ENV = 'JAXMETA_MINIIMAGENET_DIR'
TAR_NAME = 'ILSVRC2012_img_train.tar'
PICKLE_NAMES = {s: f'mini-imagenet-cache-{s}.pkl' for s in SPLITS}
PICKLE_SIZE = 84
IMAGENET_URL = 'https://image-net.org/challenges/LSVRC/2012/'

# A split list's file name: wnid, then the 1-based index of the image.
CSV_NAME_RE = re.compile(r'^(n\d{8})(\d{8})\.jpg$')
_WNID_RE = re.compile(r'^n\d{8}$')
_ILSVRC_FILE_RE = re.compile(r'^n\d{8}_\d+\.jpe?g$', re.IGNORECASE)

# Appended to every error about the source: what to bring, where to put it.
HOW_TO_GET = (
  "mini-ImageNet cannot be downloaded for you (ImageNet's terms); bring one "
  f'of: (a) the ILSVRC-2012 training images as a folder of nXXXXXXXX/ class '
  f'folders of nXXXXXXXX_<k>.JPEG, (b) {TAR_NAME} (138 GB, from '
  f'{IMAGENET_URL} after accepting its terms), (c) mini-ImageNet images '
  'named as in the split CSVs (nXXXXXXXX000000NN.jpg) in images/ or in '
  'train/, val/, test/ class folders, or (d) the three files '
  f'{", ".join(PICKLE_NAMES.values())}; and pass `source_dir=` the folder '
  f'that holds it, or set ${SOURCE_ENV}, or put it in the TFDS manual dir '
  '(<data_dir>/downloads/manual).'
)


class MiniImageNetError(registry.DataError):
  """mini-ImageNet data is missing, corrupted, malformed or asked for wrongly."""

  dataset = 'mini-ImageNet'


class Source(NamedTuple):
  """A located source: kind 'folder' | 'tar' | 'images' | 'pickles', its path."""

  kind: str
  path: Path


def locate(folder: os.PathLike | str) -> Source | None:
  """The mini-ImageNet source in `folder`, or None if there is none.

  Looks for, in this order: class folders `nXXXXXXXX/` (in `folder` or
  `folder/train`) of ILSVRC files ('folder') or CSV-named files ('images'),
  CSV-named files in `folder/images` ('images'), the train tar or `folder`
  being it ('tar'), the three pickles ('pickles'; some only: an error).
  """
  folder = Path(folder)
  if folder.is_file() and folder.name.endswith('.tar'):
    return Source('tar', folder)
  if not folder.is_dir():
    return None
  for candidate in (folder, folder / 'train'):
    kind = _class_folders_kind(candidate)
    if kind == 'folder':
      return Source('folder', candidate)
    if kind == 'images':
      return Source('images', folder)
  images = folder / 'images'
  if images.is_dir() and any(
    CSV_NAME_RE.match(p.name) for p in images.iterdir()
  ):
    return Source('images', folder)
  if (folder / TAR_NAME).is_file():
    return Source('tar', folder / TAR_NAME)
  present = [n for n in PICKLE_NAMES.values() if (folder / n).is_file()]
  if len(present) == len(PICKLE_NAMES):
    return Source('pickles', folder)
  if present:
    missing = [n for n in PICKLE_NAMES.values() if n not in present]
    raise MiniImageNetError(
      f'{folder} holds {present} but not {missing}. Fix: put all three '
      'mini-imagenet-cache pickles there.'
    )
  return None


def _class_folders_kind(folder: Path) -> str | None:
  """'folder' (ILSVRC files), 'images' (CSV-named files) or None: the kind
  of the first file in `folder`'s class folders."""
  if not folder.is_dir():
    return None
  for sub in sorted(folder.iterdir()):
    if sub.is_dir() and _WNID_RE.match(sub.name):
      for path in sub.iterdir():
        if _ILSVRC_FILE_RE.match(path.name):
          return 'folder'
        if CSV_NAME_RE.match(path.name):
          return 'images'
  return None


def _ilsvrc_index(
  k_by_name: dict[str, int], wnid: str, indices: list[int], where: str
) -> list[str]:
  """File names (of a class's ILSVRC files) selected by 1-based rank indices."""
  ordered = sorted(k_by_name, key=k_by_name.__getitem__)
  if max(indices) > len(ordered):
    raise MiniImageNetError(
      f'Class {wnid} has {len(ordered)} images in {where}, but the split '
      f'list needs image #{max(indices)} (1-based, in numeric order of '
      f'{wnid}_<k>.JPEG): the class is incomplete. Fix: use the complete '
      f'ILSVRC-2012 training class {wnid}. {HOW_TO_GET}'
    )
  return [ordered[i - 1] for i in indices]


def _jpeg_k(name: str, wnid: str) -> int | None:
  match = re.match(rf'^{wnid}_(\d+)\.jpe?g$', name, re.IGNORECASE)
  return None if match is None else int(match[1])


def scan_folder(
  root: Path, classes: dict[str, list[int]]
) -> dict[str, list[Path]]:
  """wnid -> the selected files, in split-list order; checks completeness."""
  selected = {}
  for wnid, indices in classes.items():
    folder = root / wnid
    if not folder.is_dir():
      raise MiniImageNetError(
        f'Class {wnid} is missing: no folder {folder}. {HOW_TO_GET}'
      )
    ks = {
      p.name: k
      for p in folder.iterdir()
      if (k := _jpeg_k(p.name, wnid)) is not None
    }
    names = _ilsvrc_index(ks, wnid, indices, str(folder))
    selected[wnid] = [folder / n for n in names]
  return selected


def scan_images(
  root: Path, split: str, classes: dict[str, list[int]]
) -> dict[str, list[Path]]:
  """wnid -> paths of CSV-named files, in split-list order, looked for in
  `root/images/`, `root/<split>/<wnid>/` and `root/<wnid>/`."""
  selected = {}
  for wnid, indices in classes.items():
    folders = (root / 'images', root / split / wnid, root / wnid)
    paths = []
    for index in indices:
      name = f'{wnid}{index:08d}.jpg'
      path = next((f / name for f in folders if (f / name).is_file()), None)
      if path is None:
        raise MiniImageNetError(
          f'Class {wnid} of the {split} split is incomplete: no {name} in '
          f'{[str(f) for f in folders]}. Fix: complete the images of class '
          f'{wnid}. {HOW_TO_GET}'
        )
      paths.append(path)
    selected[wnid] = paths
  return selected


def tar_error(path: Path, e: Exception) -> MiniImageNetError:
  """The error for an unreadable train tar."""
  fix = f'Fix: replace it by an intact copy of {TAR_NAME}. {HOW_TO_GET}'
  return tfds_cache.unreadable(MiniImageNetError, path, 'tar', e, fix)


def scan_tar(path: Path, classes: dict[str, list[int]]) -> dict[str, list[str]]:
  """wnid -> selected member names of its inner tar; checks completeness."""
  selected = {}
  try:
    with tarfile.open(path, 'r:*') as outer:
      members = {Path(m.name).name: m for m in outer.getmembers() if m.isfile()}
      for wnid, indices in classes.items():
        member = members.get(f'{wnid}.tar')
        if member is None:
          raise MiniImageNetError(
            f'Class {wnid} is missing: {path} has no member {wnid}.tar '
            f'(an incomplete or truncated tar?). {HOW_TO_GET}'
          )
        with tarfile.open(
          fileobj=outer.extractfile(member), mode='r:'
        ) as inner:
          ks = {
            m.name: k
            for m in inner.getmembers()
            if m.isfile()
            and (k := _jpeg_k(Path(m.name).name, wnid)) is not None
          }
        selected[wnid] = _ilsvrc_index(ks, wnid, indices, f'{path}:{wnid}.tar')
  except tfds_cache.ARCHIVE_ERRORS as e:
    raise tar_error(path, e) from e
  return selected


def read_pickle(
  path: Path, classes: dict[str, list[int]]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """One cache pickle, checked against the split list: (image_data uint8
  `[N, 84, 84, 3]`, wnid -> its rows of image_data in class_dict order)."""
  content = tfds_cache.unpickle(
    path.read_bytes(), str(path), MiniImageNetError, HOW_TO_GET
  )
  if 'image_data' not in content or 'class_dict' not in content:
    raise MiniImageNetError(
      f'{path} should hold a dict with keys image_data and class_dict. '
      f'{HOW_TO_GET}'
    )
  data = content['image_data']
  if (
    not isinstance(data, np.ndarray)
    or data.dtype != np.uint8
    or data.ndim != 4
    or data.shape[1:] != (PICKLE_SIZE, PICKLE_SIZE, 3)
  ):
    raise MiniImageNetError(
      f'{path}: image_data should be uint8 [N, {PICKLE_SIZE}, {PICKLE_SIZE}, '
      f'3], got {getattr(data, "dtype", type(data).__name__)} '
      f'{list(getattr(data, "shape", ()))}. {HOW_TO_GET}'
    )
  class_dict = {
    tfds_cache.decode_text(k): v for k, v in dict(content['class_dict']).items()
  }
  if set(class_dict) != set(classes):
    extra = sorted(set(class_dict) - set(classes))[:5]
    lacking = sorted(set(classes) - set(class_dict))[:5]
    raise MiniImageNetError(
      f'{path} holds classes {extra} not in the split list and lacks '
      f'{lacking}. Fix: use the pickle of this split. {HOW_TO_GET}'
    )
  out = {}
  for wnid, indices in classes.items():
    rows = np.asarray(class_dict[wnid], np.int64)
    if rows.shape != (len(indices),):
      raise MiniImageNetError(
        f'{path}: class {wnid} has {rows.size} images, the split list '
        f'{len(indices)}. {HOW_TO_GET}'
      )
    if rows.size and (rows.min() < 0 or rows.max() >= len(data)):
      raise MiniImageNetError(
        f'{path}: class {wnid} points at rows outside image_data. {HOW_TO_GET}'
      )
    out[wnid] = rows
  return data, out
