"""MAML on tiered-ImageNet (presets 5w1s, 5w5s).

  python -m experiments.main \
      --config=maml_tieredimagenet:5w1s \
      --workdir=runs/maml_tiered_5w1s --source_dir=/path/to/tiered-imagenet

Finn et al.'s mini-ImageNet settings (2017, Section 5.2), as
`maml_miniimagenet`: Conv-4 with 32 filters on 84x84 RGB images, inner lr
0.01, 5 inner steps in training and 10 at test time, meta-batch 4 (1-shot) or
2 (5-shot), 15 queries per class, Adam 1e-3, 60k iterations; here on Ren et
al.'s split (2018). No published figure is recorded here: the commonly cited
ones could not be checked against their source. The whole training split is
9.7 GB of uint8: `--config.sampler=host` keeps it in host memory.
"""

import ml_collections

from . import default
from . import maml_miniimagenet

PRESETS = maml_miniimagenet.PRESETS


def get_config(arg: str = '5w1s') -> ml_collections.ConfigDict:
  """The setting `arg`, one of `PRESETS`."""
  default.check_preset(arg, PRESETS)
  c = maml_miniimagenet.get_config(arg)
  c.preset = f'maml_tieredimagenet:{arg}'
  return default.on_tieredimagenet(c, num_filters=32)
