"""The main job: MAML, Omniglot 5-way 1-shot, under 5 minutes on 2 CPU cores.

  python -m experiments.omniglot --workdir=/tmp/omniglot
  python -m experiments.main --config=default \
      --workdir=/tmp/omniglot --config.num_iterations=1000

Every other config file starts from this one and overrides a few fields.
"""

from typing import Any

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the default configuration (`arg` must be empty)."""
  if arg:
    raise ValueError(
      f'default takes no preset, got {arg!r}. Fix: --config=default.'
    )
  c = ml_collections.ConfigDict()
  c.preset = ''  # Set by the config files of published settings.
  c.algorithm = 'maml'  # A name in jaxmeta.ALGORITHMS.
  # The algorithm's own options (keywords of its builder, e.g. MAML++'s
  # switches; `jaxmeta.algorithms.options(name)` lists them), each at its
  # builder's default unless set here or on the command line
  # (`--config.method.first_order=true`; `--print_config` shows them all).
  c.method = ml_collections.ConfigDict()

  # The task family: a name in jaxmeta.data.DATASETS (class-image datasets,
  # sampled episodically) or in experiments.tasks.TASK_FAMILIES; `data` holds
  # the loader's options (for Omniglot: the split scheme and image size).
  c.dataset = 'omniglot'
  c.data = ml_collections.ConfigDict({'scheme': 'vinyals', 'image_size': 28})
  # The backbone: a name in jaxmeta.models.BACKBONES and its options.
  c.backbone = 'conv4'
  c.model = ml_collections.ConfigDict({'num_filters': 32, 'conv_impl': 'auto'})
  # Which images' statistics batch norm uses (jaxmeta.models.norms.MODES):
  # 'transductive', each batch its own (the published MAML and Reptile
  # protocol: a query's prediction depends on the other queries); 'support',
  # the support set's; 'running', running averages of the query sets'
  # statistics in meta-training (momentum `bn_momentum`); 'tasknorm',
  # TaskNorm-I.
  c.batch_norm = 'transductive'
  c.bn_momentum = 0.1
  # Rematerialisation (jaxmeta.models.rematerialised): '' off; 'full' keeps
  # only each forward pass's inputs and recomputes the rest in the backward
  # pass (or another name in jaxmeta.models.REMAT_POLICIES). Less memory for
  # second-order MAML with several inner steps, for more compute;
  # 'transductive' batch norm only.
  c.remat = ''

  # Training augmentation of image tasks (jaxmeta.data.augment.AugmentConfig):
  # all off, as in MAML.
  c.augment = ml_collections.ConfigDict(
    {
      'crop_padding': 0,
      'crop_mode': 'constant',
      'flip': False,
      'brightness': 0.0,
      'contrast': 0.0,
      'saturation': 0.0,
    }
  )
  # 'device': whole splits on the device, tasks drawn inside the step;
  # 'host': the training split stays in host memory and each meta-batch is
  # drawn there (for a device too small for the split).
  c.sampler = 'device'
  # The classes trained on: 'train', or 'trainval', the validation split's
  # too (Snell et al. 2017 train on Vinyals' 1,200 trainval characters).
  # Validation then scores classes seen in training, so choose the number
  # of iterations on a 'train' run and validate only at the end.
  c.train_split = 'train'

  c.ways = 5
  c.shots = 1
  c.queries = 5  # Query examples per class, training and evaluation.
  c.train_shots = 0  # Support shots per class in training; 0 = `shots`.
  c.train_queries = 0  # Query examples per class in training; 0 = `queries`.
  # Classes per training episode; 0 = `ways`. Only for algorithms whose
  # parameters do not depend on the ways (Prototypical Networks).
  c.train_ways = 0
  # Images per training minibatch (per meta-batch entry) of the algorithms
  # trained as ordinary classifiers (Baseline, Baseline++).
  c.batch_size = 64

  # The recipe, chosen on validation accuracy among those of
  # benchmarks/main_job/sweep.json (same 5-minute budget on 2 CPU cores):
  # meta-batch 8 for 2400 iterations with Adam at 2e-3 decayed linearly to 0
  # reached 93.6% validation accuracy; the same at a constant 1e-3, 93.2%;
  # meta-batch 4 for 4000 iterations at 1e-3 decayed, 92.4%.
  c.meta_batch_size = 8
  c.task_chunk_size = 0  # Tasks vmapped at once; 0: the backend's default.
  c.inner_steps = 1
  c.eval_inner_steps = 3
  c.inner_lr = 0.4
  c.inner_optimizer = 'sgd'  # 'sgd', or 'adam' (b1 = 0) as Reptile uses.
  c.meta_optimizer = 'adam'  # 'adam' or 'sgd'.
  c.meta_lr = 2e-3
  c.meta_lr_final = 0.0  # < 0: constant; else decay to this value.
  # The decay: 'linear' or 'cosine' to `meta_lr_final` over the run, or
  # 'halving' every `meta_lr_halve_every` iterations (Snell et al. 2017).
  c.meta_lr_schedule = 'linear'
  c.meta_lr_halve_every = 2000

  c.num_iterations = 2400
  c.eval_every = 800
  c.num_val_tasks = 100
  c.num_eval_tasks = 600
  c.eval_batch_size = 50  # Evaluation tasks per compiled call.
  c.seed = 0
  c.eval_seed = 2017
  c.checkpoint_every = 800
  c.keep_checkpoints = 3
  c.log_every = 10
  return c


def check_preset(arg: str, presets) -> None:
  """Refuses an `arg` that is not one of a config file's `presets`."""
  if arg not in presets:
    listed = sorted(presets) if isinstance(presets, dict) else presets
    raise ValueError(f'Unknown preset {arg!r}; choose one of {listed}.')


