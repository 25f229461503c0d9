"""The TensorFlow-free TFDS builder behind `jaxmeta.data.cub.load`.

CUB-200-2011 (Wah et al., 2011) is not redistributed here; the builder reads
one of two sources a user brings, and checks every class of every split
before writing:

* `'tgz'`: `CUB_200_2011.tgz` itself, read in place (nothing is extracted to
  disk);
* `'folder'`: the `CUB_200_2011/` folder extracted from it.

Both hold `CUB_200_2011/images.txt` (`<image_id> <class_folder>/<file>.jpg`),
`classes.txt` (`<class_id> <class_folder>`), `image_class_labels.txt`
(`<image_id> <class_id>`) and the JPEGs `CUB_200_2011/images/<class_folder>/
<file>.jpg`. A class's examples are its images in image-id order; classes
hold unequal numbers of them, so the cache holds one record `[n, S, S, 3]`
per class (`tfds_cache.class_images_feature`) and the loader pads.

Images are decoded to RGB (a few are grayscale or CMYK) and resized whole to
SxS with PIL's LANCZOS, as mini-ImageNet's (`ilsvrc.preprocess`).
This departs from Chen et al. (2019), who resize and crop on the fly (random
crops in training; a resize to 1.15 S and a centre crop at test time), and
from work that crops to the bounding boxes first: here the whole image, no
bounding box. Both sources give the same pixels: the cache is per image size.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
import re
import tarfile
from typing import Any, Callable, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jaxmeta.data import registry
from jaxmeta.data import tfds_cache
from jaxmeta.data.ilsvrc import DECODE_ERRORS
from jaxmeta.data.ilsvrc import preprocess
from jaxmeta.data.registry import SPLITS

SPLITS_DIR = Path(__file__).resolve().parent / 'splits' / 'cub' / 'chen'
SOURCE_ENV = 'JAXMETA_CUB_DIR'
TGZ_NAME = 'CUB_200_2011.tgz'
ROOT = 'CUB_200_2011'  # The folder of the tgz: lists and images/.
LISTS = ('images.txt', 'classes.txt', 'image_class_labels.txt')
CUB_URL = 'https://www.vision.caltech.edu/datasets/cub_200_2011/'

# A class folder name: its 3-digit number, a dot, the species.
CLASS_NAME_RE = re.compile(r'^\d{3}\.\S+$')
# Appended to every error about the source: what to bring, where to put it.
HOW_TO_GET = (
  f'Fix: download {TGZ_NAME} (1.1 GB; CUB-200-2011 is not redistributed '
  f'here) from {CUB_URL} and pass `source_dir=` the folder that holds it '
  f'(or the {ROOT}/ folder extracted from it), or set ${SOURCE_ENV}, or put '
  'it in the TFDS manual dir (<data_dir>/downloads/manual).'
)


class CUBError(registry.DataError):
  """CUB-200-2011 data is missing, corrupted, malformed or asked for wrongly."""

  dataset = 'CUB-200-2011'


class Source(NamedTuple):
  """A located source: kind 'tgz' | 'folder', and the tgz or `ROOT` folder."""

  kind: str
  path: Path


# class folder -> its images, in image-id order: (image id, path under
# images/, e.g. '001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg').
Classes = dict[str, list[tuple[int, str]]]


def locate(folder: os.PathLike | str) -> Source | None:
  """The CUB source at `folder`, or None if there is none.

  Accepts, in this order: the tgz itself, the extracted `CUB_200_2011/` (a
  folder holding `images.txt`) or a folder holding it, a folder holding
  `CUB_200_2011.tgz`.
  """
  folder = Path(folder)
  if folder.is_file() and folder.name.endswith(('.tgz', '.tar.gz')):
    return Source('tgz', folder)
  for root in (folder, folder / ROOT):
    if (root / LISTS[0]).is_file():
      return Source('folder', root)
  if (folder / TGZ_NAME).is_file():
    return Source('tgz', folder / TGZ_NAME)
  return None


def _numbered(text: str, where: str) -> dict[int, str]:
  """The lines `<int> <value>` of one of the dataset's lists, by number."""
  out = {}
  for number, line in enumerate(text.splitlines(), 1):
    parts = line.split()
    if not parts:
      continue
    if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) in out:
      raise CUBError(
        f'{where}:{number}: expected "<id> <value>" with a new id, got '
        f'{line!r}. Fix: use the intact file from {TGZ_NAME}.'
      )
    out[int(parts[0])] = parts[1]
  return out


