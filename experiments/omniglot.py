r"""The main job: MAML, Omniglot 5-way 1-shot, test accuracy with its 95% CI.

  python -m experiments.omniglot --workdir=/tmp/omniglot

(installed: `jaxmeta-omniglot`) is `python -m experiments.main` with the
config `default` as its default: a few minutes on 2 CPU cores on the Omniglot
shipped with the repository, then the test accuracy over 600 tasks of held-out
characters. Every flag of `experiments.main` works here.
"""

from . import main

# A config of experiments/configs, by name.
DEFAULT_CONFIG = 'default'


def run() -> None:
  """The program (also the `jaxmeta-omniglot` command)."""
  main.run(DEFAULT_CONFIG)


if __name__ == '__main__':
  run()
