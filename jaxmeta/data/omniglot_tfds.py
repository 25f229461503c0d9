"""The TensorFlow-free TFDS builder behind `jaxmeta.data.omniglot.load`.

Preprocessing, once per builder config (= image size and resampling):

1. Decode the 105x105 1-bit PNG; strokes are black (0), background white (1).
2. Invert to float32, strokes 1.0 and background 0.0, as MAML's reference
   code (`1.0 - image / 255`).
3. Resize to SxS with PIL's `BOX` filter on the float image: each output
   pixel is the mean of the input pixels whose centres fall inside it
   (antialiased, no ringing, nothing to clip). MAML's reference asks LANCZOS
   of the 1-bit image, which PIL silently replaces by NEAREST.
4. Quantise: `uint8(round(255 * x))`, shape `[S, S, 1]`, strokes 255.

With `resample='nearest'` step 3 is instead PIL's NEAREST on the 1-bit image,
as both the MAML and the Prototypical Networks reference code get it: binary
images (0 or 255).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path
import re
import socket
from typing import Any, Mapping, NamedTuple
import urllib.parse
import zipfile
import zlib

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from jaxmeta.data import registry
from jaxmeta.data import tfds_cache

# The project's shipped copy of the Omniglot source files (see its README.md):
# `data/omniglot` of a checkout; None where that folder does not exist (an
# installed package, whose parents are site-packages).
_CHECKOUT_SOURCE_DIR = Path(__file__).resolve().parents[2] / 'data' / 'omniglot'
DEFAULT_SOURCE_DIR = (
  _CHECKOUT_SOURCE_DIR if _CHECKOUT_SOURCE_DIR.is_dir() else None
)
# Environment variable naming a folder that holds the two zips.
SOURCE_DIR_ENV = 'JAXMETA_OMNIGLOT_DIR'
# Seconds to wait for the download host before declaring the network absent.
PROBE_TIMEOUT_S = 3.0

# TFDS split name -> official zip file name.
SOURCES = ('background', 'evaluation')
ZIP_NAMES = {s: f'images_{s}.zip' for s in SOURCES}
# The official download locations. Their sha256 (those tensorflow-datasets
# registers for the original files) are in `checksums.tsv` next to this file.
URLS = {
  s: f'https://github.com/brendenlake/omniglot/raw/master/python/{name}'
  for s, name in ZIP_NAMES.items()
}
# Characters in each zip; every character has exactly `NUM_DRAWINGS` drawers.
NUM_CHARACTERS = {'background': 964, 'evaluation': 659}
NUM_DRAWINGS = 20
ORIGINAL_SIZE = 105

_MEMBER_RE = re.compile(
  r'^images_(?P<source>background|evaluation)/(?P<alphabet>[^/]+)/'
  r'character(?P<character>\d{2})/(?P<id>\d{4})_(?P<drawer>\d{2})\.png$'
)
_LAYOUT = (
  'images_<background|evaluation>/<Alphabet>/characterNN/<ID>_<drawer>.png'
)


class OmniglotError(registry.DataError):
  """Omniglot data is missing, corrupted, badly laid out or asked for wrongly."""

  dataset = 'Omniglot'


class Drawing(NamedTuple):
  """Where one drawing lives in a zip, and what it is."""

  member: str  # Path inside the zip.
  alphabet: str
  character: int  # NN of `characterNN`, 1-based within its alphabet.
  character_id: int  # Global character number, 1..1623.
  drawer: int  # 1..20.


# How the 105x105 images are brought to the configured size.
RESAMPLING = ('box', 'nearest')


def preprocess(
  png_bytes: bytes, image_size: int, resample: str = 'box'
) -> np.ndarray:
  """Decodes, inverts, resizes and quantises one Omniglot PNG.

  Args:
    png_bytes: the content of one 105x105 Omniglot PNG.
    image_size: side `S` of the output.
    resample: one of `RESAMPLING` (see the module docstring).

  Returns:
    uint8 `[S, S, 1]`, strokes 255 (see the module docstring).
  """
  with Image.open(io.BytesIO(png_bytes)) as image:
    gray = np.asarray(image.convert('L'), dtype=np.float32)  # [105, 105]
  if gray.shape != (ORIGINAL_SIZE, ORIGINAL_SIZE):
    raise OmniglotError(
      f'Expected a {ORIGINAL_SIZE}x{ORIGINAL_SIZE} Omniglot PNG, got shape '
      f'{gray.shape}. Fix: use the official Omniglot zips.'
    )
  if resample == 'nearest' and image_size != ORIGINAL_SIZE:
    gray = np.asarray(
      Image.fromarray(gray.astype(np.uint8)).resize(
        (image_size, image_size), Image.Resampling.NEAREST
      ),
      np.float32,
    )
  strokes = 1.0 - gray / 255.0  # float32 [S or 105, ...], strokes = 1.
  if strokes.shape[0] != image_size:
    strokes = np.asarray(
      Image.fromarray(strokes, mode='F').resize(
        (image_size, image_size), Image.Resampling.BOX
      )
    )
  quantised = np.clip(np.round(strokes * 255.0), 0, 255).astype(np.uint8)
  return quantised[:, :, None]


def _check_sha256sums(source_dir: Path, path: Path) -> None:
  """Checks `path` against `source_dir/SHA256SUMS` if that file lists it."""
  sums_file = source_dir / 'SHA256SUMS'
  if not sums_file.is_file():
    return
  for line in sums_file.read_text().splitlines():
    parts = line.split()
    if len(parts) == 2 and parts[1].lstrip('*') == path.name:
      digest = hashlib.sha256()
      with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
          digest.update(block)
      if digest.hexdigest() != parts[0]:
        raise OmniglotError(
          f'{path} is corrupted or replaced: its sha256 is '
          f'{digest.hexdigest()}, but {sums_file} says {parts[0]}. Fix: '
          'restore the original file (e.g. `git checkout data/omniglot`), or '
          'remove its line from SHA256SUMS if you replaced it on purpose.'
        )
      return


def scan_zip(path: os.PathLike | str, source: str) -> list[Drawing]:
  """The drawings of the `source` zip, sorted by (alphabet, character,
  drawer), once it is checked: readable, CRCs, layout, drawers 1..20."""
  path = Path(path)
  shipped = (
    f", or by the project's shipped copy in {DEFAULT_SOURCE_DIR}"
    if DEFAULT_SOURCE_DIR is not None
    else ''
  )
  fix = (
    f'Fix: replace it by an intact copy of the official {ZIP_NAMES[source]}'
    f' ({URLS[source]}){shipped}.'
  )
  try:
    with zipfile.ZipFile(path) as archive:
      bad_member = archive.testzip()  # Reads every member, checks its CRC.
      names = archive.namelist()
  except tfds_cache.ARCHIVE_ERRORS as e:
    raise tfds_cache.unreadable(OmniglotError, path, 'zip file', e, fix) from e
  if bad_member is not None:
    raise OmniglotError(
      f'{path} is corrupted: member {bad_member!r} fails its CRC check. {fix}'
    )

  drawings = []
  for name in names:
    basename = name.rstrip('/').rsplit('/', 1)[-1]
    if (
      name.endswith('/')
      or name.startswith('__MACOSX/')
      or basename.startswith('.')
    ):
      continue  # Folders and OS metadata.
    match = _MEMBER_RE.match(name)
    if match is None or match['source'] != source:
      raise OmniglotError(
        f'Unexpected file {name!r} in {path}: every file of '
        f'{ZIP_NAMES[source]} must be laid out as '
        f'{_LAYOUT.replace("<background|evaluation>", source)}. {fix}'
      )
    drawings.append(
      Drawing(
        name,
        match['alphabet'],
        int(match['character']),
        int(match['id']),
        int(match['drawer']),
      )
    )
  by_character = {}
  for d in drawings:
    by_character.setdefault((d.alphabet, d.character), []).append(d)
  if len(by_character) != NUM_CHARACTERS[source]:
    raise OmniglotError(
      f'{path} holds {len(by_character)} characters laid out as {_LAYOUT}; '
      f'the official {ZIP_NAMES[source]} has {NUM_CHARACTERS[source]}. {fix}'
    )
  for (alphabet, character), group in by_character.items():
    drawers = sorted(d.drawer for d in group)
    ids = {d.character_id for d in group}
    if drawers != list(range(1, NUM_DRAWINGS + 1)) or len(ids) != 1:
      raise OmniglotError(
        f'{path}: {alphabet}/character{character:02d} should hold drawers '
        f'01..{NUM_DRAWINGS} of one character ID, found drawers {drawers} '
        f'and IDs {sorted(ids)}. {fix}'
      )
  return sorted(drawings, key=lambda d: (d.alphabet, d.character, d.drawer))


def locate_zips(source_dir: Path) -> dict[str, Path] | None:
  """Both zips in `source_dir`; None if neither is there, an error if one
  only or extracted folders are."""
  paths = {s: source_dir / ZIP_NAMES[s] for s in SOURCES}
  present = {s: p.is_file() for s, p in paths.items()}
  if all(present.values()):
    return paths
  if any(present.values()):
    missing = [str(paths[s]) for s in SOURCES if not present[s]]
    raise OmniglotError(
      f'Missing Omniglot zip(s) {missing} next to the other one in '
      f'{source_dir}. Fix: copy both images_background.zip and '
      'images_evaluation.zip there, or point `source_dir` at a folder with '
      'both.'
    )
  extracted = [s for s in SOURCES if (source_dir / f'images_{s}').is_dir()]
  if extracted:
    raise OmniglotError(
      f'{source_dir} holds extracted folders {extracted} but no zips; the '
      'builder reads the official zips. Fix: put images_background.zip and '
      'images_evaluation.zip in that folder (or zip the folders in the '
      f'official layout {_LAYOUT}).'
    )
  return None


def source_dirs(
  source_dir: os.PathLike | str | None, manual_dir: os.PathLike | str | None
) -> list[tuple[str, Path]]:
  """Where to look for the two zips, in order, as `(how chosen, folder)`:
  `source_dir`, `$JAXMETA_OMNIGLOT_DIR`, the checkout's `data/omniglot`,
  TFDS's manual dir (those that exist). Only then are they downloaded."""
  checkout = [("the checkout's data/omniglot", DEFAULT_SOURCE_DIR)]
  return tfds_cache.source_folders(
    source_dir,
    SOURCE_DIR_ENV,
    manual_dir,
    *(checkout if DEFAULT_SOURCE_DIR is not None else []),
  )


