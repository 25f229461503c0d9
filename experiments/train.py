"""The training program of every experiment: `train_and_evaluate(config, workdir)`.

It knows no dataset, backbone or algorithm by name: it builds them from the
registries (`experiments.tasks`, `jaxmeta.models.BACKBONES`,
`jaxmeta.ALGORITHMS`) and owns everything else: the compiled
meta-step (task sampling included), periodic validation, checkpoints (the
latest few and the best on validation, `experiments.checkpoints`), resume,
evaluation of a finished run, the non-finite stop, metrics (JSONL,
TensorBoard, a progress bar) and `results.json`.

Outputs in the workdir (local, or remote through `etils.epath`):
`config.json` (written once the configuration has been checked),
`metrics.jsonl`, `tensorboard/` (scalars, and the flattened config with the
test metrics for the HParams tab), `checkpoints/<step>/`, `results.json` at
the end of a run and `eval.json` for `--mode=eval`; `lock` while a run holds
the workdir (`common.locked_workdir`).

Faults of the surroundings end the run with one line and lose nothing
already saved, and rerunning the same command finishes the run: a second run
on a busy workdir is refused; a full disk stops the run
(`common.DiskFullError`) and the next run resumes from the last checkpoint;
unreadable checkpoints are moved aside (`experiments.checkpoints`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from typing import Any

from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

import jaxmeta
from jaxmeta import sharding
from jaxmeta.data import episodes
from jaxmeta.models import norms
from . import checkpoints as checkpoints_lib
from . import common
from . import configs
from . import tasks

# Fields that may differ when a run is resumed or evaluated: they change how
# long or how it runs, not what is learned (but for `num_iterations` with a
# decaying meta learning rate, whose schedule follows it: see
# `check_schedule_horizon`).
RESUMABLE_FIELDS = (
  'num_iterations',
  'eval_every',
  'num_eval_tasks',
  'task_chunk_size',
  'eval_batch_size',
  'checkpoint_every',
  'keep_checkpoints',
  'log_every',
  'model.conv_impl',
)
# Fields that count things: at least 1, or at least 0.
_POSITIVE_FIELDS = (
  'shots',
  'queries',
  'meta_batch_size',
  'num_val_tasks',
  'num_eval_tasks',
  'eval_batch_size',
  'eval_every',
  'checkpoint_every',
  'keep_checkpoints',
  'log_every',
)
_NON_NEGATIVE_FIELDS = (
  'inner_steps',
  'eval_inner_steps',
  'num_iterations',
  'train_shots',
  'train_queries',
  'train_ways',
  'task_chunk_size',
)
_INNER_OPTIMIZERS = ('sgd', 'adam')
_META_OPTIMIZERS = ('adam', 'sgd')
_SAMPLERS = ('device', 'host')
_META_LR_SCHEDULES = ('linear', 'cosine', 'halving')
# The step counter is an int32 on the device.
_MAX_INT = 2**31 - 1


class ConfigError(ValueError):
  """A configuration or workdir that cannot run, found before any training."""


class RunError(RuntimeError):
  """A run that cannot go on: a non-finite step, nothing to test."""


def flatten(config: Any, prefix: str = '') -> dict[str, Any]:
  """`{'model': {'num_filters': 8}}` -> `{'model.num_filters': 8}`."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  out = {}
  for key, value in config.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = common.to_python(value)
  return out


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks everything that can be checked without data or compilation.

  Raises:
    ConfigError: naming the field, its value and what it must be.
  """
  for name, field, choices in (
    ('algorithm', 'algorithm', jaxmeta.ALGORITHMS),
    ('dataset', 'dataset', tasks.names()),
    ('backbone', 'backbone', jaxmeta.models.BACKBONES),
    ('config.batch_norm', 'batch_norm', norms.MODES),
  ):
    value = config[field]
    if value not in choices:
      raise ConfigError(
        f'Unknown {name} {value!r}{configs.did_you_mean(value, choices)}. '
        f'Fix: --config.{field}=<one of {", ".join(sorted(choices))}>.'
      )
  if not 0 < config.bn_momentum <= 1:
    raise ConfigError(
      f'config.bn_momentum must be in (0, 1], got {config.bn_momentum}.'
    )
  for name, value in flatten(config).items():
    if isinstance(value, int) and not isinstance(value, bool):
      limit = 2**63 - 1 if name in ('seed', 'eval_seed') else _MAX_INT
      if abs(value) > limit:
        raise ConfigError(
          f'config.{name}={value} is too large (at most {limit}).'
        )
  for name in _POSITIVE_FIELDS:
    if config[name] < 1:
      raise ConfigError(f'config.{name} must be >= 1, got {config[name]}.')
  for name in _NON_NEGATIVE_FIELDS:
    if config[name] < 0:
      raise ConfigError(f'config.{name} must be >= 0, got {config[name]}.')
  for name in ('inner_lr', 'meta_lr'):
    if not (math.isfinite(config[name]) and config[name] > 0):
      raise ConfigError(
        f'config.{name} must be a positive finite number, got {config[name]}.'
      )
  if not math.isfinite(config.meta_lr_final):
    raise ConfigError(
      'config.meta_lr_final must be finite (< 0 for a '
      f'constant rate), got {config.meta_lr_final}.'
    )
  for name in ('seed', 'eval_seed'):
    if config[name] < 0:
      raise ConfigError(f'config.{name} must be >= 0, got {config[name]}.')
  chunk = config.task_chunk_size
  if chunk and config.meta_batch_size % chunk:
    raise ConfigError(
      f'config.task_chunk_size={chunk} must divide '
      f'config.meta_batch_size={config.meta_batch_size}.'
    )
  if config.inner_optimizer not in _INNER_OPTIMIZERS:
    raise ConfigError(
      f'config.inner_optimizer must be one of '
      f'{_INNER_OPTIMIZERS}, got {config.inner_optimizer!r}.'
    )
  if config.sampler not in _SAMPLERS:
    raise ConfigError(
      f'config.sampler must be one of {_SAMPLERS}, got {config.sampler!r}.'
    )
  try:
    jaxmeta.data.augment.check_config(
      jaxmeta.data.AugmentConfig(**config.augment)
    )
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.augment: {e}') from e
  if config.meta_optimizer not in _META_OPTIMIZERS:
    raise ConfigError(
      f'config.meta_optimizer must be one of '
      f'{_META_OPTIMIZERS}, got {config.meta_optimizer!r}.'
    )
  if config.meta_lr_schedule not in _META_LR_SCHEDULES:
    raise ConfigError(
      f'config.meta_lr_schedule must be one of '
      f'{_META_LR_SCHEDULES}, got {config.meta_lr_schedule!r}.'
    )
  known = configs.option_defaults(config.algorithm)
  unknown = sorted(set(config.method) - set(known))
  if unknown:
    raise ConfigError(
      f'config.method has {unknown}, which {config.algorithm} does not take. '
      f'Fix: remove it; {config.algorithm} takes '
      f'{", ".join(known) if known else "no option"}.'
    )
  for name, value in config.method.items():
    _check_option(config.algorithm, name, value, known[name])
  if config.meta_lr_halve_every < 1:
    raise ConfigError(
      'config.meta_lr_halve_every must be >= 1, got '
      f'{config.meta_lr_halve_every}.'
    )
  if config.batch_size < 1:
    raise ConfigError(
      f'config.batch_size must be >= 1, got {config.batch_size}.'
    )
  if config.dataset in jaxmeta.data.DATASETS:
    _validate_classification(config)
  elif config.ways != 1 or config.train_ways:
    raise ConfigError(
      f'config.ways={config.ways}, train_ways={config.train_ways}: '
      f'{config.dataset} tasks are not classification and have no classes. '
      'Fix: --config.ways=1 --config.train_ways=0.'
    )


# Method options with a range, whatever the algorithm: name -> (check,
# the range in words).
_OPTION_RANGES = {
  'momentum': (lambda v: 0 <= v < 1, 'in [0, 1)'),
  'msl_iterations': (lambda v: v >= 0, '>= 0'),
  'first_order_iterations': (lambda v: v >= 0, '>= 0'),
}


def _check_option(algorithm: str, name: str, value: Any, default: Any) -> None:
  """An option of `config.method`: of its default's type, in its range."""
  expected = type(default)
  if default is None:  # Set by the harness unless given: any value.
    ok = True
  elif isinstance(default, bool):
    ok = isinstance(value, bool)
  elif isinstance(default, float):  # An int is a float here.
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  else:
    ok = isinstance(value, expected) and not isinstance(value, bool)
  if not ok:
    raise ConfigError(
      f'config.method.{name}={value!r}: {algorithm} takes a '
      f'{expected.__name__} (default {default!r}). Fix: '
      f'--config.method.{name}=<{expected.__name__}>.'
    )
  check, bound = _OPTION_RANGES.get(name, (None, ''))
  if check is not None and value is not None and not check(value):
    raise ConfigError(
      f'config.method.{name}={value!r} must be {bound}. Fix: '
      f'--config.method.{name}={default!r} (its default).'
    )


