"""A published model's test accuracy with each source of batch-norm moments.

  python benchmarks/reproduction/batch_norm_at_test.py \
      benchmarks/reproduction/protonet_omniglot_5w1s

The same trained weights and the same 600 test tasks as `results.json`;
only the moments each batch-norm layer normalises with change:

- `running`: the running statistics of the checkpoint (how the model is
  tested, as PyTorch's `model.eval()`);
- `train split` / `test split`: the mean batch moments of 30 batches of
  300 random images of that split, in place of the running statistics (is
  the running average what training saw; does the test split differ?);
- `support`: each query normalised with its task's support set's moments;
- `transductive`: every batch by itself (the support set, and all the
  queries of a task together; scored alone, each query by itself).

Writes `batch_norm_at_test.json` beside this file, keyed by model.
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import jaxmeta
from experiments import build
from experiments import evaluation
from experiments import predict
from experiments import tasks
from jaxmeta import sharding
from jaxmeta.data import episodes
from jaxmeta.models import norms

HERE = pathlib.Path(__file__).resolve().parent


def _with_statistics(params, statistics):
  """`params` with its running statistics replaced by `statistics`."""
  params = jax.tree.map(lambda x: x, params)  # A copy of the dicts.
  owner = params if norms.STATISTICS in params else params['model']
  owner[norms.STATISTICS] = statistics
  return params


def split_moments(model, params, images, rng, batches=30, size=300):
  """Mean unbiased batch moments of `batches` random batches of `size`
  images of `images` (uint8 `[classes, examples, H, W, C]`)."""
  sets = []
  for _ in range(batches):
    c = rng.integers(0, images.shape[0], size)
    e = rng.integers(0, images.shape[1], size)
    x = jnp.asarray(images[c, e], jnp.float32) / 255.0
    sets.append(norms.batch_statistics(model, params, x, unbiased=True))
  return jax.tree.map(lambda *v: jnp.mean(jnp.stack(v), 0), *sets)


def main(folder: pathlib.Path) -> dict:
  _, params, config = predict.load_run(folder)
  mesh = sharding.make_mesh()
  keys = episodes.eval_task_keys(config.eval_seed, config.num_eval_tasks)
  rng = np.random.default_rng(0)

  def score(mode, params):
    c = ml_collections.ConfigDict(config.to_dict())
    c.batch_norm = mode
    family = tasks.build(c)
    learner = build.build_learner(c, family, (28, 28, 1))
    evaluator = evaluation.Evaluator(learner, family, c, mesh, alone=True)
    values, _, alone = evaluator(params, family.load('test'), keys)
    (mean, ci95), (mean_alone, _) = map(jaxmeta.mean_and_ci95, (values, alone))
    return {'accuracy': mean, 'ci95': ci95, 'accuracy_alone': mean_alone}

  family = tasks.build(config)
  model = build.build_learner(config, family, (28, 28, 1)).model
  trainable = norms.split_model_state(params)[0]
  rows = {'running': score('running', params)}
  for split in ('train', 'test'):
    moments = split_moments(model, params, np.asarray(family.load(split)), rng)
    rows[f'{split} split'] = score('running', _with_statistics(params, moments))
  for mode in ('support', 'transductive'):
    rows[mode] = score(mode, trainable)
  return rows


if __name__ == '__main__':
  folder = pathlib.Path(sys.argv[1])
  rows = main(folder)
  for name, row in rows.items():
    print(
      f'{name:>12}: {100 * row["accuracy"]:.2f} +- {100 * row["ci95"]:.2f} '
      f'(alone {100 * row["accuracy_alone"]:.2f})'
    )
  path = HERE / 'batch_norm_at_test.json'
  found = json.loads(path.read_text()) if path.exists() else {}
  found[folder.resolve().name] = rows
  path.write_text(json.dumps(found, indent=2, sort_keys=True) + '\n')
