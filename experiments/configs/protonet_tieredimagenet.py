"""Prototypical Networks on tiered-ImageNet (presets conv4_5w1s, conv4_5w5s).

  python -m experiments.main \
      --config=protonet_tieredimagenet:conv4_5w1s \
      --workdir=runs/protonet_tiered_5w1s --source_dir=/path/to/tiered-imagenet

Snell et al.'s protocol (2017, Section 3.2), as `protonet_miniimagenet`'s
Conv-4 presets: 64 filters on 84x84 images, training episodes of 30 classes
(1-shot) or 20 classes (5-shot) with 15 queries per class, Adam 1e-3 halved
every 2000 episodes; here on Ren et al.'s split (2018). No published figure is
recorded here: the commonly cited ones could not be checked against their
source. The whole training split is 9.7 GB of uint8 (every ILSVRC image of
351 classes): `--config.sampler=host` keeps it in host memory.
"""

import ml_collections

from . import default
from . import protonet_miniimagenet

PRESETS = tuple(
  p for p in protonet_miniimagenet.PRESETS if p.startswith('conv4')
)


def get_config(arg: str = 'conv4_5w1s') -> ml_collections.ConfigDict:
  """The setting `arg`, one of `PRESETS`."""
  default.check_preset(arg, PRESETS)
  c = protonet_miniimagenet.get_config(arg)
  c.preset = f'protonet_tieredimagenet:{arg}'
  return default.on_tieredimagenet(c)