def _validate_classification(config: ml_collections.ConfigDict) -> None:
  """The checks of the class-image datasets."""
  for name in ('ways', 'train_ways'):
    # One class is a task every model solves: 100% accuracy says nothing.
    if config[name] == 1:
      fix = '0 (as many as ways) or >= 2' if name == 'train_ways' else '>= 2'
      raise ConfigError(
        f'config.{name}=1: a classification task needs at least 2 classes. '
        f'Fix: --config.{name}=<{fix}>.'
      )
  image_size = config.data.get('image_size')
  if image_size:
    try:
      tasks.check_crop_padding(config.augment.crop_padding, image_size)
    except ValueError as e:
      raise ConfigError(str(e)) from e


def build_learner(
  config: ml_collections.ConfigDict,
  family: tasks.TaskFamily,
  input_shape: tuple[int, ...],
  num_train_classes: int | None = None,
) -> jaxmeta.MetaLearner:
  """The backbone and algorithm named by the config.

  `num_train_classes` (the training split's classes) is handed to the
  algorithms that take `num_classes` (Baseline) unless `config.method` sets
  it.
  """
  options = dict(config.method)
  if 'num_classes' in jaxmeta.algorithms.options(config.algorithm):
    if options.get('num_classes') is None:
      options['num_classes'] = num_train_classes
    # Fewer outputs than training classes: labels past the head score
    # nothing.
    if num_train_classes and options['num_classes'] < num_train_classes:
      raise ConfigError(
        f'config.method.num_classes={options["num_classes"]} is fewer than '
        f'the {num_train_classes} classes of the training split. Fix: leave '
        'it out (the training split sets it).'
      )
  model_options = dict(config.model)
  if config.batch_norm != 'transductive':
    model_options['batch_norm'] = config.batch_norm
  try:
    model = jaxmeta.models.BACKBONES[config.backbone](
      family.num_outputs, input_shape, **model_options
    )
  except TypeError as e:
    if 'batch_norm' in model_options and 'batch_norm' in str(e):
      raise ConfigError(
        f'config.batch_norm={config.batch_norm!r}: the backbone '
        f"{config.backbone} has no batch norm; use 'transductive'."
      ) from e
    raise ConfigError(f'{config.backbone}: {e}') from e
  except ValueError as e:
    raise ConfigError(f'{config.backbone}: {e}') from e
  inner_optimizer = None
  if config.inner_optimizer == 'adam':
    inner_optimizer = optax.adam(config.inner_lr, b1=0.0)
  build = lambda m: jaxmeta.make_learner(
    config.algorithm,
    m,
    family.make_loss,
    config.inner_lr,
    config.inner_steps,
    inner_optimizer,
    **options,
  )
  try:
    learner = jaxmeta.algorithms.normalised_learner(
      build, model, config.bn_momentum, config.inner_steps
    )
  except (TypeError, ValueError) as e:
    raise ConfigError(f'{config.backbone} / {config.algorithm}: {e}') from e
  traits = jaxmeta.algorithms.traits(config.algorithm)
  if tasks.train_ways(config) != config.ways and not traits.any_ways:
    raise ConfigError(
      f'config.train_ways={config.train_ways} differs from config.ways='
      f'{config.ways}, but {config.algorithm} has a head of `ways` outputs; '
      'set train_ways = 0, or use an algorithm without one (protonet).'
    )
  if traits.train_batches:
    # Trained on minibatches of `batch_size` images of all classes: the
    # training episode's shape is never used.
    ignored = [
      f'{name}={config[name]}'
      for name in ('train_ways', 'train_shots', 'train_queries')
      if config[name]
    ]
    if ignored:
      raise ConfigError(
        f'config.{", ".join(ignored)}: {config.algorithm} trains on '
        'minibatches of config.batch_size images of all classes, not on '
        f'episodes. Fix: set {", ".join(i.split("=")[0] for i in ignored)} '
        'to 0 (config.batch_size sets its minibatch).'
      )
  if traits.train_batches and (
    family.sample_batch is None or config.sampler != 'device'
  ):
    raise ConfigError(
      f'{config.algorithm} trains on minibatches of all classes: it needs an '
      "image dataset and config.sampler = 'device'."
    )
  return learner


