"""Training-program configs and runs shared by the experiment tests.

Tiny configs that train in seconds on the `tiny_images` dataset (the
`tiny_dataset` fixture) or on sinusoids, a run at real Omniglot size, and
restoring a finished run's state.
"""

import ml_collections

from experiments import build
from experiments import train
from experiments.configs import default
from experiments.configs import sinusoid as sinusoid_config
from support import REPO

OMNIGLOT_SOURCE_DIR = str(REPO / 'data' / 'omniglot')

# Small options per backbone, so that every pair trains in seconds.
TINY_MODEL_OPTIONS = {
  'conv4': {'num_filters': 4, 'num_blocks': 2},
  'mlp': {'hidden': (8,)},
  'resnet12': {'widths': (2, 2, 2)},  # 8x8 images: three 2x2 pools.
}


def tiny_config(dataset_name, **overrides):
  config = default.get_config()
  config.dataset = dataset_name
  config.data = ml_collections.ConfigDict({'image_size': 8})
  config.model = ml_collections.ConfigDict(TINY_MODEL_OPTIONS['conv4'])
  config.update(
    ways=3,
    shots=1,
    queries=2,
    meta_batch_size=2,
    num_iterations=4,
    eval_every=2,
    checkpoint_every=2,
    log_every=1,
    num_val_tasks=4,
    num_eval_tasks=6,
    eval_batch_size=4,
    eval_inner_steps=2,
    # Constant: runs resumed with more iterations follow the same rate.
    meta_lr=1e-3,
    meta_lr_final=-1.0,
  )
  config.update(overrides)
  return config


def tiny_sinusoid(**overrides):
  config = sinusoid_config.get_config()
  config.model.hidden = (8,)
  config.update(
    num_iterations=4,
    eval_every=2,
    checkpoint_every=2,
    log_every=1,
    num_val_tasks=4,
    num_eval_tasks=6,
    eval_batch_size=3,
    meta_batch_size=2,
  )
  config.update(overrides)
  return config


def run(config, workdir, **kwargs):
  return train.train_and_evaluate(
    config, str(workdir), progress=False, **kwargs
  )


def restore(config, workdir, step=None):
  """`(state, meta)` of a step (default: the latest) of a finished run."""
  built = build.Run(config, str(workdir), None, None, 'train')
  step = built.checkpoints.latest_step() if step is None else step
  state, meta = built.checkpoints.restore(built.init_state(), step)
  built.checkpoints.close()
  return state, meta


def short_real_run(workdir, data_dir, **overrides):
  """The main job's results after 150 iterations at 16 filters, meta-batch 8
  and a constant meta learning rate, tested on 100 tasks of real Omniglot."""
  config = default.get_config()
  config.model.num_filters = 16
  config.update(
    meta_batch_size=8,
    meta_lr=3e-3,
    meta_lr_final=-1.0,
    num_iterations=150,
    eval_every=150,
    checkpoint_every=150,
    log_every=50,
    num_val_tasks=40,
    num_eval_tasks=100,
  )
  config.update(overrides)
  return train.train_and_evaluate(
    config,
    str(workdir),
    data_dir=data_dir,
    source_dir=OMNIGLOT_SOURCE_DIR,
    progress=False,
  )


def tiny_benchmark_settings(tmp_path, **kwargs):
  """The benchmark's settings for one jaxmeta MAML step of the tiny config,
  writing under `tmp_path / 'out'`; `kwargs` override."""
  from experiments.benchmark import configs

  return configs.settings(
    **{
      'out': str(tmp_path / 'out'),
      'configs': ('tiny',),
      'algorithms': ('maml',),
      'implementations': ('jaxmeta',),
      'conv_impls': ('auto',),
      'num_steps': 1,
      'warmup_steps': 0,
      **kwargs,
    }
  )