def published(
  preset: str, batch_norm: str = 'transductive', **fields: Any
) -> ml_collections.ConfigDict:
  """The config of the published setting `preset` ('NAME:arg').

  The papers' protocol (15 queries per class, Adam at 1e-3, 600 validation
  tasks, validated and saved every 1000 iterations) over the default, then
  `fields` (a dict for a group updates its fields one by one).

  Args:
    preset: the config's `preset` field, 'NAME:arg'.
    batch_norm: 'transductive' where the published figures were measured
      with batch statistics at test time too (a query's prediction depends
      on the other queries); 'running' where they come from PyTorch's eval
      mode (running statistics from training normalise every test image).
    **fields: the setting's own values.

  Returns:
    The config.
  """
  c = get_config()
  c.preset = preset
  c.batch_norm = batch_norm
  c.update(
    queries=15,
    meta_lr=1e-3,
    eval_every=1000,
    checkpoint_every=1000,
    num_val_tasks=600,
  )
  c.update(fields)
  return c


# The augmentation of the mini-ImageNet recipes that use one: random crops
# with 8 pixels of padding, flips and colour jitter.
JITTER = {
  'crop_padding': 8,
  'flip': True,
  'brightness': 0.4,
  'contrast': 0.4,
  'saturation': 0.4,
}


def on_miniimagenet(
  c: ml_collections.ConfigDict, backbone: str = 'conv4', num_filters: int = 64
) -> ml_collections.ConfigDict:
  """`c` on mini-ImageNet: Ravi & Larochelle's split of 84x84 images,
  `backbone` (Conv-4 with `num_filters`, or ResNet-12 at its defaults), 20
  evaluation tasks per compiled call."""
  c.dataset = 'miniimagenet'
  c.data = ml_collections.ConfigDict({'scheme': 'ravi', 'image_size': 84})
  c.backbone = backbone
  c.model = ml_collections.ConfigDict({'conv_impl': 'auto'})
  if backbone == 'conv4':
    c.model = ml_collections.ConfigDict(
      {'num_filters': num_filters, 'conv_impl': 'auto'}
    )
  c.eval_batch_size = 20
  return c


def on_tieredimagenet(
  c: ml_collections.ConfigDict, backbone: str = 'conv4', num_filters: int = 64
) -> ml_collections.ConfigDict:
  """`c` on tiered-ImageNet: Ren et al.'s split of 84x84 images, otherwise
  as `on_miniimagenet`."""
  c = on_miniimagenet(c, backbone, num_filters)
  c.dataset = 'tieredimagenet'
  c.data = ml_collections.ConfigDict({'scheme': 'ren', 'image_size': 84})
  return c


def on_cub(
  c: ml_collections.ConfigDict, num_filters: int = 64
) -> ml_collections.ConfigDict:
  """`c` on CUB-200-2011: Chen et al.'s split (100 / 50 / 50 classes) of
  84x84 images, Conv-4 with `num_filters`, as `on_miniimagenet` otherwise."""
  c = on_miniimagenet(c, 'conv4', num_filters)
  c.dataset = 'cub'
  c.data = ml_collections.ConfigDict({'scheme': 'chen', 'image_size': 84})
  return c
