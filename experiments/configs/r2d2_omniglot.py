"""R2-D2 on Omniglot (presets 5w1s, 5w5s, 20w1s, 20w5s).

  python -m experiments.main --config=r2d2_omniglot:5w1s \
      --workdir=runs/r2d2_5w1s

The episodes and schedule of `protonet_omniglot` (training episodes of 60
classes, one per update, Adam 1e-3 halved every 2000 episodes) with the
ridge-regression head of Bertinetto et al. 2019 (`jaxmeta.r2d2`) on Conv-4
with 64 filters. The paper's own backbone (four conv blocks of 96 to 512
filters, features of the last two blocks concatenated) is not reproduced,
so no published figure is claimed for these presets.
"""

import ml_collections

from . import protonet_omniglot

PRESETS = protonet_omniglot.PRESETS


def get_config(arg: str = '5w1s') -> ml_collections.ConfigDict:
  """The setting `arg`, one of `PRESETS`."""
  c = protonet_omniglot.get_config(arg)
  c.preset = f'r2d2_omniglot:{arg}'
  c.algorithm = 'r2d2'
  return c
