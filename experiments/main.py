r"""Runs one experiment: a config, a workdir, train or evaluate.

  python -m experiments.main --config=maml_omniglot:5w1s --workdir=runs/maml_5w1s
  python -m experiments.main --config=default --workdir=/tmp/run \
      --config.num_iterations=1000 --config.model.num_filters=64
  python -m experiments.main --config=maml_omniglot:5w1s --workdir=runs/maml_5w1s \
      --mode=eval --config.num_eval_tasks=1000
  python -m experiments.main --list_configs
  python -m experiments.main --config=maml_omniglot:5w1s \
      --config.method.first_order=true --print_config

(installed: `jaxmeta-train`). Every field of the config, the algorithm's
options in `config.method` included, can be overridden with
`--config.<field>=<value>`. Restarting with the same workdir and config
resumes from the latest checkpoint. See `experiments.train` for the outputs.
"""

import os
import sys

from absl import app
from absl import flags

from . import checkpoints
from . import cli
from . import common
from . import config_checks
from . import configs
from . import tasks
from . import train
from jaxmeta import distributed
import jaxmeta.data

FLAGS = flags.FLAGS
# Errors that already name the problem and the fix: printed as one line.
USER_ERRORS = (
  config_checks.ConfigError,
  common.RunError,
  checkpoints.CheckpointError,
  common.OneLineError,
  tasks.TaskFamilyError,
  jaxmeta.data.EpisodeConfigError,
  jaxmeta.data.DataError,
)


def define_data_flags(when: str = '') -> None:
  """`--data_dir` and `--source_dir`, with `when` they are read in the help."""
  flags.DEFINE_string(
    'data_dir',
    None,
    f'TFDS data dir of the prepared datasets{when and ", " + when} (default '
    "$JAXMETA_DATA_DIR, else TFDS's default).",
  )
  flags.DEFINE_string(
    'source_dir',
    None,
    "Folder with the dataset's source files (for Omniglot "
    'the zips; default: the copy shipped in data/omniglot).',
  )


def define_flags(default_config: str | None = None) -> None:
  """Defines the flags; only when run as a program (absl flags are global).

  The `--config.<field>` overrides are no absl flags: `parse_flags` takes
  them out of the command line and `main` applies them (`experiments.cli`).
  """
  flags.DEFINE_string(
    'config',
    default_config,
    'A config of --list_configs by name, or a config file by path, with an '
    'optional preset: NAME[:preset] or path/to/file.py[:preset]. Override '
    'any field with --config.<field>=<value>.',
  )
  flags.DEFINE_string('workdir', None, 'Directory of the run (required).')
  flags.DEFINE_enum(
    'mode',
    'train',
    ['train', 'eval'],
    'train: meta-train (resuming if the workdir has a run), '
    'then test; eval: test the best checkpoint of the workdir.',
  )
  define_data_flags()
  flags.DEFINE_bool('progress', True, 'Show a progress bar.')
  flags.DEFINE_bool(
    'list_configs', False, 'List the configs and their presets, and exit.'
  )
  flags.DEFINE_bool(
    'print_config',
    False,
    'Print every field of the config with its value (after the overrides), '
    'and exit.',
  )


def parse_flags(argv: list[str]) -> list[str]:
  """`common.parse_flags` of all but the `--config.<field>` overrides, which
  are returned after the positional arguments, for `main`."""
  try:  # --flagfile first: the overrides in a flag file are split out too.
    argv = flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)
  except flags.Error as e:
    common.exit_with_one_line(common.last_line(e))
  rest, overrides = cli.split_overrides(argv)
  return common.parse_flags(rest) + [o.text for o in overrides]


def _print(text: str) -> None:
  """Prints `text`; a reader that stops early (`| head`) is no error."""
  try:
    print(text, flush=True)
  except BrokenPipeError:
    # Python would report the pipe again when it flushes stdout at exit.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv) -> None:
  argv, overrides = cli.split_overrides(argv)
  if FLAGS.list_configs:
    _print(cli.list_configs())
    return
  if not FLAGS.config:
    common.exit_with_one_line(
      '--config is required. Fix: --config=NAME[:preset] (--list_configs '
      'lists them), e.g. --config=maml_omniglot:5w1s.'
    )
  try:
    config = cli.load(FLAGS.config, overrides)
  except (configs.ConfigFileError, cli.OverrideError) as e:
    common.exit_with_one_line(f'--config: {e}')
  if FLAGS.print_config:
    _print(cli.describe(config))
    return
  common.check_command_line(argv, 'workdir')
  # Joins a multi-process run when a launcher (SLURM, Open MPI, a TPU pod)
  # started one; before anything touches a device.
  distributed.initialize_distributed()
  kwargs = dict(data_dir=FLAGS.data_dir, source_dir=FLAGS.source_dir)
  try:
    if FLAGS.mode == 'eval':
      train.evaluate(config, FLAGS.workdir, **kwargs)
    else:
      train.train_and_evaluate(
        config, FLAGS.workdir, progress=FLAGS.progress, **kwargs
      )
  except USER_ERRORS as e:
    common.exit_with_one_line(e)


def run(default_config: str | None = None) -> None:
  """The program (with `default_config`, a name or path, as `--config`'s
  default)."""
  common.reexec_with_huge_pages()
  define_flags(default_config)
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
