"""Data for few-shot learning: datasets by name and episodic task sampling.

`load(name, split, ...)` gives a split of a registered dataset (`DATASETS`)
as one uint8 array `[classes, examples, H, W, C]` (and, where classes hold
unequal numbers of examples, their counts: `ClassImages`);
`episodes.sample_task` / `sample_tasks` draw N-way K-shot tasks from it inside
`jit`; `sample_tasks_host` draws them on the host when a split is too large for
the device. Registered: 'omniglot', 'miniimagenet', 'tieredimagenet',
'cifar_fs', 'fc100', 'cub'.
"""

from jaxmeta.data import augment
from jaxmeta.data import cifar100
from jaxmeta.data import cub
from jaxmeta.data import episodes
from jaxmeta.data import host_episodes
from jaxmeta.data import miniimagenet
from jaxmeta.data import omniglot
from jaxmeta.data import tieredimagenet
from jaxmeta.data import registry
from jaxmeta.data.augment import AugmentConfig
from jaxmeta.data.cifar100 import Cifar100Error
from jaxmeta.data.cub import CUBError
from jaxmeta.data.episodes import check_episode_config
from jaxmeta.data.episodes import EpisodeConfigError
from jaxmeta.data.episodes import eval_task_keys
from jaxmeta.data.episodes import sample_task
from jaxmeta.data.episodes import sample_tasks
from jaxmeta.data.host_episodes import sample_tasks_host
from jaxmeta.data.miniimagenet import MiniImageNetError
from jaxmeta.data.omniglot import OmniglotError
from jaxmeta.data.omniglot import SPLIT_SCHEMES
from jaxmeta.data.registry import ClassImages
from jaxmeta.data.registry import DataError
from jaxmeta.data.registry import DATASETS
from jaxmeta.data.registry import load
from jaxmeta.data.registry import register_dataset
from jaxmeta.data.tieredimagenet import TieredImageNetError
