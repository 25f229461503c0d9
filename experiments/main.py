r"""Runs one experiment: a config file, a workdir, train or evaluate.

  python -m experiments.main --config=experiments/configs/maml_omniglot.py:5w1s \
      --workdir=runs/maml_5w1s
  python -m experiments.main --config=experiments/configs/default.py \
      --workdir=/tmp/run --config.num_iterations=1000 --config.model.num_filters=64
  python -m experiments.main --config=experiments/configs/maml_omniglot.py:5w1s \
      --workdir=runs/maml_5w1s --mode=eval --config.num_eval_tasks=1000

Every field of the config can be overridden with `--config.<field>=<value>`
(`--helpfull` lists them with their defaults). Restarting with the same
workdir and config resumes from the latest checkpoint; `--mode=eval` tests the
best checkpoint of the run again. See `experiments.train` for the outputs.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import checkpoints
from experiments import common
from experiments import tasks
from experiments import train
from jaxmeta import sharding
import jaxmeta.data

FLAGS = flags.FLAGS
# Errors that already name the problem and the fix: printed as one line.
_USER_ERRORS = (
  train.ConfigError,
  train.RunError,
  checkpoints.CheckpointError,
  common.OneLineError,
  tasks.TaskFamilyError,
  jaxmeta.data.EpisodeConfigError,
  jaxmeta.data.DataError,
)


def define_flags(default_config: str | None = None) -> None:
  """Defines the flags; only when run as a program, so that the experiment
  modules can be imported together (absl flags are global)."""
  config_flags.DEFINE_config_file(
    'config',
    default_config,
    'Config file, `path/to/file.py[:preset]`; override any field with '
    '--config.<field>=<value>.',
    lock_config=True,
  )
  flags.DEFINE_string('workdir', None, 'Directory of the run (required).')
  flags.DEFINE_enum(
    'mode',
    'train',
    ['train', 'eval'],
    'train: meta-train (resuming if the workdir has a run), '
    'then test; eval: test the best checkpoint of the workdir.',
  )
  flags.DEFINE_string(
    'data_dir',
    None,
    'TFDS data dir of the prepared datasets (default '
    "$JAXMETA_DATA_DIR, else TFDS's default).",
  )
  flags.DEFINE_string(
    'source_dir',
    None,
    "Folder with the dataset's source files (for Omniglot "
    'the zips; default: the copy shipped in data/omniglot).',
  )
  flags.DEFINE_bool('progress', True, 'Show a progress bar.')


def main(argv) -> None:
  common.check_command_line(argv, 'workdir')
  # Joins a multi-process run when a launcher (SLURM, Open MPI, a TPU pod)
  # started one; before anything touches a device.
  sharding.initialize_distributed()
  if FLAGS.config is None:
    common.exit_with_one_line(
      '--config is required, e.g. --config=experiments/configs/default.py.'
    )
  config = FLAGS.config
  try:
    config.to_dict()  # config_flags defers the error of an unreadable file.
  except OSError as e:
    common.exit_with_one_line(f'--config: {common.last_line(e)}')
  kwargs = dict(data_dir=FLAGS.data_dir, source_dir=FLAGS.source_dir)
  try:
    if FLAGS.mode == 'eval':
      train.evaluate(config, FLAGS.workdir, **kwargs)
    else:
      train.train_and_evaluate(
        config, FLAGS.workdir, progress=FLAGS.progress, **kwargs
      )
  except _USER_ERRORS as e:
    common.exit_with_one_line(e)


def run(default_config: str | None = None) -> None:
  """The program: flags (with `default_config` as `--config`'s default)."""
  common.reexec_with_huge_pages()
  define_flags(default_config)
  app.run(main, flags_parser=common.parse_flags)


if __name__ == '__main__':
  run()
