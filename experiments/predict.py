r"""A trained run, loaded back: `load_run`, `classify`, and the command.

  python -m experiments.predict --workdir=runs/omniglot \
      --support=my_support --images=my_images

`--support` holds one sub-folder per class (its name is the class name) of
PNG or JPEG images, `--images` a folder or image files; the program adapts
once on the support set and prints `path<TAB>class name` for each image,
each classified on its own. Images are read as the run's dataset prepared
its training images (`read_image`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

import jaxmeta
from . import build
from . import checkpoints as checkpoints_lib
from . import common
from . import config_checks
from . import main as main_lib
from . import tasks
from . import workdir as workdir_lib

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')


def load_run(
  workdir: 'str | os.PathLike',
  *,
  checkpoint: str = 'best',
  data_dir: str | None = None,
  source_dir: str | None = None,
) -> tuple[jaxmeta.MetaLearner, Any, ml_collections.ConfigDict]:
  """The learner, meta-parameters and config of the run in `workdir`.

  The learner is rebuilt by `experiments.build.build_learner` from the
  workdir's config; the workdir is only read, under the shared lock that
  `--mode=eval` takes.

  Args:
    workdir: the run's directory (what `--workdir` named when training).
    checkpoint: 'best' (the best validated step, what the test scores) or
      'latest'.
    data_dir, source_dir: where the dataset is, as when training; read only
      for a run whose checkpoint does not record its input shape, which is
      then taken from the test split.

  Returns:
    `(learner, params, config)`: `learner.adapt(params, ...)` and
    `learner.predict` classify new images (see `classify`).

  Raises:
    config_checks.ConfigError: `workdir` holds no run.
    checkpoints.CheckpointError: no checkpoint, or an unreadable one.
  """
  return _load(workdir, checkpoint, data_dir, source_dir)[:3]


def _load(workdir, checkpoint, data_dir, source_dir):
  """`load_run`, and the shape `(H, W, C)` of one input of the model."""
  if checkpoint not in ('best', 'latest'):
    raise ValueError(
      f"checkpoint must be 'best' or 'latest', got {checkpoint!r}."
    )
  workdir = common.workdir_path(workdir)
  workdir_lib.prepare_workdir(workdir, create=False)
  if (
    not (workdir / 'checkpoints').is_dir()
    or not (workdir / 'config.json').exists()
  ):
    raise config_checks.ConfigError(
      f'{workdir} holds no run (no config.json and checkpoints/). Fix: give '
      'the --workdir of a trained run.'
    )
  config = config_checks.with_added_fields(
    workdir_lib.read_config_json(
      workdir / 'config.json', 'give the --workdir of an intact run'
    )
  )
  family = tasks.build(config, data_dir, source_dir)
  with (
    common.locked_workdir(workdir, exclusive=False),
    contextlib.closing(
      build.open_checkpoints(workdir, config, family, read_only=True)
    ) as checkpoints,
  ):
    saved, _ = workdir_lib.read_saved_config(workdir, checkpoints)
    config = config_checks.with_added_fields(saved)
    family = tasks.build(config, data_dir, source_dir)
    if checkpoint == 'best':
      step, role = checkpoints.best_step(), 'the best on validation'
    else:
      step, role = checkpoints.latest_step(), 'the latest'
    if step is None:
      raise checkpoints_lib.CheckpointError(
        f'{workdir} holds no {"validated " * (checkpoint == "best")}'
        'checkpoint. Fix: train first (--mode=train on this workdir).'
      )
    meta = _read(checkpoints, step, role, checkpoints.read_meta, step)
    input_shape = meta.get('input_shape')
    if input_shape is None:
      input_shape = family.input_shape(family.load('test'))
    learner = _build_learner(
      config,
      family,
      tuple(input_shape),
      lambda: _read(checkpoints, step, role, checkpoints.saved_tree, step),
    )
    like = jaxmeta.init_train_state(
      learner, build.build_optimizer(config), jax.random.PRNGKey(config.seed)
    )
    state, _ = _read(checkpoints, step, role, checkpoints.restore, like, step)
  return learner, state.merged_params(), config, tuple(input_shape)


def _read(checkpoints, step, role, read, *args):
  """`read(*args)`; a damaged step is a `CheckpointError` naming the fix."""
  try:
    return read(*args)
  except Exception as e:  # Orbax, tensorstore and JSON raise many types.
    checkpoints.move_aside(step, e, role)  # Read-only: raises.
    raise


def _build_learner(config, family, input_shape, saved_tree):
  """`build.build_learner` as the run built it, with the number of training
  classes (a head width) read from the saved parameters' shapes."""
  if (
    'num_classes' not in jaxmeta.algorithms.options(config.algorithm)
    or config.method.get('num_classes') is not None
  ):
    return build.build_learner(config, family, input_shape)
  saved = saved_tree()['params']
  shapes = {}
  for probe in (2, 3):
    learner = build.build_learner(config, family, input_shape, probe)
    shapes[probe] = jax.eval_shape(learner.init, jax.random.PRNGKey(0))
  paths = jax.tree_util.tree_flatten_with_path(shapes[2])[0]
  widths = {
    int(_at(saved, path).shape[axis])
    for (path, a), b in zip(paths, jax.tree.leaves(shapes[3]))
    for axis in range(len(a.shape))
    if a.shape[axis] == 2 and b.shape[axis] == 3
  }
  if len(widths) != 1:
    raise checkpoints_lib.CheckpointError(
      f'The saved parameters do not match {config.algorithm} with any '
      f'number of training classes (found {sorted(widths)}). Fix: give the '
      '--workdir of an intact run.'
    )
  return build.build_learner(config, family, input_shape, widths.pop())