def build_optimizer(
  config: ml_collections.ConfigDict,
) -> optax.GradientTransformation:
  """The outer optimiser. Its rate halves every `meta_lr_halve_every`
  iterations with `meta_lr_schedule='halving'`; else it decays from `meta_lr`
  to `meta_lr_final` over the run (linear, or cosine as in MAML++) if
  `meta_lr_final >= 0`, and is constant otherwise."""
  lr = config.meta_lr
  steps = max(config.num_iterations, 1)
  if config.meta_lr_schedule == 'halving':
    lr = optax.exponential_decay(
      config.meta_lr, config.meta_lr_halve_every, 0.5, staircase=True
    )
  elif config.meta_lr_final >= 0 and config.meta_lr_schedule == 'cosine':
    lr = optax.cosine_decay_schedule(
      config.meta_lr, steps, alpha=config.meta_lr_final / config.meta_lr
    )
  elif config.meta_lr_final >= 0:
    lr = optax.linear_schedule(config.meta_lr, config.meta_lr_final, steps)
  if config.meta_optimizer == 'adam':
    return optax.adam(lr)
  return optax.sgd(lr)


def _all_finite(tree: Any) -> jax.Array:
  leaves = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_mesh() -> jax.sharding.Mesh | None:
  """A mesh over every device of every process, or None on one device."""
  return sharding.make_mesh() if jax.device_count() > 1 else None


def make_train_step(
  learner: jaxmeta.MetaLearner,
  optimizer: optax.GradientTransformation,
  family: tasks.TaskFamily,
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh | None = None,
):
  """The jitted step `(state, batch) -> (state, metrics)`.

  `batch` is the training split, and tasks are drawn inside the step from
  `fold_in(state.key, state.step)`; or, where the family draws its
  meta-batches on the host (`family.sample_host`), the meta-batch itself,
  augmented inside the step. With
  a `mesh`, the meta-batch is split over its devices, each drawing and
  adapting its own tasks, and the meta-gradient is averaged across them in
  the same program (`jaxmeta.sharding`). The model gets a key in training
  (`jaxmeta.model_key`: dropout and DropBlock are active), the same on any
  number of devices. A step whose loss, meta-gradient,
  new parameters or new optimiser state are not all finite is not applied:
  the state stays the last good one (so its `step` names the failing step)
  and `metrics['finite']` is False.
  """
  chunk = config.task_chunk_size or jaxmeta.default_task_chunk_size(
    config.meta_batch_size
  )

  def sample_task(key, data):
    if jaxmeta.algorithms.traits(config.algorithm).train_batches:
      return family.sample_batch(key, data, config.batch_size)
    return family.sample(key, data, True)

  if family.sample_host is not None:
    sharded = (
      None
      if mesh is None
      else sharding.shard_train_step(
        learner, optimizer, mesh, task_chunk_size=chunk, model_keys=True
      )
    )

    def meta_step(state, tasks):
      key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), 1)
      keys = jax.random.split(key, config.meta_batch_size)
      tasks = jax.vmap(family.augment)(keys, tasks)
      if sharded is None:
        return jaxmeta.meta_train_step(
          learner, optimizer, state, tasks, chunk, jaxmeta.model_key(state)
        )
      return sharded(state, tasks)
  elif mesh is None:

    def sample_tasks(key, data):
      keys = jax.random.split(key, config.meta_batch_size)
      return jax.vmap(lambda k: sample_task(k, data))(keys)

    def meta_step(state, data):
      return jaxmeta.make_meta_train_step(
        learner,
        optimizer,
        functools.partial(sample_tasks, data=data),
        task_chunk_size=chunk,
        model_keys=True,
      )(state)
  else:
    try:
      meta_step = sharding.shard_train_step(
        learner,
        optimizer,
        mesh,
        sample_task=sample_task,
        meta_batch_size=config.meta_batch_size,
        task_chunk_size=chunk,
        model_keys=True,
      )
    except ValueError as e:
      raise ConfigError(f'config.meta_batch_size / task_chunk_size: {e}') from e

  def train_step(state, data):
    new_state, metrics = meta_step(state, data)
    finite = (
      jnp.isfinite(metrics['loss'])
      & jnp.isfinite(metrics['meta_grad_norm'])
      & _all_finite((new_state.params, new_state.opt_state))
    )
    new_state = jax.tree.map(
      lambda n, o: jnp.where(finite, n, o), new_state, state
    )
    return new_state, dict(metrics, finite=finite)

  return jax.jit(train_step, donate_argnums=0)


