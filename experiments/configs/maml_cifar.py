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
from . import maml_miniimagenet

# dataset -> its split scheme.
SCHEMES = {'cifar_fs': 'bertinetto', 'fc100': 'oreshkin'}
PRESETS = tuple(
  f'{dataset}_{shape}'
  for dataset in SCHEMES
  for shape in maml_miniimagenet.PRESETS
)


def get_config(arg: str = 'cifar_fs_5w1s') -> ml_collections.ConfigDict:
  """The setting `arg`, one of `PRESETS`."""
  default.check_preset(arg, PRESETS)
  dataset, shape = arg.rsplit('_', 1)
  c = maml_miniimagenet.get_config(shape)
  c.preset = f'maml_cifar:{arg}'
  c.dataset = dataset
  c.data = ml_collections.ConfigDict({'scheme': SCHEMES[dataset]})
  c.eval_batch_size = default.get_config().eval_batch_size
  return c
