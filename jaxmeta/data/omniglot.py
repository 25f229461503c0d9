"""Omniglot for few-shot classification: class-major image arrays per split.

`load` returns every drawing of every class of one split as a single uint8
array `[classes, 20, S, S, 1]`, strokes 255 on a background of 0, prepared
from the official zips as `jaxmeta.data.omniglot_tfds` says (where the zips
are looked for: `omniglot_tfds.source_dirs`) into a TFDS cache found as
`jaxmeta.data.tfds_cache` says.

Split schemes (every scheme splits by character; rotations make classes):

* `'vinyals'`: the lists of Vinyals et al. (2016), shipped in
  `jaxmeta/data/splits/omniglot/vinyals`: 1,028 train, 172 val (= trainval
  minus train) and 423 test characters, every split with rotations by
  default: 4,112 / 688 / 1,692 classes.
* `'maml'`: the procedure of Finn et al.'s reference code (cbfinn/maml): all
  1,623 characters shuffled with seed 1, then 1,100 train, 100 val, 423 test.
  The reference shuffles `os.listdir` order, which depends on the file
  system; we shuffle the SORTED names with `random.Random(1).shuffle`:
  reproducible, though not the characters of any one run of the reference.
  Rotations for train only by default: 4,400 / 100 / 423 classes.
* `'lake'`: Lake et al. (2015): test is the evaluation set (659 characters,
  20 alphabets unseen in training); val the first 100 sorted background
  names after `random.Random(0).shuffle`; train the other 864. Rotations for
  train only by default: 3,456 / 100 / 659 classes.

Rotations: `rotDDD`, DDD = 90k, is `np.rot90(image, k)` over (H, W), a
counter-clockwise turn of the image as displayed; each is its own class.
Order: classes by character name then rotation ('vinyals': its list order);
drawings by drawer 1..20.
"""

from __future__ import annotations

import functools
import importlib.resources
import itertools
import os
from pathlib import Path
import random

import numpy as np
import tensorflow_datasets as tfds

from jaxmeta.data import omniglot_tfds
from jaxmeta.data import tfds_cache
from jaxmeta.data.omniglot_tfds import OmniglotError
from jaxmeta.data.registry import ClassImages
from jaxmeta.data.registry import register_dataset
from jaxmeta.data.registry import SPLITS

SPLIT_SCHEMES = ('vinyals', 'maml', 'lake')
ROTATIONS = (0, 90, 180, 270)
NUM_DRAWINGS = omniglot_tfds.NUM_DRAWINGS
DEFAULT_SOURCE_DIR = omniglot_tfds.DEFAULT_SOURCE_DIR

# The Vinyals lists, package data of `jaxmeta.data`.
_VINYALS_DIR = importlib.resources.files('jaxmeta.data').joinpath(
  'splits', 'omniglot', 'vinyals'
)

# The 'maml' scheme: sizes and seed of the reference code.
_MAML_SEED = 1
_MAML_NUM_TRAIN = 1100
_MAML_NUM_VAL = 100
# The 'lake' scheme: validation characters drawn from the background set.
_LAKE_SEED = 0
_LAKE_NUM_VAL = 100