def _at(tree, path):
  """The leaf of a nested dict / list `tree` at a `jax.tree_util` path."""
  for entry in path:
    if isinstance(entry, jax.tree_util.SequenceKey):
      tree = tree[entry.idx]
    else:
      tree = tree[getattr(entry, 'key', getattr(entry, 'name', None))]
  return tree


def _to_unit_float(images: jax.Array) -> jax.Array:
  """Images as the model sees them: uint8 scaled by 1/255, floats as they are."""
  images = jnp.asarray(images)
  floats = images.astype(jnp.float32)
  return floats / 255.0 if images.dtype == jnp.uint8 else floats


def classify(
  learner: jaxmeta.MetaLearner,
  params: Any,
  support_images: jax.Array,
  support_labels: jax.Array,
  images: jax.Array,
  num_steps: int,
) -> jax.Array:
  """Adapts once on a labelled support set and predicts each image alone.

  Each image is predicted as a batch of one (`learner.predict` vmapped over
  the images, as `jaxmeta.algorithms.score_alone` scores a query), so no
  prediction depends on the other images, whatever the batch norm.

  Args:
    learner, params: as `load_run` returns them.
    support_images: `[n, H, W, C]`, uint8 (scaled by 1/255, as the training
      images were) or float; `(H, W, C)` the run's input shape.
    support_labels: int `[n]`, classes `0 .. ways - 1`.
    images: `[m, H, W, C]`, the images to classify.
    num_steps: inner steps of the adaptation (the test used
      `config.eval_inner_steps`).

  Returns:
    int32 `[m]`: the predicted label of each image.
  """
  support_images = _to_unit_float(support_images)
  images = _to_unit_float(images)
  support_labels = jnp.asarray(support_labels)
  if support_images.ndim != 4 or images.shape[1:] != support_images.shape[1:]:
    raise ValueError(
      'support_images and images must be [n, H, W, C] and [m, H, W, C] of '
      f'the same image shape, got {support_images.shape} and {images.shape}.'
    )
  if support_labels.shape != support_images.shape[:1] or not jnp.issubdtype(
    support_labels.dtype, jnp.integer
  ):
    raise ValueError(
      f'support_labels must be int [{support_images.shape[0]}] (one label '
      f'per support image), got {support_labels.dtype} {support_labels.shape}.'
    )
  return _classify(
    learner,
    int(num_steps),
    params,
    support_images,
    support_labels.astype(jnp.int32),
    images,
  )