class Evaluator:
  """A metric over a fixed set of tasks, in compiled chunks of tasks.

  With `alone`, also the metric with each query scored on its own
  (`jaxmeta.algorithms.score_alone`), beside all queries scored together.
  """

  def __init__(
    self,
    learner: jaxmeta.MetaLearner,
    family: tasks.TaskFamily,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh | None = None,
    alone: bool = False,
  ):
    metric = family.metric
    self._mesh = mesh
    self._alone = alone
    if alone:
      learner = jaxmeta.algorithms.with_scoring_alone(learner)
    sample_task = lambda key, data: family.sample(key, data, False)
    if mesh is None:
      self._chunk = config.eval_batch_size
      evaluate = jaxmeta.make_evaluate(learner, config.eval_inner_steps)
      evaluate_keys = lambda params, keys, data: evaluate(
        params, jax.vmap(lambda k: sample_task(k, data))(keys)
      )
    else:
      # Every device scores the same number of tasks of each chunk.
      self._chunk = -(-config.eval_batch_size // mesh.size) * mesh.size
      evaluate_keys = sharding.shard_evaluate(
        learner, config.eval_inner_steps, mesh, sample_task=sample_task
      )

    def run_chunk(params, data, keys):
      metrics = evaluate_keys(params, keys, data)
      names = [metric, f'{metric}_by_step'] + [f'{metric}_alone'] * alone
      return tuple(metrics[name] for name in names)

    self._run_chunk = jax.jit(run_chunk)

  def __call__(self, params, data, keys) -> tuple[np.ndarray, ...]:
    """Per-task metric `[n]` and the metric after each step `[n, steps+1]`
    (and, with `alone`, the per-task metric of queries scored alone)."""
    n = keys.shape[0]
    padded = -(-n // self._chunk) * self._chunk
    if padded > n:  # Every call has the same shape: pad with the last key.
      keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], padded - n, 0)])
    outputs = []
    for i in range(0, padded, self._chunk):
      chunk = keys[i : i + self._chunk]
      if self._mesh is not None:  # Each device (of each process) its rows.
        chunk = sharding.shard_tasks(chunk, self._mesh)
      outputs.append(
        [_to_host(v) for v in self._run_chunk(params, data, chunk)]
      )
    return tuple(np.concatenate(column)[:n] for column in zip(*outputs))


def _to_host(x: jax.Array) -> np.ndarray:
  """A (possibly sharded over several processes) array, whole, on the host."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def prepare_workdir(workdir: epath.Path, create: bool = True) -> None:
  """Refuses a workdir that is a file, not writable, or of an older layout."""
  try:
    is_file = workdir.exists() and not workdir.is_dir()
  except ImportError as e:  # A remote scheme without its fsspec package.
    raise ConfigError(
      f'--workdir={workdir}: {common.last_line(e)} Fix: install the package '
      'it names, or give a local directory.'
    ) from e
  if is_file:
    raise ConfigError(
      f'--workdir={workdir} is a file, not a directory. Fix: '
      'give the path of a directory (it is created).'
    )
  if (workdir / 'best').is_dir():
    raise ConfigError(
      f'{workdir} holds a run written by an earlier version of jaxmeta (its '
      'best checkpoint in best/); this version keeps every checkpoint in '
      'checkpoints/ and cannot resume it. Fix: use a new --workdir.'
    )
  if not create:
    return
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ConfigError(
      f'Cannot create --workdir={workdir}: {e.strerror or e}. Fix: give a '
      'directory you can create (its parents must be directories).'
    ) from e
  if common.is_local(workdir) and not os.access(workdir, os.W_OK | os.X_OK):
    raise ConfigError(
      f'--workdir={workdir} is not writable. Fix: choose a '
      'directory you can write to.'
    )


def _read_saved_config(
  workdir: epath.Path, checkpoints: checkpoints_lib.Checkpoints
) -> tuple[dict[str, Any] | None, str]:
  """The config of the run in `workdir`: the latest checkpoint's, else
  `config.json`'s; `(None, '')` for an empty workdir."""
  for step in sorted(checkpoints.manager.all_steps(), reverse=True):
    try:
      return checkpoints.read_meta(step)['config'], f'checkpoint step {step}'
    except Exception as e:  # pylint: disable=broad-except
      checkpoints.move_aside(step, e)
  path = workdir / 'config.json'
  if not path.exists():
    return None, ''
  try:
    saved = json.loads(path.read_text())
    if not isinstance(saved, dict):
      raise ValueError('not a JSON object')
  except (OSError, ValueError) as e:
    raise ConfigError(
      f'{path} is unreadable or corrupted ({e}). Fix: delete it (the '
      'workdir holds no checkpoint, so nothing else is lost) or use a new '
      '--workdir.'
    ) from e
  return saved, 'config.json'


