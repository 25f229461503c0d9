"""Prototypical Networks on Omniglot (presets 5w1s, 5w5s, 20w1s, 20w5s).

  python -m experiments.main \
      --config=protonet_omniglot:20w1s \
      --workdir=runs/protonet_20w1s

Snell et al. 2017 (Section 3.1): Vinyals' split with rotations, 28x28
images, Conv-4 with 64 filters, training episodes of 60 classes with 5
queries per class and as many shots as at test time, one episode per
update, Adam 1e-3 halved every 2000 episodes. The number of episodes (the
paper trains until the validation loss stops improving) is chosen here.
Published (Table 1): 5w1s 98.8%, 5w5s 99.7%, 20w1s 96.0%, 20w5s 98.9%.
5w1s and 20w1s with `--config.num_iterations=7000` (an hour on 2 CPU
cores), trained models and results: `benchmarks/reproduction/`.
"""

import ml_collections

from . import default

# preset -> (ways, shots)
PRESETS = {'5w1s': (5, 1), '5w5s': (5, 5), '20w1s': (20, 1), '20w5s': (20, 5)}


def get_config(arg: str = '5w1s') -> ml_collections.ConfigDict:
  """The published setting `arg`, one of `PRESETS`."""
  default.check_preset(arg, PRESETS)
  ways, shots = PRESETS[arg]
  return default.published(
    f'protonet_omniglot:{arg}',
    'running',
    algorithm='protonet',
    model={'num_filters': 64},
    meta_lr_schedule='halving',
    meta_lr_halve_every=2000,
    ways=ways,
    shots=shots,
    train_ways=60,
    train_queries=5,
    meta_batch_size=1,
    inner_steps=0,
    eval_inner_steps=0,
    num_iterations=20_000,
  )
