"""Prototypical Networks on CUB-200-2011 (presets conv4_5w1s, conv4_5w5s).

  python -m experiments.main \
      --config=protonet_cub:conv4_5w1s \
      --workdir=runs/protonet_cub_5w1s --source_dir=/path/to/CUB_200_2011.tgz

The Conv-4 recipe of `protonet_miniimagenet` (Snell et al. 2017: 64 filters,
84x84 images, training episodes of 30 classes for 1-shot or 20 for 5-shot
with 15 queries per class, Adam 1e-3 halved every 2000 episodes, 30,000
episodes) on Chen et al.'s split of CUB-200-2011 (100 / 50 / 50 species;
`jaxmeta.data.cub`, whole images resized). Published for ProtoNets with
Conv-4 on this split (Chen et al. 2019, with augmentation): 51.31 +- 0.91%
(5w1s), 70.77 +- 0.69% (5w5s). Their re-implementation trained on 5-way
episodes of 16 queries per class for 60,000 (1-shot) or 40,000 (5-shot)
episodes at a constant Adam 1e-3, with random crops, flips and colour
jitter, so the figures are a reference for these presets, not their result.
Whole splits on the device: 0.13 GB of uint8 for train.
"""

import ml_collections

from . import default
from . import protonet_miniimagenet

PRESETS = ('conv4_5w1s', 'conv4_5w5s')


def get_config(arg: str = 'conv4_5w1s') -> ml_collections.ConfigDict:
  """The setting `arg`, one of `PRESETS`."""
  default.check_preset(arg, PRESETS)
  c = protonet_miniimagenet.get_config(arg)
  c.preset = f'protonet_cub:{arg}'
  return default.on_cub(c)