def check_same_run(
  saved: dict[str, Any] | None,
  source: str,
  config: ml_collections.ConfigDict,
  workdir: str,
) -> None:
  """Refuses a config that differs from the workdir's run (but in
  `RESUMABLE_FIELDS`)."""
  if saved is None:
    return
  before, now = flatten(saved), flatten(config)
  diffs = {
    k: (before.get(k), now.get(k))
    for k in sorted(set(before) | set(now))
    if k not in RESUMABLE_FIELDS and before.get(k) != now.get(k)
  }
  if diffs:
    listed = ', '.join(
      f'{k}: saved {a!r} vs now {b!r}' for k, (a, b) in diffs.items()
    )
    raise ConfigError(
      f'{workdir} holds a run of a different configuration ({listed}; from '
      f'its {source}). Fix: use a new --workdir, or the same config to '
      'resume or evaluate that run.'
    )


class _Run:
  """What train and eval mode both build from a config."""

  def __init__(
    self, config, workdir, data_dir, source_dir, first_split, read_only=False
  ):
    self.config = config
    self.workdir = workdir
    try:
      jax.random.PRNGKey(config.seed)
      jax.random.PRNGKey(config.eval_seed)
    except (OverflowError, ValueError, TypeError) as e:
      raise ConfigError(f'config.seed / config.eval_seed: {e}') from e
    self.mesh = make_mesh()
    if self.mesh is not None:
      try:
        sharding.check_divisible(config.meta_batch_size, self.mesh)
      except ValueError as e:
        raise ConfigError(f'config.meta_batch_size: {e}') from e
    try:
      self.family = tasks.build(config, data_dir, source_dir)
    except tasks.TaskFamilyError as e:
      raise ConfigError(str(e)) from e
    self.data = {}
    self.load(first_split)
    num_train_classes = None
    if 'num_classes' in jaxmeta.algorithms.options(config.algorithm):
      num_train_classes = int(self.load('train').shape[0])
    self.learner = build_learner(
      config,
      self.family,
      self.family.input_shape(self.data[first_split]),
      num_train_classes,
    )
    self.optimizer = build_optimizer(config)
    self.metric = self.family.metric
    self.checkpoints = checkpoints_lib.Checkpoints(
      workdir,
      config.keep_checkpoints,
      f'val_{self.metric}',
      self.family.higher_is_better,
      read_only=read_only,
    )

  def load(self, split):
    """The data of `split`, on every device of the mesh if there is one."""
    if split not in self.data:
      try:
        data = self.family.load(split)
      except tasks.TaskFamilyError as e:
        raise ConfigError(str(e)) from e
      if self.mesh is not None and data is not None:
        data = sharding.replicate(data, self.mesh)
      self.data[split] = data
    return self.data[split]

  def init_state(self) -> jaxmeta.MetaTrainState:
    """The initial state (replicated over the mesh if there is one)."""
    state = jaxmeta.init_train_state(
      self.learner, self.optimizer, jax.random.PRNGKey(self.config.seed)
    )
    return state if self.mesh is None else sharding.replicate(state, self.mesh)

  def meta(self) -> dict[str, Any]:
    return {
      'config': self.config.to_dict(),
      'jaxmeta_version': jaxmeta.__version__,
    }

  def test(
    self, evaluator: 'Evaluator | None' = None, none_left_ok: bool = False
  ) -> dict[str, Any] | None:
    """Tests the best-validation checkpoint on the fixed test tasks (with
    `evaluator`, an `Evaluator(..., alone=True)` of this run, if given).

    An unreadable best step is moved aside and the next best tested
    (`Checkpoints.restore_best_readable`); with `none_left_ok`, None when
    no validated step reads back, else a `RunError`.
    """
    config, checkpoints = self.config, self.checkpoints
    found = checkpoints.restore_best_readable(self.init_state())
    if found is None:
      if none_left_ok:
        return None
      raise RunError(
        f'No readable validated checkpoint in {self.workdir}/checkpoints '
        'to test. Fix: train first (--mode=train; it validates the final '
        'state again if every validated step was unreadable).'
      )
    step, state, _ = found
    if not bool(_all_finite(state.params)):
      raise RunError(
        f'Checkpoint step {step} in {self.workdir}/checkpoints '
        'holds non-finite parameters; it cannot be evaluated.'
      )
    keys = episodes.eval_task_keys(config.eval_seed, config.num_eval_tasks)
    if evaluator is None:
      evaluator = Evaluator(
        self.learner, self.family, config, self.mesh, alone=True
      )
    values, by_step, alone = evaluator(state.params, self.load('test'), keys)
    mean, ci95 = jaxmeta.mean_and_ci95(values)
    mean_alone, ci95_alone = jaxmeta.mean_and_ci95(alone)
    m = self.metric
    return {
      'algorithm': config.algorithm,
      'batch_norm': config.batch_norm,
      'preset': config.preset or None,
      'dataset': config.dataset,
      'backbone': config.backbone,
      'ways': config.ways,
      'shots': config.shots,
      'queries': config.queries,
      'split': config.data.get('scheme'),
      'eval_inner_steps': config.eval_inner_steps,
      f'test_{m}': mean,
      'test_ci95': ci95,
      # Each query scored on its own (a batch of one): equal to the above
      # in the non-transductive batch-norm modes.
      f'test_{m}_alone': mean_alone,
      'test_ci95_alone': ci95_alone,
      'num_test_tasks': config.num_eval_tasks,
      f'test_{m}_by_step': by_step.mean(axis=0).tolist(),
      'best_step': step,
      f'best_val_{m}': checkpoints.best_metric(),
      'config': config.to_dict(),
    }


