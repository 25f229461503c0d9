"""The TensorFlow-free TFDS builder behind `jaxmeta.data.miniimagenet.load`.

It reads one of the sources of `jaxmeta.data.miniimagenet_sources`. The split
lists are Ravi & Larochelle's CSVs (`jaxmeta/data/splits/miniimagenet/ravi`):
a row `n0153282900000005.jpg,n01532829` names the image with 1-based index 5
in ascending numeric order of `k` among class n01532829's ILSVRC files
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
import tarfile
from typing import Any

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from jaxmeta.data import tfds_cache
from jaxmeta.data.miniimagenet_sources import CSV_NAME_RE
from jaxmeta.data.miniimagenet_sources import HOW_TO_GET
from jaxmeta.data.miniimagenet_sources import locate
from jaxmeta.data.miniimagenet_sources import MiniImageNetError
from jaxmeta.data.miniimagenet_sources import PICKLE_NAMES
from jaxmeta.data.miniimagenet_sources import PICKLE_SIZE
from jaxmeta.data.miniimagenet_sources import read_pickle
from jaxmeta.data.miniimagenet_sources import scan_folder
from jaxmeta.data.miniimagenet_sources import scan_images
from jaxmeta.data.miniimagenet_sources import scan_tar
from jaxmeta.data.miniimagenet_sources import Source
from jaxmeta.data.miniimagenet_sources import tar_error
from jaxmeta.data.registry import SPLITS

SPLITS_DIR = (
  Path(__file__).resolve().parent / 'splits' / 'miniimagenet' / 'ravi'
)


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
    except (
      OSError,
      SyntaxError,
      ValueError,
      Image.DecompressionBombError,
    ) as e:
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
