"""The TensorFlow-free TFDS builder behind `jaxmeta.data.tieredimagenet.load`.

tiered-ImageNet (Ren et al. 2018) is 608 classes of ILSVRC-2012 in 34
high-level categories, split by category: 351 / 97 / 160 classes in 20 / 6 / 8
categories (`splits/tieredimagenet/ren`: Ren et al.'s CSVs, one row
`class_wnid,category_wnid` per class; `words.tsv` names those wnids). Every
ILSVRC training image of a class is used, so classes are ragged (732 to 1,300
images): the cache keeps each class's count in its metadata
(`builder.info.metadata['counts']`, split -> wnid -> count).

The images are not shipped (ImageNet's terms); the builder reads one of the
sources a user brings, each its own builder config family (other code made
them), and checks every class of every split before writing:

* `'ilsvrc'`: the ILSVRC-2012 training images, a folder of class folders
  `nXXXXXXXX/` or `ILSVRC2012_img_train.tar` read in place
  (`jaxmeta.data.ilsvrc`). A class's images in ascending numeric order of `k`
  in `nXXXXXXXX_<k>.JPEG`, each resized whole to SxS with PIL's LANCZOS. Ren
  et al.'s script read them with OpenCV and resized with `cv2.INTER_CUBIC`:
  the pixels depart from theirs in the resampling filter only (their order
  was the file system's listing order, which no format fixes).
* `'pickles'`: Ren et al.'s files `{split}_images_png.pkl` (a pickled list of
  uint8 arrays, each the bytes of a PNG file written by
  `cv2.imencode('.png', bgr_image)`, so that decoding it gives RGB) with
  `{split}_labels.pkl` (a dict: `label_specific`, int `[N]`, each image's
  index into `label_specific_str`, the ImageNet names of the classes).
* `'npz'`: the decompressed `{split}_images.npz` that Ren et al.'s code
  writes from those PNG files (key `images`, uint8 `[N, 84, 84, 3]`, decoded by
  `cv2.imdecode`, so channels in BGR order: flipped to RGB here) with the same
  `{split}_labels.pkl`.

For both, a class name maps to its wnid through `words.tsv` among the split's
classes (exact match), and a class's images keep their file order.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, NamedTuple
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from jaxmeta.data import ilsvrc
from jaxmeta.data import registry
from jaxmeta.data import tfds_cache
from jaxmeta.data.ilsvrc import TAR_NAME
from jaxmeta.data.miniimagenet_tfds import config_source
from jaxmeta.data.registry import SPLITS

SPLITS_DIR = (
  Path(__file__).resolve().parent / 'splits' / 'tieredimagenet' / 'ren'
)
SOURCE_ENV = 'JAXMETA_TIEREDIMAGENET_DIR'
REN_SIZE = 84  # The side of Ren et al.'s images.
LABEL_NAMES = {s: f'{s}_labels.pkl' for s in SPLITS}
PNG_NAMES = {s: f'{s}_images_png.pkl' for s in SPLITS}
NPZ_NAMES = {s: f'{s}_images.npz' for s in SPLITS}
REN_URL = 'https://github.com/renmengye/few-shot-ssl-public'
# Appended to every error about the source: what to bring, where to put it.
HOW_TO_GET = (
  "tiered-ImageNet cannot be downloaded for you (ImageNet's terms); bring "
  'one of: (a) the ILSVRC-2012 training images as a folder of nXXXXXXXX/ '
  f'class folders of nXXXXXXXX_<k>.JPEG, (b) {TAR_NAME} (138 GB, from '
  f'{ilsvrc.IMAGENET_URL} after accepting its terms), (c) the three '
  '{train,val,test}_labels.pkl of Ren et al. with their three '
  '{train,val,test}_images_png.pkl (tiered-imagenet.tar, see '
  f'{REN_URL}) or three {{train,val,test}}_images.npz; and pass '
  f'`source_dir=` the folder that holds it, or set ${SOURCE_ENV}, or put it '
  'in the TFDS manual dir (<data_dir>/downloads/manual).'
)


class TieredImageNetError(registry.DataError):
  """tiered-ImageNet data is missing, corrupted, malformed or asked for wrongly."""

  dataset = 'tiered-ImageNet'


class Source(NamedTuple):
  """A located source: kind 'folder' | 'tar' | 'pickles' | 'npz', its path."""

  kind: str
  path: Path


def locate(folder: os.PathLike | str) -> Source | None:
  """The tiered-ImageNet source in `folder`, or None if there is none.

  Looks for, in this order: ILSVRC class folders `nXXXXXXXX/` in `folder` or
  `folder/train` ('folder'), the train tar or `folder` being it ('tar'), the
  labels with the npz files ('npz') or the PNG pickles ('pickles') of every
  split (some only: an error naming the missing).
  """
  folder = Path(folder)
  if folder.is_file() and folder.name.endswith('.tar'):
    return Source('tar', folder)
  if not folder.is_dir():
    return None
  for candidate in (folder, folder / 'train'):
    names = ilsvrc.class_folder_files(candidate)
    if any(ilsvrc.FILE_RE.match(name) for name in names):
      return Source('folder', candidate)
  if (folder / TAR_NAME).is_file():
    return Source('tar', folder / TAR_NAME)
  missing = {}
  for kind, images in (('npz', NPZ_NAMES), ('pickles', PNG_NAMES)):
    needed = [*LABEL_NAMES.values(), *images.values()]
    missing[kind] = [n for n in needed if not (folder / n).is_file()]
    if not missing[kind]:
      return Source(kind, folder)
  names = {*LABEL_NAMES.values(), *PNG_NAMES.values(), *NPZ_NAMES.values()}
  if any((folder / n).is_file() for n in names):
    raise TieredImageNetError(
      f"{folder} holds some of Ren et al.'s tiered-ImageNet files but not "
      f'{min(missing.values(), key=len)}. Fix: put all of them there. '
      f'{HOW_TO_GET}'
    )
  return None


def check_ren_size(source: str, image_size: int, folder: Path) -> None:
  """Refuses to read Ren et al.'s files (84x84) into another `image_size`."""
  if source in ('pickles', 'npz') and image_size != REN_SIZE:
    raise TieredImageNetError(
      f"{folder} holds Ren et al.'s tiered-ImageNet {source}, which are "
      f'{REN_SIZE}x{REN_SIZE}; image_size={image_size} needs the ILSVRC-2012 '
      f'images. Fix: use image_size={REN_SIZE} or bring the ILSVRC images.'
    )