def summary(results: dict[str, Any], path: str) -> str:
  """One line: the test metric with its 95% CI, and where the results are."""
  metric = 'accuracy' if 'test_accuracy' in results else 'mse'
  value, ci = results[f'test_{metric}'], results['test_ci95']
  alone = results.get(f'test_{metric}_alone')
  if metric == 'accuracy':
    figure = f'test accuracy {100 * value:.2f}% +- {100 * ci:.2f}%'
    if alone is not None:
      figure += f' ({100 * alone:.2f}% with each query scored alone)'
  else:
    figure = f'test MSE {value:.4f} +- {ci:.4f}'
  shape = (
    f'{results["ways"]}-way {results["shots"]}-shot '
    if metric == 'accuracy'
    else f'{results["shots"]}-shot '
  )
  split = f' ({results["split"]} split)' if results.get('split') else ''
  return (
    f'{results["algorithm"]} {shape}{results["dataset"]}{split}: '
    f'{figure} (95% CI, {results["num_test_tasks"]} tasks, '
    f'{results["eval_inner_steps"]} inner steps; best validation step '
    f'{results["best_step"]}). Results: {path}'
  )


class _NoWriter:
  """The metric writer of the processes other than the main one."""

  def write(self, *args, **kwargs):
    del args, kwargs

  def write_hparams(self, *args, **kwargs):
    del args, kwargs

  def close(self):
    pass


def _say(line: str) -> None:
  """Prints a line on the main process (above a progress bar, if any)."""
  if sharding.is_main_process():
    tqdm.tqdm.write(line)


def _keep_records_up_to(path: epath.Path, step: int) -> None:
  """Drops metrics.jsonl records past `step` (written before a kill)."""
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue  # A line cut short by a kill or a full disk.
    if record.get('step', 0) <= step:
      kept.append(json.dumps(record) + '\n')
  text = ''.join(kept)
  if not common.is_local(path):
    path.write_text(text)
    return
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(text)
  tmp.replace(path)


def check_schedule_horizon(
  saved: dict[str, Any] | None,
  config: ml_collections.ConfigDict,
  step: int,
  workdir: epath.Path,
) -> None:
  """Refuses to resume, with another `num_iterations`, a run whose meta
  learning rate decays over `num_iterations` (linear or cosine).

  Its schedule's horizon would move under the steps already taken, and the
  run would equal a straight run of neither length. It is refused rather
  than continued on the old horizon, because past that horizon the rate is
  `meta_lr_final` (0 by default) and the extra steps would learn nothing.
  A finished run may still be tested with a smaller `num_iterations`
  (nothing is trained).
  """
  if saved is None or step == 0 or step >= config.num_iterations:
    return
  if config.meta_lr_final < 0 or config.meta_lr_schedule == 'halving':
    return
  before = saved.get('num_iterations', config.num_iterations)
  if before == config.num_iterations:
    return
  raise ConfigError(
    f'{workdir} holds a run whose meta learning rate decays '
    f'({config.meta_lr_schedule}) over num_iterations={before}; going on '
    f'from its step {step} with num_iterations={config.num_iterations} '
    'would change the schedule of the steps already taken. Fix: rerun with '
    f'--config.num_iterations={before}, or train '
    f'{config.num_iterations} iterations in a new --workdir.'
  )


def _saved_steps(workdir: epath.Path) -> list[int]:
  """The finished checkpoint steps on disk (without asking orbax)."""
  try:
    return sorted(
      int(p.name)
      for p in (workdir / 'checkpoints').iterdir()
      if p.name.isdigit()
    )
  except OSError:
    return []


def _blocked_path(
  workdir: epath.Path, error: BaseException
) -> common.OneLineError | None:
  """An `OSError` on a path inside the workdir (a folder where the run
  writes a file, a file where it makes a folder, no permission) as one line;
  None for other errors."""
  root = os.path.abspath(os.fspath(workdir)) if common.is_local(workdir) else ''
  while error is not None:
    if isinstance(error, OSError):
      path = error.filename and os.path.abspath(os.fspath(error.filename))
      if root and path and (path + os.sep).startswith(root + os.sep):
        return common.OneLineError(
          f'Cannot use {path} ({error.strerror or error}): the run writes '
          'its own file or folder there. Fix: move it out of the way, or use '
          'a new --workdir; then the same command goes on from the last '
          'checkpoint.'
        )
      if root and not path and root in str(error):
        return common.OneLineError(
          f'{error}. Fix: move it out of the way, or use a new --workdir; '
          'then the same command goes on from the last checkpoint.'
        )
    error = error.__cause__ or error.__context__
  return None


