"""CUB-200-2011 for few-shot classification: class-major image arrays per split.

`load` returns every image of every class of one split as one uint8 array
`[classes, examples, S, S, 3]` (S = 84 by default) and each class's number of
images: the 200 bird species of CUB-200-2011 (Wah et al., 2011) hold unequal
numbers of them (11,788 in all), so `examples` is the largest class's and the
rows past a class's count are zeros, which the samplers never draw
(`ClassImages.counts`). Split scheme `'chen'` (the only one): the 100 / 50 /
50 classes of Chen et al. (2019), shipped in `jaxmeta/data/splits/cub/chen`;
classes in their numbered order, a class's images in image-id order.

Images are not shipped: the first load prepares a TFDS cache
(`jaxmeta.data.cub_tfds`) from `CUB_200_2011.tgz` or its extracted folder,
found with the cache as `jaxmeta.data.tfds_cache` says (`$JAXMETA_CUB_DIR`).
Each image is resized whole to SxS (LANCZOS), without the bounding box;
Chen et al. crop on the fly instead (see `cub_tfds`).

Memory: 21 KB per 84x84 image and row of padding; the train split is about
0.13 GB as uint8.
"""

from __future__ import annotations

from jaxmeta.data import cub_tfds
from jaxmeta.data import tfds_cache
from jaxmeta.data.cub_tfds import CUBError
from jaxmeta.data.registry import ClassImages
from jaxmeta.data.registry import register_dataset

SCHEMES = ('chen',)
SOURCE_ENV = cub_tfds.SOURCE_ENV


@register_dataset('cub')
def load(
  split: str = 'train',
  scheme: str = 'chen',
  *,
  image_size: int = 84,
  data_dir: str | None = None,
  source_dir: str | None = None,
) -> ClassImages:
  """Loads one split of CUB-200-2011 as a class-major image array.

  Args:
    split: 'train' (100 classes), 'val' (50) or 'test' (50).
    scheme: 'chen', the only one.
    image_size: side S of the square images (84 for Conv-4, as Chen et al.).
    data_dir: TFDS data dir of the cache (see the module docstring).
    source_dir: `CUB_200_2011.tgz`, the folder holding it, or the extracted
      `CUB_200_2011/` folder (or the folder holding that); only read to
      prepare the cache.

  Returns:
    `ClassImages` with images uint8 `[classes, examples, S, S, 3]`, the class
    folder names (`'001.Black_footed_Albatross'`) as class names and counts
    int64 `[classes]`.

  Raises:
    CUBError (a ValueError): a bad argument; a missing, incomplete,
      truncated or malformed source (naming the class or file at fault).
  """
  tfds_cache.check_split(split, scheme, SCHEMES, CUBError)
  tfds_cache.check_image_size(image_size, CUBError, '84')
  data_dir = tfds_cache.data_dir_or_default(data_dir)
  builder = _prepared_builder(data_dir, source_dir, image_size)
  return _read_split(builder, split)


def _prepared_builder(
  data_dir: str | None, source_dir: str | None, image_size: int
) -> cub_tfds.JaxmetaCUB:
  """The builder of the cache to read; prepares it from the source if needed.

  Every source gives the same pixels, so a prepared cache is read without
  looking for one.
  """
  config = cub_tfds.config_for(image_size)
  builder = cub_tfds.JaxmetaCUB(data_dir=data_dir, config=config)
  if builder.is_prepared():
    return builder
  how, folder = tfds_cache.source_folders(
    source_dir, SOURCE_ENV, tfds_cache.manual_dir(builder)
  )[0]
  source = cub_tfds.locate(folder)
  if source is None:
    raise CUBError(
      f'CUB-200-2011 ({image_size}x{image_size}) is not prepared in '
      f'{builder.data_dir_root} and there is no {cub_tfds.TGZ_NAME} or '
      f'{cub_tfds.ROOT}/ in {folder} ({how}). {cub_tfds.HOW_TO_GET}'
    )
  builder = cub_tfds.JaxmetaCUB(
    data_dir=data_dir, config=config, source_dir=source.path
  )
  tfds_cache.prepare_cache(builder, CUBError)
  return builder


def _read_split(builder: cub_tfds.JaxmetaCUB, split: str) -> ClassImages:
  """Reads one split of the cache, padded to its largest class, checked."""
  classes = cub_tfds.read_split_list(split)
  size = builder.builder_config.image_size
  class_index = {name: i for i, name in enumerate(classes)}
  images, counts = tfds_cache.read_ragged_class_records(
    builder,
    split,
    len(classes),
    (size, size, 3),
    lambda record: class_index.get(
      tfds_cache.decode_text(record['class_name'])
    ),
    CUBError,
  )
  return ClassImages(images=images, class_names=tuple(classes), counts=counts)