@functools.partial(jax.jit, static_argnums=(0, 1))
def _classify(
  learner, num_steps, params, support_images, support_labels, images
):
  """`classify`, compiled once per learner, step count and shapes."""
  adapted = learner.adapt(params, support_images, support_labels, num_steps)
  outputs = jax.vmap(lambda x: learner.predict(adapted, x[None])[0])(images)
  return jnp.argmax(outputs, -1).astype(jnp.int32)


def _omniglot_pixels(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
  """Omniglot's preparation (`jaxmeta.data.omniglot_tfds.preprocess`): grey,
  inverted (strokes 1), BOX-resized as floats, quantised."""
  strokes = 1.0 - np.asarray(image.convert('L'), np.float32) / 255.0
  if strokes.shape != size[::-1]:
    strokes = np.asarray(
      Image.fromarray(strokes, mode='F').resize(size, Image.Resampling.BOX)
    )
  return np.clip(np.round(strokes * 255.0), 0, 255).astype(np.uint8)


def _plain_pixels(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
  """The colour datasets' preparation (`jaxmeta.data.ilsvrc.preprocess`):
  resized whole with LANCZOS, uint8."""
  if image.size != size:
    image = image.resize(size, Image.Resampling.LANCZOS)
  return np.asarray(image, np.uint8)


# dataset -> `pixels(image, (width, height)) -> uint8 [H, W] or [H, W, C]`:
# how its loader prepared the training images from an image file; the others
# are resized whole with LANCZOS.
IMAGE_PREPARATION: dict[str, Callable[..., np.ndarray]] = {
  'omniglot': _omniglot_pixels,
}


def read_image(
  path: 'str | os.PathLike', input_shape: Sequence[int], dataset: str
) -> np.ndarray:
  """An image file as the run's training images: uint8 `input_shape`.

  Greyscale for one channel, RGB for three; resized and scaled as the
  loader of `dataset` prepared its images (`IMAGE_PREPARATION`).

  Raises:
    ValueError: `path` is not an image PIL can read.
  """
  height, width, channels = input_shape
  prepare = IMAGE_PREPARATION.get(dataset, _plain_pixels)
  try:
    with Image.open(path) as image:
      image = image.convert('L' if channels == 1 else 'RGB')
      pixels = prepare(image, (width, height))
  except (OSError, Image.DecompressionBombError) as e:
    raise ValueError(f'{path} is not a readable image ({e}).') from e
  return pixels.reshape(height, width, channels)


def _image_files(folder: str) -> list[str]:
  return sorted(
    os.path.join(folder, name)
    for name in os.listdir(folder)
    if name.lower().endswith(IMAGE_SUFFIXES)
  )


def _read_support(folder: str, input_shape: Sequence[int], dataset: str):
  """`(images [n, H, W, C] uint8, labels [n], class names)` of a folder
  with one sub-folder of images per class (classes in sorted order)."""
  if not os.path.isdir(folder):
    raise common.OneLineError(
      f'--support={folder} is not a folder. Fix: give a folder with one '
      'sub-folder of PNG or JPEG images per class.'
    )
  names = sorted(
    n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n))
  )
  images, labels = [], []
  for label, name in enumerate(names):
    files = _image_files(os.path.join(folder, name))
    if not files:
      raise common.OneLineError(
        f'{os.path.join(folder, name)} holds no PNG or JPEG image. Fix: put '
        'the labelled images of that class there, or remove it.'
      )
    images += [_read_or_exit(f, input_shape, dataset) for f in files]
    labels += [label] * len(files)
  if not names:
    raise common.OneLineError(
      f'--support={folder} has no class sub-folders. Fix: one sub-folder of '
      'PNG or JPEG images per class, named after the class.'
    )
  return np.stack(images), np.asarray(labels, np.int32), names


