"""MAML on mini-ImageNet as in Finn et al. 2017 (presets 5w1s, 5w5s).

  python -m experiments.main \
      --config=maml_miniimagenet:5w1s \
      --workdir=runs/maml_mini_5w1s --source_dir=/path/to/mini-imagenet

Section 5.2 of the paper: Conv-4 with 32 filters on 84x84 RGB images, inner
lr 0.01, 5 inner steps in training and 10 at test time, meta-batch 4
(1-shot) or 2 (5-shot), 15 queries per class, Adam 1e-3, 60k iterations.
Published (Table 2): 48.70 +- 1.84% (5w1s), 63.11 +- 0.92% (5w5s). The
images are the user's (see `jaxmeta.data.miniimagenet`); one split on the
device is 0.8 GB of uint8 (train), or use `--config.sampler=host`.
"""

import ml_collections

from . import default

# preset -> (shots, meta_batch_size)
PRESETS = {'5w1s': (1, 4), '5w5s': (5, 2)}


def get_config(arg: str = '5w1s') -> ml_collections.ConfigDict:
  """The published setting `arg`, one of `PRESETS`."""
  default.check_preset(arg, PRESETS)
  shots, meta_batch_size = PRESETS[arg]
  c = default.published(
    f'maml_miniimagenet:{arg}',
    meta_lr_final=-1.0,  # Constant, as published.
    ways=5,
    shots=shots,
    meta_batch_size=meta_batch_size,
    inner_lr=0.01,
    inner_steps=5,
    eval_inner_steps=10,
    num_iterations=60_000,
  )
  return default.on_miniimagenet(c, num_filters=32)
