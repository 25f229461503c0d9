r"""Sinusoid regression (Finn et al. 2017, Section 5.1) on the same harness.

  python -m experiments.sinusoid --workdir=/tmp/sinusoid
  python -m experiments.sinusoid --workdir=/tmp/pre \
      --config=sinusoid:pretrain

(installed: `jaxmeta-sinusoid`) is `python -m experiments.main` with the
config `sinusoid` as its default; results.json has the paper's Figure 2 as
`test_mse_by_step`.
"""

from . import main

# A config of experiments/configs, by name.
DEFAULT_CONFIG = 'sinusoid'


def run() -> None:
  """The program (also the `jaxmeta-sinusoid` command)."""
  main.run(DEFAULT_CONFIG)


if __name__ == '__main__':
  run()