def read_lists(read: Callable[[str], bytes], where: str) -> Classes:
  """Every class's images from the three lists of `LISTS`.

  Args:
    read: `read(name)`, the bytes of the list `name` (e.g. 'images.txt').
    where: the source's `ROOT` (path or tgz member prefix), for messages.

  Returns:
    class folder -> [(image id, path under images/)], in image-id order.
  """
  paths, classes, labels = (
    _numbered(read(name).decode(errors='replace'), f'{where}/{name}')
    for name in LISTS
  )
  out = {}
  for image_id, path in sorted(paths.items()):
    label = labels.get(image_id, '')
    name = classes.get(int(label)) if label.isdigit() else None
    if name is None or path.split('/')[0] != name:
      raise CUBError(
        f'{where}: image {image_id} ({path}) has no class in '
        f'image_class_labels.txt and classes.txt that matches its folder. '
        f'Fix: use the intact lists from {TGZ_NAME}.'
      )
    out.setdefault(name, []).append((image_id, path))
  return out


def _check_classes(
  listed: Classes,
  split: str,
  names: list[str],
  present: Callable[[str], bool],
  where: str,
) -> Classes:
  """The split's classes of `listed`; each must be listed and have every
  image `present(path)` (a path under images/)."""
  selected = {}
  for name in names:
    if name not in listed:
      raise CUBError(
        f'Class {name} of the {split} split is missing: {where}/images.txt '
        f'lists no image of it. {HOW_TO_GET}'
      )
    lacking = [p for _, p in listed[name] if not present(p)]
    if len(lacking) == len(listed[name]):
      raise CUBError(
        f'Class {name} of the {split} split is missing: no '
        f'{where}/images/{name}/ (an incomplete extraction, or a truncated '
        f'archive?). {HOW_TO_GET}'
      )
    if lacking:
      raise CUBError(
        f'Class {name} of the {split} split is incomplete: no '
        f'{where}/images/{lacking[0]} (an incomplete extraction, or a '
        f'truncated archive?). {HOW_TO_GET}'
      )
    selected[name] = listed[name]
  return selected


def scan_folder(root: Path, lists: dict[str, list[str]]) -> dict[str, Classes]:
  """split -> its classes' images, checked against the files under `root`."""
  for name in LISTS:
    if not (root / name).is_file():
      raise CUBError(f'{root} has no {name}. {HOW_TO_GET}')
  listed = read_lists(lambda name: (root / name).read_bytes(), str(root))
  present = lambda path: (root / 'images' / path).is_file()
  return {
    s: _check_classes(listed, s, names, present, str(root))
    for s, names in lists.items()
  }


