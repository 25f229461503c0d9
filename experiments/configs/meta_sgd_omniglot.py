"""Meta-SGD on Omniglot (presets 5w1s, 5w5s, 20w1s, 20w5s).

  python -m experiments.main \
      --config=meta_sgd_omniglot:5w1s \
      --workdir=runs/meta_sgd_5w1s

Li et al. 2017 (Section 4.2) use MAML's Conv-4 (64 filters, 28x28 images)
and adapt with ONE step of the learned per-parameter rates, in training and
at test time; the other settings here are `maml_omniglot`'s (meta-batch 32
for 5-way, 16 for 20-way, Adam 1e-3, 15 queries), with every rate starting
at MAML's inner learning rate. Published (Table 1): 5w1s 99.53 +- 0.26,
5w5s 99.93 +- 0.09, 20w1s 95.93 +- 0.38, 20w5s 98.97 +- 0.19.
"""

import ml_collections

from . import maml_omniglot

PRESETS = maml_omniglot.PRESETS


def get_config(arg: str = '5w1s') -> ml_collections.ConfigDict:
  """The setting `arg`, one of `PRESETS`."""
  c = maml_omniglot.get_config(arg, algorithm='meta_sgd')
  c.inner_steps = 1
  c.eval_inner_steps = 1
  return c
