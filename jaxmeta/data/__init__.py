"""Data for few-shot learning: Omniglot splits and episodic task sampling.

`omniglot.load` gives a split as one uint8 array `[classes, 20, S, S, 1]`;
`episodes.sample_task` / `sample_tasks` draw N-way K-shot tasks from it inside
`jit`.
"""

from jaxmeta.data import episodes
from jaxmeta.data import omniglot
from jaxmeta.data.episodes import check_episode_config
from jaxmeta.data.episodes import EpisodeConfigError
from jaxmeta.data.episodes import eval_task_keys
from jaxmeta.data.episodes import sample_task
from jaxmeta.data.episodes import sample_tasks
from jaxmeta.data.omniglot import ClassImages
from jaxmeta.data.omniglot import OmniglotError
from jaxmeta.data.omniglot import SPLIT_SCHEMES