_LISTS_FIX = (
  'Fix: reinstall jaxmeta or restore jaxmeta/data/splits/tieredimagenet.'
)


def _read_rows(path: Path, delimiter: str) -> list[list[str]]:
  try:
    lines = path.read_text().splitlines()
  except OSError as e:
    raise TieredImageNetError(
      f'Cannot read the split list {path}: {e!r}. {_LISTS_FIX}'
    ) from e
  return list(csv.reader(lines, delimiter=delimiter))


def read_split_list(
  split: str, splits_dir: Path | None = None
) -> dict[str, str]:
  """One of Ren et al.'s CSVs (`{split}.csv` of `splits_dir`, default
  `SPLITS_DIR`): class wnid -> its category's wnid, in file order."""
  path = Path(splits_dir or SPLITS_DIR) / f'{split}.csv'
  classes = {}
  for number, row in enumerate(_read_rows(path, ','), 1):
    if len(row) != 2 or not all(ilsvrc.WNID_RE.match(w) for w in row):
      raise TieredImageNetError(
        f'{path}:{number}: expected "<class wnid>,<category wnid>", got '
        f'{",".join(row)!r}. {_LISTS_FIX}'
      )
    classes[row[0]] = row[1]
  return classes


def read_words(splits_dir: Path | None = None) -> dict[str, str]:
  """`words.tsv` of `splits_dir` (default `SPLITS_DIR`): wnid -> its names
  (ImageNet's, e.g. 'goldfish, Carassius auratus')."""
  path = Path(splits_dir or SPLITS_DIR) / 'words.tsv'
  rows = _read_rows(path, '\t')
  if not all(len(row) == 2 for row in rows):
    raise TieredImageNetError(
      f'{path}: expected lines "<wnid><TAB><names>". {_LISTS_FIX}'
    )
  return dict(rows)


