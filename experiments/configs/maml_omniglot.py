"""MAML on Omniglot as in Finn et al. 2017 (presets 5w1s, 5w5s, 20w1s, 20w5s).

  python -m experiments.main --config=maml_omniglot:5w1s \
      --workdir=runs/maml_5w1s

The cbfinn/maml README: inner lr 0.4, one inner step, meta-batch 32, Adam
1e-3, 60k iterations for 5-way; inner lr 0.1, five steps, meta-batch 16 for
20-way; 64 filters, 28x28 images, 15 queries per class, 10 inner steps at
test time. Published (Table 1): 5w1s 98.7 +- 0.4, 5w5s 99.9 +- 0.1,
20w1s 95.8 +- 0.3, 20w5s 98.9 +- 0.2.
"""

import ml_collections

from . import default

# preset -> (ways, shots, meta_batch_size, inner_lr, inner_steps)
PRESETS = {
  '5w1s': (5, 1, 32, 0.4, 1),
  '5w5s': (5, 5, 32, 0.4, 1),
  '20w1s': (20, 1, 16, 0.1, 5),
  '20w5s': (20, 5, 16, 0.1, 5),
}


def get_config(
  arg: str = '5w1s', algorithm: str = 'maml'
) -> ml_collections.ConfigDict:
  """The published setting `arg` (one of `PRESETS`) for `algorithm`."""
  default.check_preset(arg, PRESETS)
  ways, shots, meta_batch_size, inner_lr, inner_steps = PRESETS[arg]
  return default.published(
    f'{algorithm}_omniglot:{arg}',
    algorithm=algorithm,
    data={'scheme': 'maml'},
    model={'num_filters': 64},
    meta_lr_final=-1.0,  # Constant, as published.
    ways=ways,
    shots=shots,
    meta_batch_size=meta_batch_size,
    inner_lr=inner_lr,
    inner_steps=inner_steps,
    eval_inner_steps=10,
    num_iterations=60_000,
  )
