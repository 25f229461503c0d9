"""The TensorFlow-free TFDS builder behind `jaxmeta.data.miniimagenet.load`.

The images are not shipped (ImageNet's terms); the builder reads one of four
sources a user brings, and checks every class of every split before writing:

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

The split lists are Ravi & Larochelle's CSVs (`splits/miniimagenet/ravi`): a
row `n0153282900000005.jpg,n01532829` names the image with 1-based index 5 in
ascending numeric order of `k` among class n01532829's ILSVRC files
`n01532829_<k>.JPEG` (not `k = 5`).

Images (`preprocess`) are resized whole to SxS with PIL's LANCZOS, as MAML's
`proc_images.py`; the pickles' are used unchanged (84x84). Ready-made images
and pickles were made by other code, so each source family ('ilsvrc' for
folder and tar, 'images', 'pickles') is its own builder config. The cache
holds one record per class (`tfds_cache.class_images_feature`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path
import re
import tarfile
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from jaxmeta.data import registry
from jaxmeta.data import tfds_cache
from jaxmeta.data.registry import SPLITS

SPLITS_DIR = (
  Path(__file__).resolve().parent / 'splits' / 'miniimagenet' / 'ravi'
)
SOURCE_ENV = 'JAXMETA_MINIIMAGENET_DIR'
TAR_NAME = 'ILSVRC2012_img_train.tar'
PICKLE_NAMES = {s: f'mini-imagenet-cache-{s}.pkl' for s in SPLITS}
PICKLE_SIZE = 84
IMAGENET_URL = 'https://image-net.org/challenges/LSVRC/2012/'

# A split list's file name: wnid, then the 1-based index of the image.
CSV_NAME_RE = re.compile(r'^(n\d{8})(\d{8})\.jpg$')
_WNID_RE = re.compile(r'^n\d{8}$')
_ILSVRC_FILE_RE = re.compile(r'^n\d{8}_\d+\.jpe?g$', re.IGNORECASE)

# What PIL raises for a file that is not a decodable image.
DECODE_ERRORS = (OSError, SyntaxError, ValueError)
DECODE_ERRORS += (Image.DecompressionBombError,)
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


def _select_ilsvrc(
  names: list[str], wnid: str, indices: list[int], where: str
) -> list[str]:
  """Those of a class's file `names` that are its ILSVRC images `indices`:
  1-based ranks in numeric order of `k` in `<wnid>_<k>.JPEG`."""
  pattern = re.compile(rf'^{wnid}_(\d+)\.jpe?g$', re.IGNORECASE)
  ks = {n: int(m[1]) for n in names if (m := pattern.match(Path(n).name))}
  ordered = sorted(ks, key=ks.__getitem__)
  if max(indices) > len(ordered):
    raise MiniImageNetError(
      f'Class {wnid} has {len(ordered)} images in {where}, but the split '
      f'list needs image #{max(indices)} (1-based, in numeric order of '
      f'{wnid}_<k>.JPEG): the class is incomplete. Fix: use the complete '
      f'ILSVRC-2012 training class {wnid}. {HOW_TO_GET}'
    )
  return [ordered[i - 1] for i in indices]


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
    names = [p.name for p in folder.iterdir()]
    chosen = _select_ilsvrc(names, wnid, indices, str(folder))
    selected[wnid] = [folder / n for n in chosen]
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
          names = [m.name for m in inner.getmembers() if m.isfile()]
        where = f'{path}:{wnid}.tar'
        selected[wnid] = _select_ilsvrc(names, wnid, indices, where)
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


def read_split_list(
  split: str, splits_dir: Path | None = None
) -> dict[str, list[int]]:
  """One Ravi CSV (`{split}.csv` of `splits_dir`, default `SPLITS_DIR`):
  wnid -> 1-based ILSVRC indices, both in file order."""
  path = Path(splits_dir or SPLITS_DIR) / f'{split}.csv'
  fix = 'Fix: reinstall jaxmeta or restore jaxmeta/data/splits/miniimagenet.'
  try:
    lines = path.read_text().splitlines()
  except OSError as e:
    raise MiniImageNetError(
      f'Cannot read the split list {path}: {e!r}. {fix}'
    ) from e
  rows = list(csv.reader(lines))
  if not rows or rows[0] != ['filename', 'label']:
    raise MiniImageNetError(
      f'{path}: expected the header "filename,label". {fix}'
    )
  classes = {}
  for number, row in enumerate(rows[1:], 2):
    match = CSV_NAME_RE.match(row[0]) if len(row) == 2 else None
    if match is None or match[1] != row[1]:
      raise MiniImageNetError(
        f'{path}:{number}: expected "<wnid><8-digit index>.jpg,<wnid>", got '
        f'{",".join(row)!r}. {fix}'
      )
    classes.setdefault(row[1], []).append(int(match[2]))
  return classes


def preprocess(jpeg: bytes, image_size: int) -> np.ndarray:
  """Decodes one JPEG to RGB (some ILSVRC images are grayscale or CMYK) and
  resizes it whole (no crop) with LANCZOS to uint8 `[S, S, 3]`, unless it is
  SxS already."""
  with Image.open(io.BytesIO(jpeg)) as image:
    image = image.convert('RGB')
    if image.size != (image_size, image_size):
      image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


@dataclasses.dataclass
class MiniImageNetConfig(tfds.core.BuilderConfig):
  """Builder config: where the pixels come from and their size."""

  source: str = 'ilsvrc'  # 'ilsvrc' (folder or tar) | 'images' | 'pickles'
  image_size: int = 84


def config_for(source: str, image_size: int) -> MiniImageNetConfig:
  """The (registered or ad-hoc) builder config for a source kind and size."""
  for config in JaxmetaMiniImageNet.BUILDER_CONFIGS:
    if config.source == source and config.image_size == image_size:
      return config
  return MiniImageNetConfig(
    name=f'{source}{image_size}',
    source=source,
    image_size=image_size,
    description=f'From {source}, {image_size}x{image_size}.',
  )


def config_source(kind: str) -> str:
  """Source kind ('folder' | 'tar' | 'images' | 'pickles') -> config source."""
  return {'folder': 'ilsvrc', 'tar': 'ilsvrc'}.get(kind, kind)


def check_pickle_size(source: str, image_size: int, folder: Path) -> None:
  """Refuses to read the pickles (84x84) into another `image_size`."""
  if source == 'pickles' and image_size != PICKLE_SIZE:
    raise MiniImageNetError(
      f'{folder} holds the mini-imagenet-cache pickles, which are '
      f'{PICKLE_SIZE}x{PICKLE_SIZE}; image_size={image_size} needs the '
      f'ILSVRC-2012 images. Fix: use image_size={PICKLE_SIZE} or bring the '
      'ILSVRC images.'
    )


class JaxmetaMiniImageNet(tfds_cache.SourceBuilder):
  """mini-ImageNet (Ravi & Larochelle split), without TensorFlow."""

  name = 'jaxmeta_miniimagenet'  # Not TFDS's 'jaxmeta_mini_image_net'.
  MANUAL_DOWNLOAD_INSTRUCTIONS = HOW_TO_GET
  error = MiniImageNetError
  HOMEPAGE = 'https://github.com/twitter/meta-learning-lstm'
  CITATION = (
    '@inproceedings{ravi2017optimization, title={Optimization as a Model for '
    'Few-Shot Learning}, author={Ravi, Sachin and Larochelle, Hugo}, '
    'booktitle={ICLR}, year={2017}}'
  )
  BUILDER_CONFIGS = [
    MiniImageNetConfig(
      name=f'{source}84', source=source, image_size=84, description=description
    )
    for source, description in (
      ('ilsvrc', 'ILSVRC-2012 images resized to 84x84 (LANCZOS).'),
      ('images', 'Ready-made mini-ImageNet image files, 84x84.'),
      ('pickles', 'The mini-imagenet-cache pickles, 84x84, unchanged.'),
    )
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'ilsvrc84'

  def __init__(self, *, splits_dir: os.PathLike | str | None = None, **kwargs):
    """`splits_dir`: the folder of the split CSVs (default the shipped
    lists); `**kwargs`: `source_dir=` (see `locate`) and TFDS's arguments."""
    self._splits_dir = None if splits_dir is None else Path(splits_dir)
    super().__init__(**kwargs)

  def _description(self) -> str:
    size = self.builder_config.image_size
    return (
      f'mini-ImageNet (Vinyals et al. 2016; split of Ravi & Larochelle '
      f'2017), uint8 [{size}, {size}, 3] RGB images, from '
      f'{self.builder_config.source}.'
    )

  def _features(self) -> dict[str, Any]:
    size = self.builder_config.image_size
    return {
      # One record per class: its images in split-list order.
      'images': tfds_cache.class_images_feature((size, size, 3)),
      'wnid': tfds.features.Text(),
      # Per image: the split list's 1-based ILSVRC index (ILSVRC sources) or
      # the row of the pickle's image_data (pickles).
      'source_indices': tfds.features.Tensor(shape=(None,), dtype=np.int64),
    }

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    folder, source = self.find_source(
      dl_manager, locate, 'mini-ImageNet source'
    )
    wanted = self.builder_config.source
    if config_source(source.kind) != wanted:
      raise MiniImageNetError(
        f'The builder config {self.builder_config.name!r} reads '
        f'{wanted} images, but {folder} holds {source.kind}. Fix: use the '
        f'config for {source.kind} (config_for).'
      )
    check_pickle_size(wanted, self.builder_config.image_size, folder)
    lists = {s: read_split_list(s, self._splits_dir) for s in SPLITS}
    scan = {
      'folder': lambda s: scan_folder(source.path, lists[s]),
      'tar': lambda s: scan_tar(source.path, lists[s]),
      'images': lambda s: scan_images(source.path, s, lists[s]),
      'pickles': lambda s: read_pickle(source.path / PICKLE_NAMES[s], lists[s]),
    }[source.kind]
    selected = {s: scan(s) for s in SPLITS}  # Check all before writing.
    return {
      s: self._generate_examples(source, lists[s], selected[s]) for s in SPLITS
    }

  def _generate_examples(
    self, source: Source, classes: dict[str, list[int]], selected
  ):
    """One record per class: its images in split-list order."""
    if source.kind == 'pickles':
      data, rows = selected
      for wnid in classes:
        yield self._example(wnid, data[rows[wnid]], rows[wnid])
    elif source.kind != 'tar':  # Files: 'folder' or 'images'.
      for wnid, indices in classes.items():
        images = [
          self._decode(path.read_bytes(), wnid, str(path))
          for path in selected[wnid]
        ]
        yield self._example(wnid, images, indices)
    else:
      yield from self._generate_from_tar(source.path, classes, selected)

  def _example(
    self, wnid: str, images, source_indices
  ) -> tuple[str, dict[str, Any]]:
    return wnid, {
      'images': np.stack(images),
      'wnid': wnid,
      'source_indices': np.asarray(source_indices, np.int64),
    }

  def _decode(self, jpeg: bytes, wnid: str, where: str) -> np.ndarray:
    try:
      return preprocess(jpeg, self.builder_config.image_size)
    except DECODE_ERRORS as e:
      raise MiniImageNetError(
        f'Cannot decode {where} (class {wnid}): {e!r}. Fix: replace it by '
        'the intact ILSVRC-2012 file.'
      ) from e

  def _generate_from_tar(self, path, classes, selected):
    try:
      with tarfile.open(path, 'r:*') as outer:
        members = {
          Path(m.name).name: m for m in outer.getmembers() if m.isfile()
        }
        for wnid, indices in classes.items():
          inner_file = outer.extractfile(members[f'{wnid}.tar'])
          with tarfile.open(fileobj=inner_file, mode='r:') as inner:
            images = [
              self._decode(
                inner.extractfile(name).read(),
                wnid,
                f'{path}:{wnid}.tar:{name}',
              )
              for name in selected[wnid]
            ]
          yield self._example(wnid, images, indices)
    except tfds_cache.ARCHIVE_ERRORS as e:
      raise tar_error(path, e) from e