def read_labels(
  path: Path, split: str, classes: dict[str, str], words: dict[str, str]
) -> tuple[int, dict[str, np.ndarray]]:
  """One `{split}_labels.pkl`, checked against the split list.

  Returns:
    `(N, rows)`: the number of images and, per class wnid in split-list
    order, the indices of its images (file order) among them.
  """
  content = tfds_cache.unpickle(
    path.read_bytes(), str(path), TieredImageNetError, HOW_TO_GET
  )
  labels, names = (
    content.get(k) for k in ('label_specific', 'label_specific_str')
  )
  if labels is None or names is None:
    raise TieredImageNetError(
      f'{path} should hold a dict with keys label_specific and '
      f'label_specific_str, got {sorted(content)}. {HOW_TO_GET}'
    )
  labels = np.asarray(labels)
  if (
    labels.ndim != 1
    or not np.issubdtype(labels.dtype, np.integer)
    or (labels.size and not 0 <= labels.min() <= labels.max() < len(names))
  ):
    raise TieredImageNetError(
      f'{path}: label_specific should be ints [N] indexing the '
      f'{len(names)} names of label_specific_str, got {labels.dtype} '
      f'{list(labels.shape)}. {HOW_TO_GET}'
    )
  by_name = {words.get(w): w for w in classes}
  if len(by_name) != len(classes) or None in by_name:
    raise TieredImageNetError(
      f'words.tsv does not give each class of the {split} split a name of '
      f'its own. {_LISTS_FIX}'
    )
  wnids = []
  for i, name in enumerate(tfds_cache.decode_text(n) for n in names):
    wnid = by_name.get(name)
    if wnid is None or wnid in wnids:
      what = (
        f'is the name of no class of the {split} split (words.tsv)'
        if wnid is None
        else f'names class {wnid} a second time'
      )
      raise TieredImageNetError(
        f'{path}: label_specific_str[{i}] = {name!r} {what}. Fix: use Ren '
        f"et al.'s {split} files. {HOW_TO_GET}"
      )
    wnids.append(wnid)
  counts = np.bincount(labels, minlength=len(wnids))
  for wnid in classes:
    if wnid not in wnids or not counts[wnids.index(wnid)]:
      raise TieredImageNetError(
        f'{path} has no images of class {wnid} ({words[wnid]}) of the '
        f"{split} split. Fix: use Ren et al.'s {split} files. {HOW_TO_GET}"
      )
  order = np.argsort(labels, kind='stable')  # File order within a class.
  starts = np.concatenate([[0], np.cumsum(counts)])
  rows = {w: order[starts[c] : starts[c + 1]] for c, w in enumerate(wnids)}
  return len(labels), {w: rows[w] for w in classes}


def npz_images(path: Path, num_images: int) -> np.ndarray:
  """The `images` of one `{split}_images.npz`, checked to be uint8
  `[num_images, 84, 84, 3]`: memory-mapped where stored uncompressed (as
  `np.savez` writes), else read."""
  shape = (num_images, REN_SIZE, REN_SIZE, 3)
  try:
    with zipfile.ZipFile(path) as archive:
      info = archive.getinfo('images.npy')
      with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        read_header = {
          (1, 0): np.lib.format.read_array_header_1_0,
          (2, 0): np.lib.format.read_array_header_2_0,
        }[version]
        got, fortran, dtype = read_header(member)
        header_size = member.tell()
      with open(path, 'rb') as f:  # The member's local header: 30 bytes
        f.seek(info.header_offset + 26)  # and two lengths of what follows.
        lengths = np.frombuffer(f.read(4), '<u2')
  except (*tfds_cache.ARCHIVE_ERRORS, KeyError, ValueError) as e:
    raise tfds_cache.unreadable(
      TieredImageNetError,
      path,
      'npz of images (key images)',
      e,
      f'Fix: replace it by an intact copy. {HOW_TO_GET}',
    ) from e
  if got != shape or dtype != np.uint8 or fortran:
    raise TieredImageNetError(
      f'{path}: images should be uint8 {list(shape)} (one per label), got '
      f'{dtype} {list(got)}. {HOW_TO_GET}'
    )
  if info.compress_type != zipfile.ZIP_STORED:
    with np.load(path) as content:
      return content['images']
  offset = info.header_offset + 30 + int(lengths.sum()) + header_size
  return np.memmap(path, np.uint8, 'r', offset=offset, shape=shape)