def can_reach(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
  """Whether a TCP connection to `url`'s host opens within `timeout`: one
  try, so that no network is told in seconds, not TFDS's minutes of retries."""
  parts = urllib.parse.urlsplit(url)
  port = parts.port or (443 if parts.scheme == 'https' else 80)
  try:
    with socket.create_connection((parts.hostname, port), timeout=timeout):
      return True
  except OSError:
    return False


@dataclasses.dataclass
class OmniglotConfig(tfds.core.BuilderConfig):
  """Builder config: images resized to `image_size` x `image_size` with
  `resample` (one of `RESAMPLING`)."""

  image_size: int = 28
  resample: str = 'box'


def config_for_size(image_size: int, resample: str = 'box') -> OmniglotConfig:
  """The (registered or ad-hoc) builder config for one image size and
  resampling."""
  for config in JaxmetaOmniglot.BUILDER_CONFIGS:
    if (config.image_size, config.resample) == (image_size, resample):
      return config
  suffix = '' if resample == 'box' else f'_{resample}'
  return OmniglotConfig(
    name=f'size{image_size}{suffix}',
    image_size=image_size,
    resample=resample,
    description=f'Images resized to {image_size}x{image_size} ({resample}).',
  )


class JaxmetaOmniglot(tfds_cache.SourceBuilder):
  """Omniglot, preprocessed for few-shot learning, without TensorFlow.

  The zips are looked for in the folders of `source_dirs`, else downloaded
  (checked against `checksums.tsv`) once `can_reach` says the host is up.
  """

  BUILDER_CONFIGS = [
    OmniglotConfig(
      name='size28',
      image_size=28,
      description='Images resized to 28x28 (MAML, ProtoNets).',
    ),
    OmniglotConfig(
      name='size84', image_size=84, description='Images resized to 84x84.'
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'size28'
  error = OmniglotError
  HOMEPAGE = 'https://github.com/brendenlake/omniglot'
  CITATION = (
    '@article{lake2015human, title={Human-level concept learning through '
    'probabilistic program induction}, author={Lake, Brenden M and '
    'Salakhutdinov, Ruslan and Tenenbaum, Joshua B}, journal={Science}, '
    'volume={350}, number={6266}, pages={1332--1338}, year={2015}}'
  )

  def _description(self) -> str:
    size = self.builder_config.image_size
    how = {
      'box': 'with PIL BOX on the float image',
      'nearest': 'with PIL NEAREST on the 1-bit image',
    }[self.builder_config.resample]
    return (
      f'Omniglot (Lake et al. 2015), {size}x{size} uint8 images, strokes 255 '
      f'and background 0 (inverted), resized from 105x105 {how}.'
    )

  def _features(self) -> dict[str, Any]:
    size = self.builder_config.image_size
    return {
      'image': tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8),
      'alphabet': tfds.features.Text(),
      'character': np.int64,  # NN of characterNN, 1-based.
      'character_name': tfds.features.Text(),  # 'Alphabet/characterNN'.
      'character_id': np.int64,  # Global ID, 1..1623.
      'drawer': np.int64,  # 1..20.
      'source': tfds.features.Text(),  # 'background' | 'evaluation'.
    }

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    candidates = source_dirs(self._source_dir, tfds_cache.manual_dir(self))
    for _, folder in candidates:
      zips = locate_zips(folder)
      if zips is not None:
        for path in zips.values():
          _check_sha256sums(folder, path)
        break
    else:
      zips = self._download(dl_manager, candidates)
    # Scan (integrity and layout) both zips before writing anything.
    indices = {s: scan_zip(zips[s], s) for s in SOURCES}
    return {s: self._generate_examples(zips[s], s, indices[s]) for s in SOURCES}

  def _download(
    self,
    dl_manager: tfds.download.DownloadManager,
    candidates: list[tuple[str, Path]],
  ) -> dict[str, Path]:
    """Downloads the zips, failing in seconds when offline."""
    looked = '; '.join(f'{how}: {folder}' for how, folder in candidates)
    missing = (
      f'The Omniglot zips are in none of the places looked in ({looked})'
    )
    fix = (
      'Fix: put images_background.zip and images_evaluation.zip in one '
      f'of these folders, in this order of precedence: `source_dir=`, '
      f"${SOURCE_DIR_ENV}, the checkout's data/omniglot, "
      '<data_dir>/downloads/manual.'
    )
    if not can_reach(URLS['background']):
      raise OmniglotError(
        f'{missing} and {urllib.parse.urlsplit(URLS["background"]).netloc} '
        f'cannot be reached (no network?) to download them. {fix}'
      )
    try:
      downloaded = dl_manager.download(URLS)
    except Exception as e:
      raise OmniglotError(
        f'{missing} and downloading them from {list(URLS.values())} failed: '
        f'{e!r}. {fix}'
      ) from e
    return {s: Path(os.fspath(p)) for s, p in downloaded.items()}

  def _generate_examples(
    self, zip_path: Path, source: str, drawings: list[Drawing]
  ):
    size = self.builder_config.image_size
    with zipfile.ZipFile(zip_path) as archive:
      for d in drawings:
        try:
          image = preprocess(
            archive.read(d.member), size, self.builder_config.resample
          )
        except (OSError, zipfile.BadZipFile, zlib.error, SyntaxError) as e:
          raise OmniglotError(
            f'Cannot decode {d.member!r} in {zip_path}: {e}. Fix: replace '
            'the zip by an intact copy of the official one.'
          ) from e
        yield (
          d.member,
          {
            'image': image,
            'alphabet': d.alphabet,
            'character': d.character,
            'character_name': f'{d.alphabet}/character{d.character:02d}',
            'character_id': d.character_id,
            'drawer': d.drawer,
            'source': source,
          },
        )


def read_all(data_source) -> Mapping[str, np.ndarray]:
  """Reads a whole TFDS data source into column arrays."""
  records = data_source.__getitems__(range(len(data_source)))
  columns = {}
  for key in records[0]:
    values = [r[key] for r in records]
    if isinstance(values[0], bytes):
      values = [tfds_cache.decode_text(v) for v in values]
    columns[key] = np.stack(values) if key == 'image' else np.asarray(values)
  return columns
