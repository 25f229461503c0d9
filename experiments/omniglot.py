r"""The main job: MAML, Omniglot 5-way 1-shot, test accuracy with its 95% CI.

  python -m experiments.omniglot --workdir=/tmp/omniglot

(installed: `jaxmeta-omniglot`) is `python -m experiments.main` with the
config `default` (experiments/configs/default.py) as its default: a short real
run (a few minutes on 2 CPU cores) on the Vinyals split of the real Omniglot
shipped with the repository, which prints the test accuracy over 600 tasks of
held-out characters. Every flag of `experiments.main` works here
(`--config.num_iterations=2000`, `--config=maml_omniglot:5w1s`,
`--mode=eval`).
"""

from . import main

# A config of experiments/configs, by name.
DEFAULT_CONFIG = 'default'


def run() -> None:
  """The program (also the `jaxmeta-omniglot` command)."""
  main.run(DEFAULT_CONFIG)


if __name__ == '__main__':
  run()
