"""mini-ImageNet for few-shot classification: class-major image arrays per split.

`load` returns every image of every class of one split as a single uint8 array
`[classes, 600, S, S, 3]` (S = 84 by default). Split scheme `'ravi'` (the only
one): the CSVs of Ravi & Larochelle (2017), shipped in
`jaxmeta/data/splits/miniimagenet/ravi`: 64 / 16 / 20 classes of ILSVRC-2012,
600 images each; classes and images in the CSV's order (or the pickle's
`class_dict` order).

Images are not shipped and cannot be downloaded (ImageNet's terms): the first
load prepares a TFDS cache (`jaxmeta.data.miniimagenet_tfds`) from a source the
user brings, found with the cache as `jaxmeta.data.tfds_cache` says
(`$JAXMETA_MINIIMAGENET_DIR`). The cache is per source family (ILSVRC,
ready-made images, pickles) and image size; with no source found, an existing
cache is used, in that order of preference.

Memory: 21 KB per 84x84 image; train 813 MB, val 203 MB, test 254 MB as uint8.
"""

from __future__ import annotations

from jaxmeta.data import miniimagenet_tfds
from jaxmeta.data import tfds_cache
from jaxmeta.data.miniimagenet_tfds import MiniImageNetError
from jaxmeta.data.miniimagenet_tfds import PICKLE_SIZE
from jaxmeta.data.registry import ClassImages
from jaxmeta.data.registry import register_dataset

SCHEMES = ('ravi',)
SOURCE_ENV = miniimagenet_tfds.SOURCE_ENV


@register_dataset('miniimagenet')
def load(
  split: str = 'train',
  scheme: str = 'ravi',
  *,
  image_size: int = 84,
  data_dir: str | None = None,
  source_dir: str | None = None,
) -> ClassImages:
  """Loads one split of mini-ImageNet as a class-major image array.

  Args:
    split: 'train' (64 classes), 'val' (16) or 'test' (20).
    scheme: 'ravi', the only one.
    image_size: side S of the square images. 84 is the standard; other sizes
      (e.g. 224 for ResNets as in Chen et al. 2019) need the ILSVRC images.
    data_dir: TFDS data dir of the cache (see the module docstring).
    source_dir: folder holding the ILSVRC class folders, the train tar,
      CSV-named image files or the three pickles (or the tar itself); only
      read to prepare the cache.

  Returns:
    `ClassImages` with images uint8 `[classes, 600, S, S, 3]` and WordNet ids
    as class names.

  Raises:
    MiniImageNetError (a ValueError): a bad argument; a missing, incomplete,
      truncated or malformed source (naming the class where one is at fault).
  """
  tfds_cache.check_split(split, scheme, SCHEMES, MiniImageNetError)
  tfds_cache.check_image_size(image_size, MiniImageNetError, '84')
  data_dir = tfds_cache.data_dir_or_default(data_dir)
  builder = _prepared_builder(data_dir, source_dir, image_size)
  return _read_split(builder, split)


def _prepared_builder(
  data_dir: str | None, source_dir: str | None, image_size: int
):
  """The builder of the cache to read; prepares it from the source if needed."""

  def make(source, **kwargs):
    config = miniimagenet_tfds.config_for(source, image_size)
    return miniimagenet_tfds.JaxmetaMiniImageNet(
      data_dir=data_dir, config=config, **kwargs
    )

  def locate(folder):
    source = miniimagenet_tfds.locate(folder)
    if source is None:
      return None
    family = miniimagenet_tfds.config_source(source.kind)
    miniimagenet_tfds.check_pickle_size(family, image_size, folder)
    return family, source.path

  families = ('ilsvrc', 'images', 'pickles')[: 2 + (image_size == PICKLE_SIZE)]
  return tfds_cache.prepared_builder(
    make,
    families,
    source_dir,
    SOURCE_ENV,
    locate,
    MiniImageNetError,
    miniimagenet_tfds.HOW_TO_GET,
    f'mini-ImageNet ({image_size}x{image_size})',
  )


def _read_split(builder, split: str) -> ClassImages:
  """Reads one split of the cache into `[classes, 600, S, S, 3]`, checked."""
  classes = miniimagenet_tfds.read_split_list(split)
  size = builder.builder_config.image_size
  per_class = {len(indices) for indices in classes.values()}
  if len(per_class) != 1:
    raise MiniImageNetError(
      f'The {split} split list has classes of {sorted(per_class)} images; '
      'mini-ImageNet has the same number in every class. Fix: restore '
      'jaxmeta/data/splits/miniimagenet.'
    )
  class_index = {wnid: i for i, wnid in enumerate(classes)}
  images = tfds_cache.read_class_records(
    builder,
    split,
    (len(classes), per_class.pop(), size, size, 3),
    lambda record: class_index.get(tfds_cache.decode_text(record['wnid'])),
    MiniImageNetError,
  )
  return ClassImages(images=images, class_names=tuple(classes))
