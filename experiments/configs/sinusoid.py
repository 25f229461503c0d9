"""Sinusoid regression (Finn et al. 2017, Section 5.1): MAML or the baseline.

  python -m experiments.sinusoid --workdir=/tmp/sinusoid
  python -m experiments.main --config=sinusoid:pretrain \
      --workdir=/tmp/sinusoid_pretrain

An MLP 1-40-40-1, K = 10 support points, inner lr 0.01, one inner step,
meta-batch 25, Adam 1e-3, as in the paper (which trains 70,000 iterations;
15,000 keep the run to about a minute on a CPU). Test tasks are scored on 100
query points after 0..10 inner steps, as in the paper's Figure 2. The preset
is the algorithm: `maml` (default), `fomaml`, `reptile` or `pretrain` (the
paper's baseline: one network trained on all tasks jointly, fine-tuned the
same way at test time).
"""

import ml_collections

from . import default

# The presets are the algorithms.
PRESETS = ('maml', 'fomaml', 'reptile', 'pretrain')


def get_config(arg: str = 'maml') -> ml_collections.ConfigDict:
  """The paper's setting, trained with the algorithm `arg` (of `PRESETS`)."""
  default.check_preset(arg, PRESETS)
  c = default.get_config()
  c.preset = f'sinusoid:{arg}' if arg != 'maml' else ''
  c.algorithm = arg
  c.dataset = 'sinusoid'
  c.data = ml_collections.ConfigDict()
  c.backbone = 'mlp'
  c.model = ml_collections.ConfigDict({'hidden': (40, 40)})
  c.update(
    ways=1,
    shots=10,
    queries=100,
    train_queries=10,
    meta_batch_size=25,
    inner_lr=0.01,
    inner_steps=1,
    eval_inner_steps=10,
    meta_lr=1e-3,
    meta_lr_final=-1.0,
    num_iterations=15_000,
    eval_every=5000,
    checkpoint_every=5000,
    num_val_tasks=100,
    num_eval_tasks=600,
    eval_batch_size=600,
    log_every=500,
    seed=0,
    eval_seed=1234,
  )
  return c
