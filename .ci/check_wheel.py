"""Checks an installed jaxmeta from outside the checkout (run by .ci/run).

The package data (split lists), the experiment programs and their config
files must come from the installed package, not from a checkout.
"""

import os
import sys

import experiments
from experiments import omniglot as omniglot_program
import jaxmeta
from jaxmeta.data import miniimagenet_tfds
from jaxmeta.data import omniglot

here = os.path.abspath(os.getcwd())
for module in (jaxmeta, experiments):
  path = os.path.abspath(module.__file__)
  assert 'site-packages' in path or '/wheel_site/' in path, path
  assert not path.startswith(os.environ['CHECKOUT']), path
assert omniglot.DEFAULT_SOURCE_DIR is None, omniglot.DEFAULT_SOURCE_DIR
sizes = [
  len(omniglot._read_vinyals_list(n, None))  # pylint: disable=protected-access
  for n in ('train', 'trainval', 'test')
]
assert sizes == [1028, 1200, 423], sizes
assert len(miniimagenet_tfds.read_split_list('test')) == 20
assert os.path.isfile(omniglot_program.DEFAULT_CONFIG)
print(
  f'installed jaxmeta {jaxmeta.__version__} from {os.path.dirname(jaxmeta.__file__)}: '
  f'split lists {sizes}, configs {os.path.dirname(omniglot_program.DEFAULT_CONFIG)}',
  file=sys.stdout,
)
