"""Task families: what the training program samples its tasks from.

A `TaskFamily` is everything `experiments.train` knows about data. Every
dataset of `jaxmeta.data.DATASETS` is one (N-way K-shot episodes drawn on
the device; the loader's options are `config.data`), and so is each of
`TASK_FAMILIES`, which generate their tasks (sinusoid regression). A new
image dataset is a loader registered in `jaxmeta.data`; a new generated
family, a builder here and a `TASK_FAMILIES` line.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np

import jaxmeta
from jaxmeta.data import augment as augment_lib
from jaxmeta.data import episodes
from jaxmeta.data import host_episodes
from jaxmeta.data import sinusoid


# The values of `config.train_split`: the classes trained on.
TRAIN_SPLITS = ('train', 'trainval')


class TaskFamilyError(ValueError):
  """A configuration that the task family cannot supply tasks for."""


class TaskFamily(NamedTuple):
  """What the training program needs to know about its tasks.

  Attributes:
    input_shape: `input_shape(data) -> shape` of one input, e.g.
      `(28, 28, 1)` or `(1,)`, from the data of any split.
    num_outputs: width of the model's output (the ways, or 1).
    make_loss: `jaxmeta.classification_loss` or `jaxmeta.regression_loss`.
    metric: the key of the loss's metrics ('accuracy' or 'mse') that selects
      the best checkpoint on validation.
    higher_is_better: whether a larger `metric` is better.
    load: `load(split) -> data` of 'train', 'val', 'test' or 'trainval'
      (the classes of 'train' then 'val'; see `TRAIN_SPLITS`), on the device
      (None where tasks are generated); cached. An image split's data is its
      images, or `(images, counts)` where its classes are ragged (see
      `class_images`).
    sample: `sample(key, data, train) -> Task`, one task on the device, of
      the training shape and augmented if `train`.
    sample_host: None, or `sample_host(key, data, num_tasks) -> Task`, a
      training meta-batch drawn on the host (`config.sampler = 'host'`),
      augmented on the device by `augment`.
    augment: `augment(key, task) -> task`, the training augmentation of one
      task (the identity without one).
    sample_batch: None, or `sample_batch(key, data, batch_size) -> Task`, an
      augmented minibatch of images of all classes labelled by class
      (`jaxmeta.data.episodes.sample_batch`), for `train_batches` algorithms.
  """

  input_shape: Callable[[Any], tuple[int, ...]]
  num_outputs: int
  make_loss: Callable[..., jaxmeta.LossFn]
  metric: str
  higher_is_better: bool
  load: Callable[[str], Any]
  sample: Callable[[jax.Array, Any, bool], jaxmeta.Task]
  sample_host: Callable[[jax.Array, Any, int], jaxmeta.Task] | None = None
  augment: Callable[[jax.Array, jaxmeta.Task], jaxmeta.Task] = (
    lambda key, task: task
  )
  sample_batch: Callable[[jax.Array, Any, int], jaxmeta.Task] | None = None


def train_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(shots, queries) per class of the training tasks."""
  return (
    config.train_shots or config.shots,
    config.train_queries or config.queries,
  )


def train_ways(config: ml_collections.ConfigDict) -> int:
  """Classes per training episode (`train_ways`, 0 = `ways`)."""
  return config.get('train_ways', 0) or config.ways


def class_images(data) -> tuple[Any, Any]:
  """`(images, counts)` of an image split's data: `counts` is None where
  every class is full (`load` then gives the images alone), else int32
  `[classes]` (see `jaxmeta.data.ClassImages`)."""
  return data if isinstance(data, tuple) else (data, None)


def check_crop_padding(crop_padding: int, image_size: int) -> None:
  """Refuses a padding of half the image size or more, where some random
  crops hold a sliver of the image or none of it (all padding).

  Raises:
    ValueError: naming the field, the bound and the fix.
  """
  bound = (image_size - 1) // 2
  if crop_padding > bound:
    raise ValueError(
      f'config.augment.crop_padding={crop_padding} is half the '
      f'{image_size}-pixel images or more: random crops would hold little or '
      f'none of the image. Fix: --config.augment.crop_padding=<0..{bound}> '
      f'(e.g. {min(bound, 4 if image_size <= 32 else 8)}).'
    )


