"""Each method's own recipe on the main job, as `experiments.studies.compare`
trains it: a config file, one preset per method.

  python -m experiments.main \
      --config=experiments/studies/compare_recipes.py:protonet --workdir=DIR

trains one method of the comparison at its configured length (the
comparison sets the length from its time budget). Every recipe keeps the
main job's data, backbone and test tasks (Omniglot 5-way 1-shot, Vinyals'
split, Conv-4 with 32 filters, 600 test tasks).
"""

from typing import Any

import ml_collections

from ..configs import default
from ..configs import reptile_omniglot

# The fields of Nichol et al.'s Omniglot recipe (`reptile_omniglot:5w1s`)
# that Reptile takes into the comparison.
REPTILE_FIELDS = (
  'train_shots train_queries meta_batch_size inner_steps eval_inner_steps '
  'inner_lr inner_optimizer meta_optimizer meta_lr meta_lr_final'
).split()
MAML = (
  "The main job's recipe (inner lr 0.4, one step, 3 at test time, "
  'meta-batch 8, Adam 2e-3 decayed linearly to 0).'
)
# The methods without an inner loop in training: one episode or minibatch
# per update, Adam 1e-3.
NO_INNER_LOOP = dict(meta_batch_size=1, inner_steps=0, meta_lr=1e-3)
BASELINE = (
  'Minibatches of 16, Adam 1e-3; a new head fitted with 100 SGD steps at '
  '0.01, momentum 0.9 (Chen et al.).',
  dict(
    NO_INNER_LOOP,
    batch_size=16,
    inner_lr=0.01,
    eval_inner_steps=100,
    meta_lr_final=-1.0,
  ),
)
PROTONET = (
  '60-way training episodes, 5 queries, one episode per update, Adam 1e-3 '
  'halved every 2000 episodes (Snell et al.).',
  dict(
    NO_INNER_LOOP,
    train_ways=60,
    train_queries=5,
    eval_inner_steps=0,
    meta_lr_schedule='halving',
    meta_lr_halve_every=2000,
  ),
)
# method -> (the recipe in words, the fields it sets on the main job's
# config; Reptile's come from `reptile_omniglot`).
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
  'maml': (MAML, {}),
  'fomaml': (MAML, {}),
  'reptile': ("Nichol et al.'s Omniglot recipe (`reptile_omniglot`).", {}),
  'anil': (MAML, {}),
  'meta_sgd': (
    'One step in training and at test time (Li et al.).',
    dict(eval_inner_steps=1),
  ),
  'maml_plus_plus': (
    'Five steps from rate 0.1, cosine to 1e-5; MSL over the first 1/15 and '
    'first order over the first 1/3 of the run (10 and 50 of 150 epochs).',
    dict(
      inner_lr=0.1,
      inner_steps=5,
      eval_inner_steps=5,
      meta_lr_final=1e-5,
      meta_lr_schedule='cosine',
    ),
  ),
  'protonet': PROTONET,
  'r2d2': (
    "ProtoNets' episodes and schedule with the ridge head (not tuned).",
    PROTONET[1],
  ),
  'imaml': (
    "The main job's recipe with five proximal steps (lambda 2, five CG "
    'steps; not tuned).',
    dict(inner_steps=5, eval_inner_steps=5),
  ),
  'baseline': BASELINE,
  'baseline_plus_plus': BASELINE,
}
PRESETS = tuple(RECIPES)


def get_config(
  method: str = 'maml', base: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
  """The main job's config (or a copy of `base`) with `method`'s recipe."""
  if method not in RECIPES:
    raise ValueError(
      f'Unknown method {method!r}; choose one of {", ".join(PRESETS)}.'
    )
  c = ml_collections.ConfigDict((base or default.get_config()).to_dict())
  c.algorithm = method
  if method == 'reptile':
    preset = reptile_omniglot.get_config('5w1s')
    c.update({n: preset[n] for n in REPTILE_FIELDS})
  c.update(RECIPES[method][1])
  c.preset = f'compare:{method}'
  return c
