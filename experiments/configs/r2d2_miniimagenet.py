"""R2-D2 on mini-ImageNet, CIFAR-FS and FC100 (presets miniimagenet_5w1s,
miniimagenet_5w5s, cifar_fs_5w1s, ..., fc100_5w5s).

  python -m experiments.main --config=r2d2_miniimagenet:cifar_fs_5w1s \
      --workdir=runs/r2d2_cifar_fs_5w1s --source_dir=/path/to/cifar-100-python

The ridge-regression head of Bertinetto et al. 2019 (`jaxmeta.r2d2`) in the
episodes and schedule of `protonet_miniimagenet`'s Conv-4 presets (Conv-4
with 64 filters, training episodes of 30 classes for 1-shot and 20 for
5-shot, 15 queries per class, Adam 1e-3 halved every 2000 episodes), on
84x84 mini-ImageNet or the 32x32 CIFAR-100 splits. Published (Bertinetto et
al. 2019, Table 1, as listed by Devos et al. 2019): mini-ImageNet 51.5 +-
0.2% (5w1s), 68.8 +- 0.2% (5w5s); CIFAR-FS 65.3 +- 0.2% (5w1s), 79.4 +-
0.1% (5w5s); none for FC100. Those figures come from the paper's wider
backbone (conv blocks of 96, 192, 384 and 512 filters, the last two blocks'
features concatenated, dropout), which jaxmeta's Conv-4 does not have:
expect these presets to fall short of them.
"""

import ml_collections

from . import default
from . import maml_cifar
from . import protonet_miniimagenet

DATASETS = ('miniimagenet',) + tuple(maml_cifar.SCHEMES)
PRESETS = tuple(
  f'{dataset}_5w{shots}s' for dataset in DATASETS for shots in (1, 5)
)


def get_config(arg: str = 'miniimagenet_5w1s') -> ml_collections.ConfigDict:
  """The setting `arg`, one of `PRESETS`."""
  default.check_preset(arg, PRESETS)
  dataset, shape = arg.rsplit('_', 1)
  c = protonet_miniimagenet.get_config(f'conv4_{shape}')
  c.preset = f'r2d2_miniimagenet:{arg}'
  c.algorithm = 'r2d2'
  if dataset != 'miniimagenet':
    c.dataset = dataset
    c.data = ml_collections.ConfigDict({'scheme': maml_cifar.SCHEMES[dataset]})
    c.eval_batch_size = default.get_config().eval_batch_size
  return c
