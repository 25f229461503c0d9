"""Baseline and Baseline++ on CUB-200-2011 (presets
{baseline,baseline_plus_plus}_conv4_5w{1,5}s).

  python -m experiments.main \
      --config=baseline_cub:baseline_plus_plus_conv4_5w1s \
      --workdir=runs/baseline_pp_cub --source_dir=/path/to/CUB_200_2011.tgz

The Conv-4 recipe of `baseline_miniimagenet` (Chen et al. 2019: pretrain on
the training classes with minibatches of 16, Adam 1e-3, random crops, flips
and colour jitter, 60,000 minibatches, here about 160 passes over the 100
training species' images; per test task a new head fitted on the support
embeddings with SGD at 0.01 and momentum 0.9 for 100 steps) on their split of
CUB-200-2011 (`jaxmeta.data.cub`, whole images resized). Published (Chen et
al. 2019, Conv-4 on this split): Baseline 47.12 +- 0.74% / 64.16 +- 0.71%,
Baseline++ 60.53 +- 0.83% / 79.34 +- 0.61% (5w1s / 5w5s), from their code
(github.com/wyharveychen/CloserLookFewShot), which pretrains on CUB for 200
epochs of about 5,900 images.
"""

import ml_collections

from . import baseline_miniimagenet
from . import default

PRESETS = tuple(
  f'{name}_conv4_5w{shots}s'
  for name in ('baseline', 'baseline_plus_plus')
  for shots in (1, 5)
)


def get_config(
  arg: str = 'baseline_plus_plus_conv4_5w1s',
) -> ml_collections.ConfigDict:
  """The setting `arg`, one of `PRESETS`."""
  default.check_preset(arg, PRESETS)
  c = baseline_miniimagenet.get_config(arg)
  c.preset = f'baseline_cub:{arg}'
  return default.on_cub(c)