def _read_or_exit(path, input_shape, dataset):
  try:
    return read_image(path, input_shape, dataset)
  except ValueError as e:
    raise common.OneLineError(f'{e} Fix: give PNG or JPEG images.') from e


def _image_paths(images: Sequence[str]) -> list[str]:
  paths = []
  for item in images:
    if os.path.isdir(item):
      paths += _image_files(item)
    elif os.path.isfile(item):
      paths.append(item)
    else:
      raise common.OneLineError(
        f'--images: {item} is neither a file nor a folder. Fix: give image '
        'files or folders of them.'
      )
  if not paths:
    raise common.OneLineError(
      f'--images={",".join(images)} names no PNG or JPEG image. Fix: give '
      'image files or folders of them.'
    )
  return paths


def predict_files(
  workdir: str,
  support: str,
  images: Sequence[str],
  checkpoint: str = 'best',
  num_steps: int | None = None,
  data_dir: str | None = None,
  source_dir: str | None = None,
) -> list[tuple[str, str]]:
  """`(path, predicted class name)` for each image of `images` (files or
  folders), adapted on the class folders of `support`; the command's work."""
  learner, params, config, shape = _load(
    workdir, checkpoint, data_dir, source_dir
  )
  if config.dataset not in jaxmeta.data.DATASETS:
    raise common.OneLineError(
      f'{workdir} holds a {config.dataset} run, not an image classifier. '
      'Fix: give the --workdir of a few-shot classification run.'
    )
  traits = jaxmeta.algorithms.traits(config.algorithm)
  support_x, support_y, names = _read_support(support, shape, config.dataset)
  if len(names) != config.ways and not traits.any_ways:
    raise common.OneLineError(
      f'--support={support} has {len(names)} classes, but this '
      f'{config.algorithm} run classifies {config.ways} (config.ways). Fix: '
      f'give {config.ways} class sub-folders.'
    )
  paths = _image_paths(images)
  x = np.stack([_read_or_exit(p, shape, config.dataset) for p in paths])
  steps = config.eval_inner_steps if num_steps is None else num_steps
  predicted = classify(learner, params, support_x, support_y, x, steps)
  return [(p, names[int(i)]) for p, i in zip(paths, predicted)]


# The flags, in the order of `predict_files`' arguments.
_ARGUMENTS = 'workdir support images checkpoint num_steps data_dir source_dir'


def define_flags() -> None:
  """The command's flags; only when run as a program (absl flags are
  global)."""
  flags.DEFINE_string('workdir', None, 'Directory of a trained run.')
  flags.DEFINE_string(
    'support',
    None,
    'Folder with one sub-folder of PNG or JPEG images per class (the '
    "sub-folder's name is the class name).",
  )
  flags.DEFINE_list(
    'images', None, 'Image files or folders of them, comma-separated.'
  )
  flags.DEFINE_enum(
    'checkpoint',
    'best',
    ['best', 'latest'],
    'The best validated checkpoint, or the latest.',
  )
  flags.DEFINE_integer(
    'num_steps',
    None,
    "Inner steps on the support set (default: the run's eval_inner_steps).",
  )
  main_lib.define_data_flags(
    'read only for a run whose checkpoints do not record their input shape'
  )


def main(argv) -> None:
  common.check_command_line(argv, 'workdir', 'support', 'images')
  try:
    rows = predict_files(
      *(flags.FLAGS[name].value for name in _ARGUMENTS.split())
    )
  except main_lib.USER_ERRORS as e:
    common.exit_with_one_line(e)
  for path, name in rows:
    print(f'{path}\t{name}')


def run() -> None:
  """The program."""
  define_flags()
  app.run(main, flags_parser=common.parse_flags)


if __name__ == '__main__':
  run()
