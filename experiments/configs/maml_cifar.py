"""MAML on CIFAR-FS and FC100 (presets cifar_fs_5w1s, ..., fc100_5w5s).

  python -m experiments.main \
      --config=maml_cifar:cifar_fs_5w1s \
      --workdir=runs/maml_cifar_fs_5w1s --source_dir=/path/to/cifar-100-python

MAML's mini-ImageNet settings (Finn et al. 2017: Conv-4 with 32 filters,
inner lr 0.01, 5 inner steps in training and 10 at test time, meta-batch 4
(1-shot) or 2 (5-shot), 15 queries per class) on the 32x32 images of the
CIFAR-100 few-shot splits: CIFAR-FS (Bertinetto et al. 2019, 64/16/20 classes)
and FC100 (Oreshkin et al. 2018, 60/20/20 classes split by superclass).
Published for MAML on CIFAR-FS (Bertinetto et al. 2019, Table 1):
58.9 +- 1.9% (5w1s), 71.5 +- 1.0% (5w5s).
"""

import ml_collections

from . import default

# dataset -> its split scheme.
SCHEMES = {'cifar_fs': 'bertinetto', 'fc100': 'oreshkin'}
# shots -> meta_batch_size, as in MAML's mini-ImageNet runs.
_META_BATCH = {1: 4, 5: 2}
PRESETS = tuple(
  f'{dataset}_5w{shots}s' for dataset in SCHEMES for shots in _META_BATCH
)


def get_config(arg: str = 'cifar_fs_5w1s') -> ml_collections.ConfigDict:
  """The setting `arg`, one of `PRESETS`."""
  if arg not in PRESETS:
    raise ValueError(f'Unknown preset {arg!r}; choose one of {PRESETS}.')
  dataset, shape = arg.rsplit('_', 1)
  shots = int(shape[len('5w') : -1])
  c = default.get_config()
  # Batch statistics at test time too, as the published figures were
  # measured: a query's prediction depends on the other queries.
  c.batch_norm = 'transductive'
  c.preset = f'maml_cifar:{arg}'
  c.dataset = dataset
  c.data = ml_collections.ConfigDict({'scheme': SCHEMES[dataset]})
  c.model.num_filters = 32
  c.update(
    meta_lr=1e-3,  # Adam, constant, as published.
    meta_lr_final=-1.0,
    ways=5,
    shots=shots,
    queries=15,
    meta_batch_size=_META_BATCH[shots],
    inner_lr=0.01,
    inner_steps=5,
    eval_inner_steps=10,
    num_iterations=60_000,
    eval_every=1000,
    checkpoint_every=1000,
    num_val_tasks=600,
  )
  return c
