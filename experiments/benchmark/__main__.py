"""`python -m experiments.benchmark`: the package docstring is its --help."""

import sys

from absl import app
from absl import flags

from .. import common
from . import cli

# absl prints the main module's docstring as the usage.
__doc__ = sys.modules[__package__].__doc__

if __name__ == '__main__':
  common.reexec_with_huge_pages()
  cli.define_flags()
  # --help lists the flags defined in cli as this program's own.
  flags.adopt_module_key_flags(cli)
  app.run(cli.main, flags_parser=common.parse_flags)
