"""Baseline and Baseline++ on mini-ImageNet (presets
{baseline,baseline_plus_plus}_{conv4,resnet12}_5w{1,5}s).

  python -m experiments.main \
      --config=baseline_miniimagenet:baseline_plus_plus_conv4_5w1s \
      --workdir=runs/baseline_pp_mini --source_dir=/path/to/mini-imagenet

Chen et al. 2019 (Section 4.1): pretrain on the 64 training classes with
minibatches of 16, Adam 1e-3, 400 epochs of the 38,400 images (960,000
images, 60,000 minibatches), with random crops, flips and colour jitter;
per test task a new head fitted on the support embeddings with SGD at 0.01
and momentum 0.9 for 100 iterations (here full-batch steps). Conv-4 with 64
filters on 84x84 images. Published (Conv-4 on mini-ImageNet): Baseline 42.11 +-
0.71% / 62.53 +- 0.69%, Baseline++ 48.24 +- 0.75% / 66.43 +- 0.63% (5w1s /
5w5s). The paper's residual backbones are ResNet-10/18/34; the ResNet-12
presets have no published counterpart.
"""

import ml_collections

from . import default

# preset -> (algorithm, backbone, shots)
PRESETS = {
  f'{name}_{backbone}_5w{shots}s': (name, backbone, shots)
  for name in ('baseline', 'baseline_plus_plus')
  for backbone in ('conv4', 'resnet12')
  for shots in (1, 5)
}


def get_config(
  arg: str = 'baseline_plus_plus_conv4_5w1s',
) -> ml_collections.ConfigDict:
  """The published setting `arg`, one of `PRESETS`."""
  default.check_preset(arg, PRESETS)
  algorithm, backbone, shots = PRESETS[arg]
  c = default.published(
    f'baseline_miniimagenet:{arg}',
    'running',
    algorithm=algorithm,
    augment=default.JITTER,
    meta_lr_final=-1.0,
    ways=5,
    shots=shots,
    meta_batch_size=1,
    batch_size=16,
    inner_lr=0.01,
    inner_steps=0,
    eval_inner_steps=100,
    num_iterations=60_000,
    eval_every=2000,
    checkpoint_every=2000,
  )
  return default.on_miniimagenet(c, backbone)
