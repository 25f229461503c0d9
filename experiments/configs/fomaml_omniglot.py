"""First-order MAML on Omniglot: MAML's published settings, Hessian dropped.

  python -m experiments.main \
      --config=fomaml_omniglot:5w1s --workdir=DIR

Finn et al. 2017, Section 5.2: first-order MAML 98.3 +- 0.5 (5w1s),
99.2 +- 0.2 (5w5s), 89.4 +- 0.5 (20w1s), 97.9 +- 0.1 (20w5s).
"""

import ml_collections

from . import maml_omniglot


def get_config(arg: str = '5w1s') -> ml_collections.ConfigDict:
  """MAML's preset `arg` with `algorithm='fomaml'`."""
  return maml_omniglot.get_config(arg, algorithm='fomaml')