@register_dataset('omniglot')
def load(
  split: str = 'train',
  scheme: str = 'vinyals',
  *,
  image_size: int = 28,
  rotations: bool | None = None,
  resample: str = 'box',
  data_dir: str | None = None,
  source_dir: str | None = None,
) -> ClassImages:
  """Loads one split of Omniglot as a class-major image array.

  The first call for a `data_dir` and `image_size` prepares the TFDS cache;
  calls in the same process reuse the decoded arrays.

  Args:
    split: 'train', 'val' or 'test'.
    scheme: one of `SPLIT_SCHEMES` (see the module docstring).
    image_size: side S of the square images (1..105); 28 and 84 are registered
      builder configs, other sizes work too.
    rotations: whether every 90-degree rotation of a character is a class of
      its own. None: the scheme's convention (vinyals: every split; maml and
      lake: train only). True / False force it.
    resample: 'box' (antialiased grey levels) or 'nearest' (binary, the
      resizing of the MAML and Prototypical Networks reference code); see
      `omniglot_tfds`.
    data_dir: TFDS data dir of the cache (see `jaxmeta.data.tfds_cache`).
    source_dir: folder holding images_background.zip and
      images_evaluation.zip (and optionally `splits/vinyals/*.txt`, read
      instead of the shipped lists), looked at first (see
      `omniglot_tfds.source_dirs`); only read to prepare the cache.

  Returns:
    `ClassImages` with images uint8 `[classes, 20, S, S, 1]`.

  Raises:
    OmniglotError (a ValueError): a bad argument; missing, corrupted or badly
      laid out source files; split lists that share characters; a data dir
      that is not a writable folder; a corrupted cache; no zips and no
      network.

  Example::

    train = load('train', 'vinyals')  # images: [4112, 20, 28, 28, 1]
  """
  tfds_cache.check_split(split, scheme, SPLIT_SCHEMES, OmniglotError)
  tfds_cache.check_image_size(
    image_size, OmniglotError, '28 or 84', omniglot_tfds.ORIGINAL_SIZE
  )
  if resample not in omniglot_tfds.RESAMPLING:
    raise OmniglotError(
      f'resample must be one of {omniglot_tfds.RESAMPLING}, got {resample!r}.'
    )
  if rotations not in (None, True, False):
    raise OmniglotError(
      f'rotations must be None, True or False, got {rotations!r}.'
    )
  source = Path(source_dir) if source_dir is not None else None
  if scheme == 'vinyals':  # Check the lists before any work on the images.
    characters = _split_characters(scheme, split, source, None)
  by_source = _load_characters(
    tfds_cache.data_dir_or_default(data_dir),
    image_size,
    None if source is None else str(source),
    resample,
  )
  images_by_character = {**by_source['background'], **by_source['evaluation']}
  if scheme != 'vinyals':
    characters = _split_characters(
      scheme,
      split,
      source,
      {s: sorted(by_source[s]) for s in omniglot_tfds.SOURCES},
    )
  unknown = [c for c in characters if c not in images_by_character]
  if unknown:
    raise OmniglotError(
      f'The {scheme} {split} split names characters that are not in the '
      f'Omniglot zips, e.g. {unknown[:3]}. Fix: use the split lists shipped '
      f'in {_VINYALS_DIR} (remove `splits/vinyals` from `source_dir`, or '
      'reinstall jaxmeta).'
    )
  if rotations is None:
    rotations = scheme == 'vinyals' or split == 'train'
  classes = [
    (c, d) for c in characters for d in (ROTATIONS if rotations else (0,))
  ]
  images = np.stack(
    [
      np.rot90(images_by_character[c], k=d // 90, axes=(1, 2))
      for c, d in classes
    ]
  )  # [classes, 20, S, S, 1]
  return ClassImages(images, tuple(f'{c}/rot{d:03d}' for c, d in classes))


def _split_characters(
  scheme: str,
  split: str,
  source_dir: Path | None,
  names: dict[str, list[str]] | None,
) -> list[str]:
  """The characters ('Alphabet/characterNN') of one split of one scheme,
  checked against the other splits (`check_disjoint`); `names`: each zip's
  sorted characters (not used by 'vinyals')."""
  splits = {s: _scheme_split(scheme, s, source_dir, names) for s in SPLITS}
  check_disjoint(splits, scheme)
  return splits[split]


def check_disjoint(splits: dict[str, list[str]], scheme: str) -> None:
  """Raises OmniglotError if two `splits` (name -> characters) share a
  character, a leak between them; `scheme` names them in the message."""
  for first, second in itertools.combinations(sorted(splits), 2):
    shared = sorted(set(splits[first]) & set(splits[second]))
    if shared:
      raise OmniglotError(
        f'The {scheme} {first} and {second} splits share {len(shared)} '
        f'characters, e.g. {shared[:3]}: every rotation of a character '
        'must belong to one split only, or the evaluation sees training '
        'characters. Fix: remove them from one of the split lists (the '
        'Vinyals lists shipped in jaxmeta/data/splits/omniglot/vinyals '
        'are disjoint).'
      )


def _scheme_split(
  scheme: str,
  split: str,
  source_dir: Path | None,
  names: dict[str, list[str]] | None,
) -> list[str]:
  """The characters of one split of one scheme, unchecked."""
  if scheme == 'vinyals':
    lists = {
      name: _read_vinyals_list(name, source_dir)
      for name in ('train', 'trainval', 'test')
    }
    if split == 'val':
      train = set(lists['train'])
      return [c for c in lists['trainval'] if c not in train]
    return lists[split]
  if scheme == 'maml':
    shuffled = sorted(names['background'] + names['evaluation'])
    random.Random(_MAML_SEED).shuffle(shuffled)
    bounds = (0, _MAML_NUM_TRAIN, _MAML_NUM_TRAIN + _MAML_NUM_VAL, None)
    i = SPLITS.index(split)
    return sorted(shuffled[bounds[i] : bounds[i + 1]])
  # scheme == 'lake'
  if split == 'test':
    return sorted(names['evaluation'])
  shuffled = sorted(names['background'])
  random.Random(_LAKE_SEED).shuffle(shuffled)
  val = shuffled[:_LAKE_NUM_VAL]
  if split == 'val':
    return sorted(val)
  return sorted(set(names['background']) - set(val))


def _read_vinyals_list(name: str, source_dir: Path | None) -> list[str]:
  """Characters of one Vinyals list file (`source_dir/splits/vinyals` if
  there, else the shipped one), in file order, each once."""
  candidates = [_VINYALS_DIR.joinpath(f'{name}.txt')]
  if source_dir is not None:
    candidates.insert(0, source_dir / 'splits' / 'vinyals' / f'{name}.txt')
  path = next((p for p in candidates if p.is_file()), None)
  if path is None:
    raise OmniglotError(
      f'Missing the Vinyals split list {name}.txt (looked for '
      f'{[str(p) for p in candidates]}). Fix: reinstall jaxmeta, or '
      'restore jaxmeta/data/splits/omniglot/vinyals in the checkout.'
    )
  characters = {}
  for line_number, line in enumerate(
    path.read_text(encoding='utf-8').splitlines(), 1
  ):
    line = line.strip()
    if not line:
      continue
    parts = line.split('/')
    if len(parts) != 3 or parts[2] not in {f'rot{r:03d}' for r in ROTATIONS}:
      raise OmniglotError(
        f'{path}:{line_number}: expected "Alphabet/characterNN/rotDDD" with '
        f'DDD in 000, 090, 180, 270, got {line!r}. Fix: restore the file '
        'from the repository.'
      )
    characters['/'.join(parts[:2])] = None  # Ordered set.
  return list(characters)


@functools.lru_cache(maxsize=4)
def _load_characters(
  data_dir: str | None, image_size: int, source_dir: str, resample: str
) -> dict[str, dict[str, np.ndarray]]:
  """Prepares (if needed) and reads the TFDS cache: 'background' /
  'evaluation' -> {'Alphabet/characterNN' -> uint8 `[20, S, S, 1]`}."""
  root = Path(data_dir or os.path.expanduser(tfds.core.constants.DATA_DIR))
  tfds_cache.check_data_dir(root, OmniglotError)
  config = omniglot_tfds.config_for_size(image_size, resample)
  cache_dir = (
    root
    / omniglot_tfds.JaxmetaOmniglot.name
    / config.name
    / str(omniglot_tfds.JaxmetaOmniglot.VERSION)
  )

  def corrupted(e: Exception) -> OmniglotError:
    return OmniglotError(
      f'The prepared Omniglot cache in {cache_dir} cannot be read '
      f'(truncated or corrupted?): {type(e).__name__}: '
      f'{str(e).rstrip(".")}. Fix: delete that folder and load again to '
      'rebuild it from the zips.'
    )

  try:
    builder = omniglot_tfds.JaxmetaOmniglot(
      data_dir=data_dir, config=config, source_dir=source_dir
    )
    prepared = builder.is_prepared()
  except Exception as e:
    raise corrupted(e) from e
  if not prepared:
    tfds_cache.prepare_cache(builder, OmniglotError)
  try:
    data = builder.as_data_source()
    by_source = {
      s: omniglot_tfds.read_all(data[s]) for s in omniglot_tfds.SOURCES
    }
  except Exception as e:
    raise corrupted(e) from e
  for source, columns in by_source.items():
    order = np.lexsort((columns['drawer'], columns['character_name']))
    names = columns['character_name'][order]
    images = columns['image'][order].reshape(
      -1, NUM_DRAWINGS, image_size, image_size, 1
    )
    drawers = columns['drawer'][order].reshape(-1, NUM_DRAWINGS)
    names = names.reshape(-1, NUM_DRAWINGS)
    if (
      len(names) != omniglot_tfds.NUM_CHARACTERS[source]
      or (names != names[:, :1]).any()
      or (drawers != np.arange(1, NUM_DRAWINGS + 1)).any()
    ):
      raise OmniglotError(
        f'The prepared Omniglot cache in {builder.data_dir} does not hold the '
        f'expected characters and drawers of the {source} set. Fix: delete '
        'that folder and load again to rebuild it.'
      )
    by_source[source] = dict(zip(names[:, 0].tolist(), images))
  return by_source