def _member_names(archive: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
  """Regular files of `archive` by name, without a leading './'."""
  return {
    m.name.removeprefix('./'): m for m in archive.getmembers() if m.isfile()
  }


def tgz_error(path: Path, e: Exception) -> CUBError:
  """The error for an unreadable tgz."""
  fix = f'Fix: replace it by an intact copy of {TGZ_NAME} from {CUB_URL}.'
  return tfds_cache.unreadable(CUBError, str(path), 'tgz', e, fix)


def scan_tgz(path: Path, lists: dict[str, list[str]]) -> dict[str, Classes]:
  """`scan_folder` for the tgz: reads it through once."""
  where = f'{path}:{ROOT}'
  try:
    with tarfile.open(path, 'r:*') as archive:
      members = _member_names(archive)
      for name in LISTS:
        if f'{ROOT}/{name}' not in members:
          raise CUBError(
            f'{path} has no member {ROOT}/{name} (not {TGZ_NAME}, or '
            f'truncated?). {HOW_TO_GET}'
          )
      read = lambda name: archive.extractfile(members[f'{ROOT}/{name}']).read()
      listed = read_lists(read, where)
  except tfds_cache.ARCHIVE_ERRORS as e:
    raise tgz_error(path, e) from e
  present = lambda image: f'{ROOT}/images/{image}' in members
  return {
    s: _check_classes(listed, s, names, present, where)
    for s, names in lists.items()
  }


def read_split_list(split: str, splits_dir: Path | None = None) -> list[str]:
  """One split list (`{split}.json` of `splits_dir`, default `SPLITS_DIR`):
  its class folder names, in file order."""
  path = Path(splits_dir or SPLITS_DIR) / f'{split}.json'
  fix = 'Fix: reinstall jaxmeta or restore jaxmeta/data/splits/cub.'
  try:
    names = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise CUBError(f'Cannot read the split list {path}: {e!r}. {fix}') from e
  if (
    not isinstance(names, list)
    or not all(isinstance(n, str) and CLASS_NAME_RE.match(n) for n in names)
    or len(set(names)) != len(names)
  ):
    raise CUBError(
      f'{path}: expected a JSON list of distinct class folder names such as '
      f'"001.Black_footed_Albatross". {fix}'
    )
  return names


@dataclasses.dataclass
class CUBConfig(tfds.core.BuilderConfig):
  """Builder config: the side of the square images."""

  image_size: int = 84


def config_for(image_size: int) -> CUBConfig:
  """The (registered or ad-hoc) builder config for an image size."""
  for config in JaxmetaCUB.BUILDER_CONFIGS:
    if config.image_size == image_size:
      return config
  return CUBConfig(
    name=f'whole{image_size}',
    image_size=image_size,
    description=f'Whole images resized to {image_size}x{image_size}.',
  )


class JaxmetaCUB(tfds_cache.SourceBuilder):
  """CUB-200-2011 (split of Chen et al. 2019), without TensorFlow."""

  name = 'jaxmeta_cub'
  MANUAL_DOWNLOAD_INSTRUCTIONS = HOW_TO_GET
  error = CUBError
  HOMEPAGE = CUB_URL
  CITATION = (
    '@techreport{WahCUB_200_2011, title={The Caltech-UCSD Birds-200-2011 '
    'Dataset}, author={Wah, C. and Branson, S. and Welinder, P. and Perona, '
    'P. and Belongie, S.}, institution={California Institute of Technology}, '
    'number={CNS-TR-2011-001}, year={2011}}'
  )
  BUILDER_CONFIGS = [
    CUBConfig(
      name='whole84',
      image_size=84,
      description='Whole images resized to 84x84 (LANCZOS), no cropping.',
    )
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'whole84'

  def __init__(self, *, splits_dir: os.PathLike | str | None = None, **kwargs):
    """`splits_dir`: the folder of the split lists (default the shipped
    ones); `**kwargs`: `source_dir=` (see `locate`) and TFDS's arguments."""
    self._splits_dir = None if splits_dir is None else Path(splits_dir)
    super().__init__(**kwargs)

  def _description(self) -> str:
    size = self.builder_config.image_size
    return (
      f'CUB-200-2011 (Wah et al. 2011; split of Chen et al. 2019), uint8 '
      f'[{size}, {size}, 3] RGB images, whole images resized.'
    )

  def _features(self) -> dict[str, Any]:
    size = self.builder_config.image_size
    return {
      # One record per class: its images in image-id order.
      'images': tfds_cache.class_images_feature((size, size, 3)),
      'class_name': tfds.features.Text(),
      'image_ids': tfds.features.Tensor(shape=(None,), dtype=np.int64),
    }

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    _, source = self.find_source(dl_manager, locate, 'CUB-200-2011 source')
    lists = {s: read_split_list(s, self._splits_dir) for s in SPLITS}
    scan = scan_tgz if source.kind == 'tgz' else scan_folder
    selected = scan(source.path, lists)  # Checks all before writing.
    return {s: self._generate_examples(source, selected[s]) for s in SPLITS}

  def _example(self, name: str, images: list[tuple[int, np.ndarray]]):
    ids, arrays = zip(*images)
    return name, {
      'images': np.stack(arrays),
      'class_name': name,
      'image_ids': np.asarray(ids, np.int64),
    }

  def _decode(self, jpeg: bytes, name: str, where: str) -> np.ndarray:
    try:
      return preprocess(jpeg, self.builder_config.image_size)
    except DECODE_ERRORS as e:
      raise CUBError(
        f'Cannot decode {where} (class {name}): {e!r}. Fix: replace it by '
        f'the intact file from {TGZ_NAME}.'
      ) from e

  def _generate_examples(self, source: Source, classes: Classes):
    """One record per class: its images in image-id order."""
    if source.kind == 'tgz':
      yield from self._generate_from_tgz(source.path, classes)
      return
    for name, images in classes.items():
      decoded = []
      for image_id, path in images:
        file = source.path / 'images' / path
        decoded.append((image_id, self._decode(file.read_bytes(), name, file)))
      yield self._example(name, decoded)

  def _generate_from_tgz(self, path: Path, classes: Classes):
    """One record per class, reading the tgz through once: a class is
    written when its last image has been read."""
    wanted = {
      f'{ROOT}/images/{image}': (name, image_id)
      for name, images in classes.items()
      for image_id, image in images
    }
    pending = {name: [] for name in classes}
    try:
      with tarfile.open(path, 'r|*') as archive:
        for member in archive:
          entry = wanted.get(member.name.removeprefix('./'))
          if entry is None or not member.isfile():
            continue
          name, image_id = entry
          jpeg = archive.extractfile(member).read()
          where = f'{path}:{member.name}'
          pending[name].append((image_id, self._decode(jpeg, name, where)))
          if len(pending[name]) == len(classes[name]):
            yield self._example(name, sorted(pending.pop(name)))
    except tfds_cache.ARCHIVE_ERRORS as e:
      raise tgz_error(path, e) from e
    if pending:
      raise CUBError(
        f'{path} changed while it was read: classes {sorted(pending)[:3]} '
        f'are incomplete. Fix: load again. {HOW_TO_GET}'
      )
