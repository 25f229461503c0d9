r"""Sinusoid regression (Finn et al. 2017, Section 5.1) on the same harness.

  python -m experiments.sinusoid --workdir=/tmp/sinusoid
  python -m experiments.sinusoid --workdir=/tmp/pre \
      --config=sinusoid:pretrain

(installed: `jaxmeta-sinusoid`) is `python -m experiments.main` with the
config `sinusoid` (experiments/configs/sinusoid.py) as its default: MAML on an
MLP 1-40-40-1, then the query MSE of held-out tasks after 0..10 inner steps
(`test_mse_by_step` in results.json, the paper's Figure 2).
"""

from . import main

# A config of experiments/configs, by name.
DEFAULT_CONFIG = 'sinusoid'


def run() -> None:
  """The program (also the `jaxmeta-sinusoid` command)."""
  main.run(DEFAULT_CONFIG)


if __name__ == '__main__':
  run()
