"""ANIL on Omniglot (presets 5w1s, 5w5s, 20w1s, 20w5s).

  python -m experiments.main --config=anil_omniglot:20w1s \
      --workdir=runs/anil_20w1s

Raghu et al. 2020 (Section 4 and Appendix) train ANIL with MAML's settings,
which these presets take from `maml_omniglot` (Conv-4 with 64 filters, 28x28
images, the 1200-character training split, inner lr 0.4 and one step for
5-way, 0.1 and five steps for 20-way, meta-batch 32 / 16, Adam 1e-3, 10
steps at test time). The inner loop adapts the head only.
"""

import ml_collections

from . import maml_omniglot

PRESETS = maml_omniglot.PRESETS


def get_config(arg: str = '5w1s') -> ml_collections.ConfigDict:
  """The setting `arg`, one of `PRESETS`."""
  return maml_omniglot.get_config(arg, algorithm='anil')