def episodic(
  config: ml_collections.ConfigDict,
  data_dir: str | None = None,
  source_dir: str | None = None,
) -> TaskFamily:
  """N-way K-shot classification on a registered class-image dataset."""
  loader = jaxmeta.data.DATASETS[config.dataset]
  options = dict(config.data)
  shapes = {
    True: (train_ways(config), *train_shape(config)),
    False: (config.ways, config.shots, config.queries),
  }
  on_host = config.sampler == 'host'
  settings = augment_lib.AugmentConfig(**config.augment)
  augment_task = make_augment(config)

  @functools.cache
  def read(split):
    if split == 'trainval':
      return jaxmeta.data.registry.union(read('train'), read('val'))
    return loader(split, data_dir=data_dir, source_dir=source_dir, **options)

  @functools.cache
  def load(split):
    data = read(split)
    num_classes, num_examples, height, width, channels = data.images.shape
    try:
      check_crop_padding(settings.crop_padding, min(height, width))
    except ValueError as e:
      raise TaskFamilyError(str(e)) from e
    if settings.saturation and channels == 1:
      raise TaskFamilyError(
        f'config.augment.saturation={settings.saturation}: the images of '
        f'{config.dataset} are grayscale, which saturation leaves as they '
        'are. Fix: --config.augment.saturation=0.'
      )
    for ways, shots, queries in set(shapes.values()):
      try:
        episodes.check_episode_config(
          num_classes, num_examples, ways, shots, queries, data.counts
        )
      except episodes.EpisodeConfigError as e:
        raise TaskFamilyError(
          f'The {split} split of {config.dataset} ({options}): {e}'
        ) from e
    arrays = data.images  # uint8 [classes, examples, H, W, C]
    if data.counts is not None:  # Ragged classes: see `class_images`.
      arrays = data.images, np.asarray(data.counts, np.int32)
    # A training split sampled on the host stays in host memory.
    if not (on_host and split in TRAIN_SPLITS):
      arrays = jax.device_put(arrays)
    return arrays

  def sample(key, data, train):
    images, counts = class_images(data)
    task = episodes.sample_task(key, images, *shapes[train], counts)
    return augment_task(jax.random.fold_in(key, 1), task) if train else task

  def sample_host(key, data, num_tasks):
    images, counts = class_images(data)
    return host_episodes.sample_tasks_host(
      key, images, num_tasks, *shapes[True], counts=counts
    )

  def sample_batch(key, data, batch_size):
    images, counts = class_images(data)
    batch = episodes.sample_batch(key, images, batch_size, counts)
    return augment_task(jax.random.fold_in(key, 1), batch)

  return TaskFamily(
    input_shape=lambda data: tuple(class_images(data)[0].shape[2:]),
    num_outputs=config.ways,
    make_loss=jaxmeta.classification_loss,
    metric='accuracy',
    higher_is_better=True,
    load=load,
    sample=sample,
    sample_host=sample_host if on_host else None,
    augment=augment_task,
    sample_batch=sample_batch,
  )


def make_augment(config: ml_collections.ConfigDict):
  """`augment(key, task) -> task` from `config.augment` (support and query
  images alike, one draw per image; see `jaxmeta.data.augment`)."""
  settings = augment_lib.AugmentConfig(**config.augment)
  if settings == augment_lib.AugmentConfig():
    return lambda key, task: task

  def augment_task(key, task):
    support_key, query_key = jax.random.split(key)
    return task._replace(
      support_x=augment_lib.augment(support_key, task.support_x, settings),
      query_x=augment_lib.augment(query_key, task.query_x, settings),
    )

  return augment_task


def sinusoid_family(
  config: ml_collections.ConfigDict,
  data_dir: str | None = None,
  source_dir: str | None = None,
) -> TaskFamily:
  """Sinusoid regression: `shots` support and `queries` query points."""
  del data_dir, source_dir  # Tasks are generated.
  if config.sampler != 'device':
    raise TaskFamilyError(
      'sinusoid tasks are generated on the device: '
      "config.sampler must be 'device'."
    )
  if augment_lib.AugmentConfig(**config.augment) != augment_lib.AugmentConfig():
    raise TaskFamilyError(
      'config.augment: sinusoid tasks are points, not images, and take no '
      'augmentation. Fix: leave config.augment at its defaults (all off).'
    )
  shapes = {True: train_shape(config), False: (config.shots, config.queries)}

  def sample(key, data, train):
    del data
    return sinusoid.sample_task(key, *shapes[train])

  return TaskFamily(
    input_shape=lambda data: (1,),
    num_outputs=1,
    make_loss=jaxmeta.regression_loss,
    metric='mse',
    higher_is_better=False,
    load=lambda split: None,
    sample=sample,
  )


# name -> builder(config, data_dir, source_dir) for families that generate
# their tasks; every dataset of jaxmeta.data.DATASETS is a family too.
TASK_FAMILIES: dict[str, Callable[..., TaskFamily]] = {
  'sinusoid': sinusoid_family,
}


def names() -> list[str]:
  """Every task family a config may name."""
  return sorted(set(TASK_FAMILIES) | set(jaxmeta.data.DATASETS))


def build(
  config: ml_collections.ConfigDict,
  data_dir: str | None = None,
  source_dir: str | None = None,
) -> TaskFamily:
  """The task family `config.dataset`."""
  if config.dataset in TASK_FAMILIES:
    return TASK_FAMILIES[config.dataset](config, data_dir, source_dir)
  if config.dataset in jaxmeta.data.DATASETS:
    return episodic(config, data_dir, source_dir)
  raise TaskFamilyError(
    f'Unknown dataset {config.dataset!r}; choose one of {names()}.'
  )
