"""tiered-ImageNet for few-shot classification: class-major image arrays per split.

`load` returns every image of every class of one split as a single uint8 array
`[classes, examples, S, S, 3]` (S = 84 by default) with each class's count:
Ren et al. (2018) use every ILSVRC-2012 training image of a class, 732 to
1,300, so a class's images are its first `counts[c]` rows and zeros follow.
Split scheme `'ren'` (the only one): the lists of Ren et al., shipped in
`jaxmeta/data/splits/tieredimagenet/ren`: 351 / 97 / 160 classes in 20 / 6 / 8
high-level categories; classes in the lists' order, a class's images in
ascending numeric order of `k` of its ILSVRC files `nXXXXXXXX_<k>.JPEG` (or
in the order of Ren et al.'s files).

Images are not shipped and cannot be downloaded (ImageNet's terms): the first
load prepares a TFDS cache (`jaxmeta.data.tieredimagenet_tfds`) from a source
the user brings, found with the cache as `jaxmeta.data.tfds_cache` says
(`$JAXMETA_TIEREDIMAGENET_DIR`). The cache is per source family (ILSVRC,
Ren et al.'s PNG pickles, their npz files) and image size; with no source
found, an existing cache is used, in that order of preference.

Memory: 21 KB per 84x84 image, classes padded to the largest (1,300 images):
train 9.7 GB, val 2.7 GB, test 4.4 GB as uint8 (`--config.sampler=host`
keeps the training split in host memory).
"""

from __future__ import annotations

import numpy as np

from jaxmeta.data import tfds_cache
from jaxmeta.data import tieredimagenet_tfds
from jaxmeta.data.registry import ClassImages
from jaxmeta.data.registry import register_dataset
from jaxmeta.data.tieredimagenet_tfds import REN_SIZE
from jaxmeta.data.tieredimagenet_tfds import TieredImageNetError

SCHEMES = ('ren',)
SOURCE_ENV = tieredimagenet_tfds.SOURCE_ENV


@register_dataset('tieredimagenet')
def load(
  split: str = 'train',
  scheme: str = 'ren',
  *,
  image_size: int = 84,
  data_dir: str | None = None,
  source_dir: str | None = None,
) -> ClassImages:
  """Loads one split of tiered-ImageNet as a class-major image array.

  Args:
    split: 'train' (351 classes), 'val' (97) or 'test' (160).
    scheme: 'ren', the only one.
    image_size: side S of the square images. 84 is the standard; other sizes
      need the ILSVRC images.
    data_dir: TFDS data dir of the cache (see the module docstring).
    source_dir: folder holding the ILSVRC class folders, the train tar (or
      the tar itself), or Ren et al.'s `{split}_labels.pkl` with
      `{split}_images_png.pkl` or `{split}_images.npz`; only read to prepare
      the cache.

  Returns:
    `ClassImages` with images uint8 `[classes, max count, S, S, 3]`, WordNet
    ids as class names and int `[classes]` counts.

  Raises:
    TieredImageNetError (a ValueError): a bad argument; a missing,
      incomplete, truncated or malformed source (naming the class or file at
      fault).
  """
  tfds_cache.check_split(split, scheme, SCHEMES, TieredImageNetError)
  tfds_cache.check_image_size(image_size, TieredImageNetError, '84')
  data_dir = tfds_cache.data_dir_or_default(data_dir)
  builder = _prepared_builder(data_dir, source_dir, image_size)
  return _read_split(builder, split)


def _prepared_builder(
  data_dir: str | None, source_dir: str | None, image_size: int
):
  """The builder of the cache to read; prepares it from the source if needed."""

  def make(source, **kwargs):
    configs = tieredimagenet_tfds.JaxmetaTieredImageNet.BUILDER_CONFIGS
    config = tfds_cache.config_for(configs, source, image_size)
    return tieredimagenet_tfds.JaxmetaTieredImageNet(
      data_dir=data_dir, config=config, **kwargs
    )

  def locate(folder):
    source = tieredimagenet_tfds.locate(folder)
    if source is None:
      return None
    family = tieredimagenet_tfds.config_source(source.kind)
    tieredimagenet_tfds.check_ren_size(family, image_size, folder)
    return family, source.path

  families = ('ilsvrc', 'npz', 'pickles')[: 1 + 2 * (image_size == REN_SIZE)]
  return tfds_cache.prepared_builder(
    make,
    families,
    source_dir,
    SOURCE_ENV,
    locate,
    TieredImageNetError,
    tieredimagenet_tfds.HOW_TO_GET,
    f'tiered-ImageNet ({image_size}x{image_size})',
  )


def _read_split(builder, split: str) -> ClassImages:
  """Reads one split of the cache into `[classes, max count, S, S, 3]` with
  its counts, checked against the split list and the cache's counts."""
  classes = list(tieredimagenet_tfds.read_split_list(split))
  size = builder.builder_config.image_size
  recorded = (builder.info.metadata or {}).get('counts', {}).get(split, {})
  if set(recorded) != set(classes) or min(recorded.values(), default=0) < 1:
    raise TieredImageNetError(
      f'The prepared tiered-ImageNet cache in {builder.data_dir} does not '
      f'count the images of each class of the {split} split list. Fix: delete '
      f'{builder.data_dir} and load again to rebuild it.'
    )
  counts = np.array([recorded[w] for w in classes], np.int64)
  class_index = {wnid: i for i, wnid in enumerate(classes)}
  images = tfds_cache.read_class_records(
    builder,
    split,
    (len(classes), int(counts.max()), size, size, 3),
    lambda record: class_index.get(tfds_cache.decode_text(record['wnid'])),
    TieredImageNetError,
    counts,
  )
  return ClassImages(images=images, class_names=tuple(classes), counts=counts)