def _disk_full(
  workdir: epath.Path, error: BaseException
) -> common.DiskFullError:
  cause = error
  while cause is not None and not getattr(cause, 'filename', None):
    cause = cause.__cause__ or cause.__context__
  filename = os.fspath(cause.filename) if cause is not None else None
  where = f'--workdir={workdir}'
  if filename:
    inside = os.path.abspath(filename).startswith(
      os.path.abspath(os.fspath(workdir))
    )
    where = f'{where} ({filename})' if inside else filename
  steps = _saved_steps(workdir)
  kept = (
    f'the latest checkpoint, step {steps[-1]}, is intact and the rerun '
    f'resumes from it'
    if steps
    else 'no checkpoint had been saved yet, the rerun starts afresh'
  )
  return common.DiskFullError(
    f'The disk of {where} is full (or over quota): the run stopped, and '
    f'{kept}. Fix: free space there and rerun the same command.'
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: 'str | os.PathLike',
  *,
  data_dir: str | None = None,
  source_dir: str | None = None,
  progress: bool = True,
) -> dict[str, Any]:
  """Meta-trains (resuming if the workdir has a run), then tests the best
  checkpoint on validation; writes and returns the results.

  Args:
    config: the experiment's configuration (see `experiments/configs`).
    workdir: the run's directory (local, `file://` or remote, e.g. `gs://`).
    data_dir: TFDS data dir of the prepared datasets (default: the loader's).
    source_dir: where a dataset's source files are (default: the loader's).
    progress: show a progress bar.

  Returns:
    The results, as written to `workdir/results.json`.

  Raises:
    ConfigError: a configuration, workdir or data that cannot run.
    RunError: a non-finite step (nothing of it is applied or saved).
    common.OneLineError: the workdir is in use by another run, or its disk
      is full (`common.DiskFullError`; what was saved before stays).
  """
  validate(config)
  workdir = common.workdir_path(workdir)
  prepare_workdir(workdir)
  lock = (
    common.locked_workdir(workdir)
    if sharding.is_main_process()
    else contextlib.nullcontext()
  )
  try:
    with lock:
      return _train_and_evaluate(
        config, workdir, data_dir, source_dir, progress
      )
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, common.OneLineError):
      raise
    if common.is_disk_full(e):
      raise _disk_full(workdir, e) from e
    blocked = _blocked_path(workdir, e)
    if blocked is not None:
      raise blocked from e
    raise


def _close_quietly(*closers) -> None:
  """Closes what a failing run opened; the failure itself is what to report."""
  for close in closers:
    try:
      close()
    except Exception:  # pylint: disable=broad-except
      pass


