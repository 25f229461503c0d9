"""The ILSVRC-2012 training images as the ImageNet subsets read them.

mini-ImageNet (`miniimagenet_tfds`) and tiered-ImageNet (`tieredimagenet_tfds`)
are classes of the ILSVRC-2012 training set, which users bring as a folder of
class folders `nXXXXXXXX/` holding `nXXXXXXXX_<k>.JPEG`, or as
`ILSVRC2012_img_train.tar` itself, a tar of per-class tars `nXXXXXXXX.tar`
(read in place, nothing is extracted to disk). A class's files are ordered by
ascending numeric `k`. Errors are the calling dataset's `DataError` subclass,
each message ending in its `how_to_get`.
"""

from __future__ import annotations

import io
from pathlib import Path
import re
import tarfile
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from jaxmeta.data import tfds_cache
from jaxmeta.data.registry import DataError

TAR_NAME = 'ILSVRC2012_img_train.tar'
IMAGENET_URL = 'https://image-net.org/challenges/LSVRC/2012/'
WNID_RE = re.compile(r'^n\d{8}$')
FILE_RE = re.compile(r'^n\d{8}_\d+\.jpe?g$', re.IGNORECASE)
# What PIL raises for a file that is not a decodable image.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def class_folder_files(folder: Path) -> Iterator[str]:
  """Names of the files in `folder`'s class folders `nXXXXXXXX/`, class
  folders in sorted order (lazily: a caller may stop at the first)."""
  if not folder.is_dir():
    return
  for sub in sorted(folder.iterdir()):
    if sub.is_dir() and WNID_RE.match(sub.name):
      for path in sub.iterdir():
        yield path.name


def select(
  names: Sequence[str],
  wnid: str,
  indices: Sequence[int] | None,
  where: str,
  error: type[DataError],
  how_to_get: str,
) -> list[str]:
  """Those of a class's file `names` that are its ILSVRC images `indices`:
  1-based ranks in ascending numeric order of `k` in `<wnid>_<k>.JPEG`; all
  of them, in that order, where `indices` is None."""
  pattern = re.compile(rf'^{wnid}_(\d+)\.jpe?g$', re.IGNORECASE)
  ks = {n: int(m[1]) for n in names if (m := pattern.match(Path(n).name))}
  ordered = sorted(ks, key=ks.__getitem__)
  fix = f'Fix: use the complete ILSVRC-2012 training class {wnid}. {how_to_get}'
  if indices is None:
    if not ordered:
      raise error(
        f'Class {wnid} has no images {wnid}_<k>.JPEG in {where}. {fix}'
      )
    return ordered
  if max(indices) > len(ordered):
    raise error(
      f'Class {wnid} has {len(ordered)} images in {where}, but the split '
      f'list needs image #{max(indices)} (1-based, in numeric order of '
      f'{wnid}_<k>.JPEG): the class is incomplete. {fix}'
    )
  return [ordered[i - 1] for i in indices]


def file_number(name: str) -> int:
  """`k` of an ILSVRC file name `[path/]nXXXXXXXX_<k>.JPEG`."""
  return int(Path(name).stem.split('_')[1])


def scan_folder(
  root: Path,
  classes: dict[str, Sequence[int] | None],
  error: type[DataError],
  how_to_get: str,
) -> dict[str, list[Path]]:
  """wnid -> its selected files (`select`) in `root/<wnid>/`."""
  selected = {}
  for wnid, indices in classes.items():
    folder = root / wnid
    if not folder.is_dir():
      raise error(f'Class {wnid} is missing: no folder {folder}. {how_to_get}')
    names = [p.name for p in folder.iterdir()]
    chosen = select(names, wnid, indices, str(folder), error, how_to_get)
    selected[wnid] = [folder / n for n in chosen]
  return selected


def tar_error(
  path: Path, e: Exception, error: type[DataError], how_to_get: str
) -> DataError:
  """The error for an unreadable train tar."""
  fix = f'Fix: replace it by an intact copy of {TAR_NAME}. {how_to_get}'
  return tfds_cache.unreadable(error, path, 'tar', e, fix)


def scan_tar(
  path: Path,
  classes: dict[str, Sequence[int] | None],
  error: type[DataError],
  how_to_get: str,
) -> dict[str, list[str]]:
  """wnid -> its selected (`select`) member names of its inner tar."""
  selected = {}
  try:
    with tarfile.open(path, 'r:*') as outer:
      members = {Path(m.name).name: m for m in outer.getmembers() if m.isfile()}
      for wnid, indices in classes.items():
        member = members.get(f'{wnid}.tar')
        if member is None:
          raise error(
            f'Class {wnid} is missing: {path} has no member {wnid}.tar '
            f'(an incomplete or truncated tar?). {how_to_get}'
          )
        with tarfile.open(
          fileobj=outer.extractfile(member), mode='r:'
        ) as inner:
          names = [m.name for m in inner.getmembers() if m.isfile()]
        where = f'{path}:{wnid}.tar'
        selected[wnid] = select(names, wnid, indices, where, error, how_to_get)
  except tfds_cache.ARCHIVE_ERRORS as e:
    raise tar_error(path, e, error, how_to_get) from e
  return selected


def preprocess(data: bytes, image_size: int) -> np.ndarray:
  """Decodes one image file to RGB (some ILSVRC images are grayscale or
  CMYK) and resizes it whole (no crop) with LANCZOS to uint8 `[S, S, 3]`,
  unless it is SxS already."""
  with Image.open(io.BytesIO(data)) as image:
    image = image.convert('RGB')
    if image.size != (image_size, image_size):
      image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def decode(
  data: bytes, image_size: int, where: str, error: type[DataError], fix: str
) -> np.ndarray:
  """`preprocess`, an undecodable file being one `error` naming `where`."""
  try:
    return preprocess(data, image_size)
  except DECODE_ERRORS as e:
    raise error(f'Cannot decode {where}: {e!r}. {fix}') from e


DECODE_FIX = 'Fix: replace it by the intact ILSVRC-2012 file.'


def read_files(
  selected: dict[str, list[Path]], image_size: int, error: type[DataError]
) -> Iterator[tuple[str, np.ndarray]]:
  """`(wnid, uint8 [n, S, S, 3])` per class of `selected` (wnid -> files)."""
  fail = error, DECODE_FIX
  for wnid, paths in selected.items():
    images = [
      decode(p.read_bytes(), image_size, f'{p} (class {wnid})', *fail)
      for p in paths
    ]
    yield wnid, np.stack(images)


def read_tar(
  path: Path,
  selected: dict[str, list[str]],
  image_size: int,
  error: type[DataError],
  how_to_get: str,
) -> Iterator[tuple[str, np.ndarray]]:
  """`(wnid, uint8 [n, S, S, 3])` per class of `selected` (wnid -> member
  names of its inner tar, from `scan_tar`), read from the train tar."""
  try:
    with tarfile.open(path, 'r:*') as outer:
      members = {Path(m.name).name: m for m in outer.getmembers() if m.isfile()}
      for wnid, names in selected.items():
        inner_file = outer.extractfile(members[f'{wnid}.tar'])
        with tarfile.open(fileobj=inner_file, mode='r:') as inner:
          images = [
            decode(
              inner.extractfile(name).read(),
              image_size,
              f'{path}:{wnid}.tar:{name} (class {wnid})',
              error,
              DECODE_FIX,
            )
            for name in names
          ]
        yield wnid, np.stack(images)
  except tfds_cache.ARCHIVE_ERRORS as e:
    raise tar_error(path, e, error, how_to_get) from e
