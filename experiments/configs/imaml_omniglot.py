"""Implicit MAML on Omniglot (presets 5w1s, 20w1s).

  python -m experiments.main --config=imaml_omniglot:5w1s \
      --workdir=runs/imaml_5w1s

The authors' README (aravindr93/imaml_dev): 16 inner gradient steps at 0.1,
proximal lambda 2, 5 conjugate-gradient steps with damping 1, meta-batch 32,
Adam 1e-3, 20,000 meta-steps, batch statistics at test time too; their
5-way command serves 20-way here. Their Conv-4 downsamples by strided
convolutions, this one by max-pooling (`jaxmeta.conv4`); see
`jaxmeta.algorithms.imaml` for the CG matrix and the test-time adaptation.
Published (Table 2): 5w1s 99.16 +- 0.35, 20w1s 94.46 +- 0.42.
"""

import ml_collections

from . import default

# preset -> (ways, shots)
PRESETS = {'5w1s': (5, 1), '20w1s': (20, 1)}


def get_config(arg: str = '5w1s') -> ml_collections.ConfigDict:
  """The published setting `arg`, one of `PRESETS`."""
  default.check_preset(arg, PRESETS)
  ways, shots = PRESETS[arg]
  return default.published(
    f'imaml_omniglot:{arg}',
    algorithm='imaml',
    method={'reg_lambda': 2.0, 'cg_steps': 5, 'cg_damping': 1.0},
    model={'num_filters': 64},
    meta_lr_final=-1.0,  # Constant, as published.
    ways=ways,
    shots=shots,
    meta_batch_size=32,
    inner_lr=0.1,
    inner_steps=16,
    eval_inner_steps=16,
    num_iterations=20_000,
  )
