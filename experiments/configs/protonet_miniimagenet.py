"""Prototypical Networks on mini-ImageNet (presets conv4_5w1s, conv4_5w5s,
resnet12_5w1s, resnet12_5w5s).

  python -m experiments.main \
      --config=protonet_miniimagenet:conv4_5w1s \
      --workdir=runs/protonet_mini_5w1s --source_dir=/path/to/mini-imagenet

Snell et al. 2017 (Section 3.2): Conv-4 with 64 filters on 84x84 images,
Ravi & Larochelle's split, training episodes of 30 classes (1-shot) or 20
classes (5-shot) with 15 queries per class, Adam 1e-3 halved every 2000
episodes. Published (Table 2): 49.42 +- 0.78% (5w1s), 68.20 +- 0.66% (5w5s).
With ResNet-12 (64-160-320-640, DropBlock), as re-run by Lee et al. 2019
(MetaOptNet, Table 1): 59.25 +- 0.64% (5w1s), 75.60 +- 0.48% (5w5s); the
ResNet-12 presets keep Snell's schedule and add the augmentation of those
re-runs (random crop with 8 pixels of padding, flips, colour jitter). Whole
splits on the device: 0.8 GB of uint8 for train, or `--config.sampler=host`.
"""

import ml_collections

from . import default

# preset -> (backbone, shots, train_ways)
PRESETS = {
  f'{backbone}_5w{shots}s': (backbone, shots, 30 if shots == 1 else 20)
  for backbone in ('conv4', 'resnet12')
  for shots in (1, 5)
}


def get_config(arg: str = 'conv4_5w1s') -> ml_collections.ConfigDict:
  """The published setting `arg`, one of `PRESETS`."""
  default.check_preset(arg, PRESETS)
  backbone, shots, train_ways = PRESETS[arg]
  c = default.published(
    f'protonet_miniimagenet:{arg}',
    'running',
    algorithm='protonet',
    meta_lr_schedule='halving',
    meta_lr_halve_every=2000,
    ways=5,
    shots=shots,
    train_ways=train_ways,
    meta_batch_size=1,
    inner_steps=0,
    eval_inner_steps=0,
    num_iterations=30_000,
  )
  if backbone == 'resnet12':
    c.augment.update(default.JITTER)
  return default.on_miniimagenet(c, backbone)