def _train_and_evaluate(config, workdir, data_dir, source_dir, progress):
  """`train_and_evaluate` in a checked, locked workdir."""
  run = _Run(config, workdir, data_dir, source_dir, 'train')
  checkpoints = run.checkpoints
  writer, bar = _NoWriter(), None
  try:
    saved, source = _read_saved_config(workdir, checkpoints)
    check_same_run(saved, source, config, workdir)
    train_data, val_data = run.load('train'), run.load('val')
    state = run.init_state()
    restored = checkpoints.restore_latest_readable(state)
    if restored is not None:
      state = restored[0]
      check_schedule_horizon(saved, config, int(state.step), workdir)
      _say(f'Resuming from step {int(state.step)} of {workdir}.')
    main_process = sharding.is_main_process()  # Only it writes files.
    if main_process:
      common.write_json(workdir / 'config.json', config.to_dict())

    train_step = make_train_step(
      run.learner, run.optimizer, run.family, config, run.mesh
    )
    # Validation compiles the test's program: it also scores each query
    # alone, which it does not report.
    evaluator = Evaluator(run.learner, run.family, config, run.mesh, alone=True)
    val_keys = episodes.eval_task_keys(
      config.eval_seed + 1, config.num_val_tasks
    )
    start_step = int(state.step)
    if main_process:
      _keep_records_up_to(workdir / 'metrics.jsonl', start_step)
      writer = common.MetricWriter(workdir)
    metric = run.metric

    def validate_now(state):
      values = evaluator(state.params, val_data, val_keys)[0]
      value, ci95 = jaxmeta.mean_and_ci95(values)
      writer.write(
        int(state.step), {metric: value, 'ci95': ci95}, prefix='val/'
      )
      return value

    start = time.time()
    bar = tqdm.tqdm(
      total=config.num_iterations,
      initial=start_step,
      disable=not (progress and main_process),
      desc=f'{config.dataset} {config.algorithm}',
    )
    step = start_step
    compile_seconds, first_timed_step = None, step
    while step < config.num_iterations:
      batch = train_data
      if run.family.sample_host is not None:
        batch = run.family.sample_host(
          jax.random.fold_in(state.key, state.step),
          train_data,
          config.meta_batch_size,
        )
        if run.mesh is not None:  # Every process drew the same meta-batch.
          batch = sharding.shard_tasks(batch, run.mesh)
      state, metrics = train_step(state, batch)
      step += 1
      if compile_seconds is None:
        jax.block_until_ready(state)
        compile_seconds = time.time() - start
        start, first_timed_step = time.time(), step
      last = step == config.num_iterations
      log = step % config.log_every == 0 or last
      evaluate = step % config.eval_every == 0 or last
      save = step % config.checkpoint_every == 0 or last or evaluate
      if log or evaluate or save:
        metrics = jax.device_get(metrics)
        if not metrics.pop('finite'):
          raise _diverged(
            config,
            workdir,
            metrics,
            int(state.step) + 1,
            checkpoints.latest_step(),
          )
      if log:
        writer.write(step, metrics, prefix='train/')
        bar.set_postfix(
          loss=f'{metrics["loss"]:.3f}', **{metric: f'{metrics[metric]:.3f}'}
        )
      bar.update(1)
      value = None
      if evaluate:
        value = validate_now(state)
        best = checkpoints.best_metric()
        _say(
          f'step {step}: val {metric} {value:.4f} (best before '
          f'{"none" if best is None else f"{best:.4f}"})'
        )
      if save:
        checkpoints.save(step, state, run.meta(), value)
    bar.close()
    jax.block_until_ready(state)
    train_seconds = time.time() - start
    timed_steps = step - first_timed_step

    def validate_final_state():
      """Validates and saves the final state where no validated step is
      left: none was trained, or every validated one was unreadable."""
      if checkpoints.best_step() is None:
        if step in checkpoints.manager.all_steps():
          checkpoints.manager.delete(step)
        checkpoints.save(step, state, run.meta(), validate_now(state))

    validate_final_state()
    results = run.test(evaluator, none_left_ok=True)
    if results is None:
      validate_final_state()
      results = run.test(evaluator)
    results_path = workdir / 'results.json'
    timing = dict(
      iterations=step,
      resumed_from_step=start_step,
      compile_seconds=compile_seconds,
      train_seconds=train_seconds,
      steps_per_second=timed_steps / train_seconds if timed_steps else None,
    )
    if step == start_step and results_path.exists():
      # Nothing trained in this call: keep the figures of the call that did.
      try:
        earlier = json.loads(results_path.read_text())
        for key in (
          'compile_seconds',
          'train_seconds',
          'steps_per_second',
          'resumed_from_step',
        ):
          timing[key] = earlier.get(key, timing[key])
      except (OSError, ValueError, AttributeError):
        pass
    results.update(timing)
    test_metrics = {
      metric: results[f'test_{metric}'],
      'ci95': results['test_ci95'],
      f'{metric}_alone': results[f'test_{metric}_alone'],
    }
    writer.write(step, test_metrics, prefix='test/')
    writer.write_hparams(
      step,
      flatten(config),
      {f'test/{name}': value for name, value in test_metrics.items()},
    )
    writer.close()
    checkpoints.close()
  except BaseException:
    if bar is not None:
      _close_quietly(bar.close)
    _close_quietly(writer.close, checkpoints.close)
    raise
  _say(summary(results, results_path))
  if main_process:
    common.write_json(results_path, results)
  return results


def _diverged(config, workdir, metrics, step, last_saved) -> RunError:
  kept = (
    f'The last checkpoint, step {last_saved} in {workdir}/checkpoints, '
    'holds finite parameters.'
    if last_saved is not None
    else 'No checkpoint had been written yet.'
  )
  return RunError(
    f'Meta-step {step} produced non-finite values (loss {metrics["loss"]}, '
    f'meta-gradient norm {metrics["meta_grad_norm"]}, or the updated '
    'parameters); it was not applied and the run stopped. Likely cause: '
    f'config.inner_lr ({config.inner_lr}) or config.meta_lr '
    f'({config.meta_lr}) too large. {kept}'
  )


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: 'str | os.PathLike',
  *,
  data_dir: str | None = None,
  source_dir: str | None = None,
) -> dict[str, Any]:
  """`--mode=eval`: tests the best checkpoint of the run in `workdir`.

  The config must be the run's (but for `RESUMABLE_FIELDS`, e.g. a different
  `num_eval_tasks`); the results go to `workdir/eval.json`, and are printed
  first, so that a read-only workdir still shows them. It holds the
  workdir's lock shared: refused while a run trains there (and a run is
  refused while it evaluates), alongside other evaluations. Nothing in the
  workdir is changed but `eval.json`: an unreadable best checkpoint is a
  `checkpoints.CheckpointError` that says how to recover.
  """
  validate(config)
  workdir = common.workdir_path(workdir)
  prepare_workdir(workdir, create=False)
  if not (workdir / 'checkpoints').is_dir():
    raise ConfigError(
      f'{workdir} holds no run (no checkpoints/). Fix: train '
      'first (--mode=train), or give the workdir of a run.'
    )
  lock = (
    common.locked_workdir(workdir, exclusive=False)
    if sharding.is_main_process()
    else contextlib.nullcontext()
  )
  with lock:
    run = _Run(config, workdir, data_dir, source_dir, 'test', read_only=True)
    try:
      saved, source = _read_saved_config(workdir, run.checkpoints)
      if saved is None:
        raise ConfigError(f'{workdir} holds no checkpoint. Fix: train first.')
      check_same_run(saved, source, config, workdir)
      results = run.test()
    finally:
      _close_quietly(run.checkpoints.close)
  path = workdir / 'eval.json'
  _say(summary(results, path))
  if not sharding.is_main_process():
    return results
  try:
    common.write_json(path, results)
  except OSError as e:
    raise RunError(
      f'Could not write {path}: {e.strerror} (the results are printed above).'
    ) from e
  return results
