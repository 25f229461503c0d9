"""Reptile on Omniglot as in Nichol et al. 2018 (transductive runs).

  python -m experiments.main \
      --config=reptile_omniglot:5w1s --workdir=DIR

The openai/supervised-reptile README: Adam (b1 = 0) inner loop, 10 training
shots per class, meta-batch 5, meta step size 1 linearly annealed to 0, 50
evaluation steps; inner lr 1e-3 and 5 steps (5-way), 5e-4 and 10 steps
(20-way). Reptile ignores the query set in training: one query per class
only feeds the logged training accuracy. Published (transductive):
5w1s 97.68 +- 0.04, 5w5s 99.48 +- 0.06, 20w1s 89.43 +- 0.14,
20w5s 97.12 +- 0.32.
"""

import ml_collections

from . import default

# preset -> (ways, shots, inner_lr, inner_steps, num_iterations)
PRESETS = {
  '5w1s': (5, 1, 1e-3, 5, 100_000),
  '5w5s': (5, 5, 1e-3, 5, 100_000),
  '20w1s': (20, 1, 5e-4, 10, 200_000),
  '20w5s': (20, 5, 5e-4, 10, 200_000),
}


def get_config(arg: str = '5w1s') -> ml_collections.ConfigDict:
  """The published setting `arg`, one of `PRESETS`."""
  default.check_preset(arg, PRESETS)
  ways, shots, inner_lr, inner_steps, num_iterations = PRESETS[arg]
  return default.published(
    f'reptile_omniglot:{arg}',
    algorithm='reptile',
    data={'scheme': 'maml'},
    model={'num_filters': 64},
    ways=ways,
    shots=shots,
    train_shots=10,
    train_queries=1,
    meta_batch_size=5,
    inner_steps=inner_steps,
    eval_inner_steps=50,
    inner_lr=inner_lr,
    inner_optimizer='adam',
    meta_optimizer='sgd',
    meta_lr=1.0,
    meta_lr_final=0.0,
    num_iterations=num_iterations,
  )
