r"""The main job: MAML, Omniglot 5-way 1-shot, test accuracy with its 95% CI.

  python -m experiments.omniglot --workdir=/tmp/omniglot

is `python -m experiments.main` with `experiments/configs/default.py` as the
default config: a short real run (a few minutes on 2 CPU cores) on the Vinyals
split of the real Omniglot shipped with the repository, which prints the test
accuracy over 600 tasks of held-out characters. Every flag of
`experiments.main` works here (`--config.num_iterations=2000`,
`--config=experiments/configs/maml_omniglot.py:5w1s`, `--mode=eval`).
"""

import os

from . import main

DEFAULT_CONFIG = os.path.join(
  os.path.dirname(__file__), 'configs', 'default.py'
)


def run() -> None:
  """The program (also the `jaxmeta-omniglot` command)."""
  main.run(DEFAULT_CONFIG)


if __name__ == '__main__':
  run()