def _png_files(path: Path, num_images: int) -> list:
  """The list of one `{split}_images_png.pkl`: `num_images` PNG files."""
  with open(path, 'rb') as f:
    pngs = tfds_cache.load_pickle(f, str(path), TieredImageNetError, HOW_TO_GET)
  if not isinstance(pngs, (list, tuple)) or len(pngs) != num_images:
    got = type(pngs).__name__
    if isinstance(pngs, (list, tuple)):
      got = f'{len(pngs)} items'
    raise TieredImageNetError(
      f'{path} should hold a list of {num_images} PNG files, one per label '
      f'of the split, got {got}. {HOW_TO_GET}'
    )
  return pngs


class JaxmetaTieredImageNet(tfds_cache.SourceBuilder):
  """tiered-ImageNet (Ren et al. 2018), without TensorFlow."""

  name = 'jaxmeta_tieredimagenet'
  MANUAL_DOWNLOAD_INSTRUCTIONS = HOW_TO_GET
  error = TieredImageNetError
  HOMEPAGE = REN_URL
  CITATION = (
    '@inproceedings{ren2018metalearning, title={Meta-Learning for '
    'Semi-Supervised Few-Shot Classification}, author={Ren, Mengye and '
    'Triantafillou, Eleni and Ravi, Sachin and Snell, Jake and Swersky, '
    'Kevin and Tenenbaum, Joshua B. and Larochelle, Hugo and Zemel, Richard '
    'S.}, booktitle={ICLR}, year={2018}}'
  )
  BUILDER_CONFIGS = [
    tfds_cache.SourceConfig(
      name=f'{source}84', source=source, image_size=84, description=description
    )
    for source, description in (
      ('ilsvrc', 'ILSVRC-2012 images resized to 84x84 (LANCZOS).'),
      ('pickles', "Ren et al.'s PNG pickles, 84x84, unchanged."),
      ('npz', "Ren et al.'s npz files (BGR), 84x84, flipped to RGB."),
    )
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'ilsvrc84'

  def __init__(self, *, splits_dir: os.PathLike | str | None = None, **kwargs):
    """`splits_dir`: the folder of the split lists and words.tsv (default the
    shipped ones); `**kwargs`: `source_dir=` (see `locate`) and TFDS's."""
    self._splits_dir = None if splits_dir is None else Path(splits_dir)
    super().__init__(**kwargs)

  def _description(self) -> str:
    size = self.builder_config.image_size
    return (
      f'tiered-ImageNet (Ren et al. 2018), uint8 [{size}, {size}, 3] RGB '
      f'images, every ILSVRC-2012 training image of each class, from '
      f'{self.builder_config.source}.'
    )

  def _features(self) -> dict[str, Any]:
    size = self.builder_config.image_size
    return {
      # One record per class: all its images.
      'images': tfds_cache.class_images_feature((size, size, 3)),
      'wnid': tfds.features.Text(),
      # Per image: k of its ILSVRC file nXXXXXXXX_<k>.JPEG, or its index in
      # Ren et al.'s files of the split.
      'source_indices': tfds.features.Tensor(shape=(None,), dtype=np.int64),
    }

  def _metadata(self) -> tfds.core.MetadataDict:
    return tfds.core.MetadataDict()

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    folder, source = self.find_source(
      dl_manager, locate, 'tiered-ImageNet source'
    )
    wanted = self.builder_config.source
    if config_source(source.kind) != wanted:
      raise TieredImageNetError(
        f'The builder config {self.builder_config.name!r} reads '
        f'{wanted} images, but {folder} holds {source.kind}. Fix: use the '
        f'config for {source.kind} (config_for).'
      )
    check_ren_size(wanted, self.builder_config.image_size, folder)
    lists = {s: read_split_list(s, self._splits_dir) for s in SPLITS}
    checked = {s: self._check(source, s, lists[s]) for s in SPLITS}
    self.info.metadata['counts'] = {  # Counted before anything is written.
      s: {w: len(v) for w, v in checked[s][1].items()} for s in SPLITS
    }
    return {s: self._generate_examples(source, s, *checked[s]) for s in SPLITS}

  def _check(
    self, source: Source, split: str, classes: dict[str, str]
  ) -> tuple[int | None, dict[str, Any]]:
    """`(N, selected)`: wnid -> its images in the source (ILSVRC paths or
    member names, N None; or indices among the N of Ren et al.'s files), for
    every class of the split in split-list order."""
    errors = TieredImageNetError, HOW_TO_GET
    everything = dict.fromkeys(classes)  # All of each class's images.
    if source.kind == 'folder':
      return None, ilsvrc.scan_folder(source.path, everything, *errors)
    if source.kind == 'tar':
      return None, ilsvrc.scan_tar(source.path, everything, *errors)
    words = read_words(self._splits_dir)
    labels = source.path / LABEL_NAMES[split]
    num_images, rows = read_labels(labels, split, classes, words)
    if source.kind == 'npz':
      npz_images(source.path / NPZ_NAMES[split], num_images)  # Its header.
    return num_images, rows

  def _generate_examples(
    self, source: Source, split: str, num_images: int | None, selected
  ):
    """One record per class, in split-list order."""
    size = self.builder_config.image_size
    if source.kind == 'folder':
      read = ilsvrc.read_files(selected, size, TieredImageNetError)
    elif source.kind == 'tar':
      read = ilsvrc.read_tar(
        source.path, selected, size, TieredImageNetError, HOW_TO_GET
      )
    elif source.kind == 'pickles':
      read = _read_pngs(source.path / PNG_NAMES[split], num_images, selected)
    else:
      read = _read_npz(source.path / NPZ_NAMES[split], num_images, selected)
    for wnid, images in read:
      indices = selected[wnid]
      if num_images is None:  # ILSVRC files: their k.
        indices = [ilsvrc.file_number(str(name)) for name in indices]
      record = {
        'images': images,
        'wnid': wnid,
        'source_indices': np.asarray(indices, np.int64),
      }
      yield wnid, record


def _read_pngs(path: Path, num_images: int, rows: dict[str, np.ndarray]):
  """`(wnid, uint8 [n, 84, 84, 3])` per class of `rows`, from the PNG files
  of a `{split}_images_png.pkl`."""
  pngs = _png_files(path, num_images)
  fix = f'Fix: replace {path} by an intact copy. {HOW_TO_GET}'
  for wnid, indices in rows.items():
    images = []
    for i in indices:
      where = f'{path}, item {i} (class {wnid})'
      if isinstance(pngs[i], np.ndarray) and pngs[i].dtype == np.uint8:
        data = pngs[i].tobytes()
      elif isinstance(pngs[i], bytes):
        data = pngs[i]
      else:
        raise TieredImageNetError(
          f'Cannot decode {where}: a {type(pngs[i]).__name__}, not the uint8 '
          f'array of a PNG file. {fix}'
        )
      images.append(
        ilsvrc.decode(data, REN_SIZE, where, TieredImageNetError, fix)
      )
    yield wnid, np.stack(images)


def _read_npz(path: Path, num_images: int, rows: dict[str, np.ndarray]):
  """`(wnid, uint8 [n, 84, 84, 3])` per class of `rows`, from the BGR images
  of a `{split}_images.npz`, flipped to RGB."""
  images = npz_images(path, num_images)
  for wnid, indices in rows.items():
    yield wnid, np.ascontiguousarray(images[indices][..., ::-1])
