"""Baseline and Baseline++ on Omniglot (presets baseline_5w1s,
baseline_20w1s, baseline_plus_plus_5w1s, baseline_plus_plus_20w1s).

  python -m experiments.main \
      --config=baseline_omniglot:baseline_plus_plus_5w1s \
      --workdir=runs/baseline_pp_5w1s

Chen et al. 2019 (Section 4.1): pretrain Conv-4 on minibatches of 16 images
of all training classes with Adam 1e-3, then, per test task, fit a new head
on the support embeddings with SGD at 0.01 and momentum 0.9 for 100
iterations (here 100 full-batch steps). Vinyals' split with rotations (4112
training classes), 28x28 images, 64 filters. The number of iterations is
chosen here. The paper reports Omniglot only as the source of its
cross-domain experiment.
"""

import ml_collections

from . import default

# preset -> (algorithm, ways, shots)
PRESETS = {
  f'{name}_{ways}w1s': (name, ways, 1)
  for name in ('baseline', 'baseline_plus_plus')
  for ways in (5, 20)
}


def get_config(
  arg: str = 'baseline_plus_plus_5w1s',
) -> ml_collections.ConfigDict:
  """The setting `arg`, one of `PRESETS`."""
  default.check_preset(arg, PRESETS)
  algorithm, ways, shots = PRESETS[arg]
  return default.published(
    f'baseline_omniglot:{arg}',
    'running',
    algorithm=algorithm,
    model={'num_filters': 64},
    meta_lr_final=-1.0,
    ways=ways,
    shots=shots,
    meta_batch_size=1,
    batch_size=16,
    inner_lr=0.01,
    inner_steps=0,
    eval_inner_steps=100,
    num_iterations=20_000,
  )
