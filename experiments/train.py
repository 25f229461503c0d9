"""The training program of every experiment: `train_and_evaluate(config, workdir)`.

It knows no dataset, backbone or algorithm by name: it builds them from the
registries (`experiments.tasks`, `jaxmeta.models.BACKBONES`,
`jaxmeta.algorithms.REGISTRY`) and owns everything else: the compiled
meta-step (task sampling included), periodic validation, checkpoints (the
latest few and the best on validation, `experiments.checkpoints`), resume,
evaluation of a finished run, the non-finite stop, metrics (JSONL,
TensorBoard, a progress bar) and `results.json`.

Outputs in the workdir: `config.json` (written once the configuration has
been checked), `metrics.jsonl`, `tensorboard/`, `checkpoints/<step>/`,
`results.json` at the end of a run and `eval.json` for `--mode=eval`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

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
from experiments import checkpoints as checkpoints_lib
from experiments import common
from experiments import tasks

# Fields that may differ when a run is resumed or evaluated: they change how
# long or how it runs, not what is learned (but for `num_iterations` with a
# decaying meta learning rate, whose schedule follows it: a warning says so).
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
  if config.algorithm not in jaxmeta.algorithms.REGISTRY:
    raise ConfigError(
      f'Unknown algorithm {config.algorithm!r}; choose one '
      f'of {sorted(jaxmeta.algorithms.REGISTRY)}.'
    )
  if config.dataset not in tasks.names():
    raise ConfigError(
      f'Unknown dataset {config.dataset!r}; choose one of {tasks.names()}.'
    )
  if config.backbone not in jaxmeta.models.BACKBONES:
    raise ConfigError(
      f'Unknown backbone {config.backbone!r}; choose one of '
      f'{sorted(jaxmeta.models.BACKBONES)}.'
    )
  if config.batch_norm not in norms.MODES:
    raise ConfigError(
      f'Unknown config.batch_norm {config.batch_norm!r}; choose one of '
      f'{norms.MODES}.'
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
  known = jaxmeta.algorithms.options(config.algorithm)
  unknown = sorted(set(config.method) - set(known))
  if unknown:
    raise ConfigError(
      f'config.method has {unknown}, which {config.algorithm} does not take; '
      f'its options are {list(known)}.'
    )
  if config.meta_lr_halve_every < 1:
    raise ConfigError(
      'config.meta_lr_halve_every must be >= 1, got '
      f'{config.meta_lr_halve_every}.'
    )
  if config.batch_size < 1:
    raise ConfigError(
      f'config.batch_size must be >= 1, got {config.batch_size}.'
    )


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
    options.setdefault('num_classes', num_train_classes)
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
  remat = config.get('remat', '')
  if remat:
    if remat not in jaxmeta.models.REMAT_POLICIES:
      raise ConfigError(
        "config.remat must be '' (off) or one of "
        f'{tuple(jaxmeta.models.REMAT_POLICIES)}, got {remat!r}.'
      )
    if config.batch_norm != 'transductive':
      raise ConfigError(
        f'config.remat={remat!r} recomputes the transductive forward pass '
        f"only, not batch_norm={config.batch_norm!r}; set remat to ''."
      )
    model = jaxmeta.models.rematerialised(model, remat)
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
  if tasks.train_ways(config) != config.ways and not learner.any_ways:
    raise ConfigError(
      f'config.train_ways={config.train_ways} differs from config.ways='
      f'{config.ways}, but {config.algorithm} has a head of `ways` outputs; '
      'set train_ways = 0, or use an algorithm without one (protonet).'
    )
  if learner.train_batches and (
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
    if learner.train_batches:
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


def prepare_workdir(workdir: str, create: bool = True) -> None:
  """Refuses a workdir that is a file, not writable, or of an older layout."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(
      f'--workdir={workdir} is a file, not a directory. Fix: '
      'give the path of a directory (it is created).'
    )
  if os.path.isdir(os.path.join(workdir, 'best')):
    raise ConfigError(
      f'{workdir} holds a run written by an earlier version of jaxmeta (its '
      'best checkpoint in best/); this version keeps every checkpoint in '
      'checkpoints/ and cannot resume it. Fix: use a new --workdir.'
    )
  if not create:
    return
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(
      f'Cannot create --workdir={workdir}: {e.strerror}.'
    ) from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ConfigError(
      f'--workdir={workdir} is not writable. Fix: choose a '
      'directory you can write to.'
    )


def _read_saved_config(
  workdir: str, checkpoints: checkpoints_lib.Checkpoints
) -> tuple[dict[str, Any] | None, str]:
  """The config of the run in `workdir`: the latest checkpoint's, else
  `config.json`'s; `(None, '')` for an empty workdir."""
  for step in sorted(checkpoints.manager.all_steps(), reverse=True):
    try:
      return checkpoints.read_meta(step)['config'], f'checkpoint step {step}'
    except Exception as e:  # pylint: disable=broad-except
      checkpoints.move_aside(step, e)
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None, ''
  try:
    with open(path) as f:
      saved = json.load(f)
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

  def test(self, evaluator: 'Evaluator | None' = None) -> dict[str, Any]:
    """Tests the best-validation checkpoint on the fixed test tasks (with
    `evaluator`, an `Evaluator(..., alone=True)` of this run, if given)."""
    config, checkpoints = self.config, self.checkpoints
    step = checkpoints.best_step()
    if step is None:
      raise RunError(
        f'No validated checkpoint in {self.workdir}/checkpoints '
        'to test. Fix: train first (--mode=train).'
      )
    state, _ = checkpoints.restore(self.init_state(), step)
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

  def close(self):
    pass


def _say(line: str) -> None:
  """Prints a line on the main process (above a progress bar, if any)."""
  if sharding.is_main_process():
    tqdm.tqdm.write(line)


def _keep_records_up_to(path: str, step: int) -> None:
  """Drops metrics.jsonl records past `step` (written before a kill)."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue  # A line cut short by a kill.
      if record.get('step', 0) <= step:
        kept.append(json.dumps(record) + '\n')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(kept)
  os.replace(tmp, path)


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  data_dir: str | None = None,
  source_dir: str | None = None,
  progress: bool = True,
) -> dict[str, Any]:
  """Meta-trains (resuming if the workdir has a run), then tests the best
  checkpoint on validation; writes and returns the results.

  Args:
    config: the experiment's configuration (see `experiments/configs`).
    workdir: the run's directory.
    data_dir: TFDS data dir of the prepared datasets (default: the loader's).
    source_dir: where a dataset's source files are (default: the loader's).
    progress: show a progress bar.

  Returns:
    The results, as written to `workdir/results.json`.

  Raises:
    ConfigError: a configuration, workdir or data that cannot run.
    RunError: a non-finite step (nothing of it is applied or saved).
  """
  validate(config)
  prepare_workdir(workdir)
  run = _Run(config, workdir, data_dir, source_dir, 'train')
  checkpoints = run.checkpoints
  saved, source = _read_saved_config(workdir, checkpoints)
  check_same_run(saved, source, config, workdir)
  train_data, val_data = run.load('train'), run.load('val')
  state = run.init_state()
  restored = checkpoints.restore_latest_readable(state)
  if restored is not None:
    state = restored[0]
    _say(f'Resuming from step {int(state.step)} of {workdir}.')
    before = (saved or {}).get('num_iterations', config.num_iterations)
    if config.meta_lr_final >= 0 and before != config.num_iterations:
      _say(
        f'Warning: the meta learning rate decays over num_iterations, which '
        f'was {before} and is now {config.num_iterations}: the schedule of '
        'the remaining steps follows the new length.'
      )
  main_process = sharding.is_main_process()  # Only it writes files.
  if main_process:
    common.write_json(os.path.join(workdir, 'config.json'), config.to_dict())

  train_step = make_train_step(
    run.learner, run.optimizer, run.family, config, run.mesh
  )
  # Validation compiles the test's program: it also scores each query
  # alone, which it does not report.
  evaluator = Evaluator(run.learner, run.family, config, run.mesh, alone=True)
  val_keys = episodes.eval_task_keys(config.eval_seed + 1, config.num_val_tasks)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  start_step = int(state.step)
  if main_process:
    _keep_records_up_to(metrics_path, start_step)
  writer = common.MetricWriter(workdir) if main_process else _NoWriter()
  metric = run.metric

  def validate_now(state):
    values = evaluator(state.params, val_data, val_keys)[0]
    value, ci95 = jaxmeta.mean_and_ci95(values)
    writer.write(int(state.step), {metric: value, 'ci95': ci95}, prefix='val/')
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
  if checkpoints.best_step() is None:  # No validated step yet (no training).
    if step in checkpoints.manager.all_steps():
      checkpoints.manager.delete(step)
    checkpoints.save(step, state, run.meta(), validate_now(state))

  results = run.test(evaluator)
  results_path = os.path.join(workdir, 'results.json')
  timing = dict(
    iterations=step,
    resumed_from_step=start_step,
    compile_seconds=compile_seconds,
    train_seconds=train_seconds,
    steps_per_second=timed_steps / train_seconds if timed_steps else None,
  )
  if step == start_step and os.path.exists(results_path):
    # Nothing trained in this call: keep the figures of the call that did.
    try:
      with open(results_path) as f:
        earlier = json.load(f)
      for key in (
        'compile_seconds',
        'train_seconds',
        'steps_per_second',
        'resumed_from_step',
      ):
        timing[key] = earlier.get(key, timing[key])
    except (OSError, ValueError):
      pass
  results.update(timing)
  writer.write(
    step,
    {metric: results[f'test_{metric}'], 'ci95': results['test_ci95']},
    prefix='test/',
  )
  writer.close()
  checkpoints.close()
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
  workdir: str,
  *,
  data_dir: str | None = None,
  source_dir: str | None = None,
) -> dict[str, Any]:
  """`--mode=eval`: tests the best checkpoint of the run in `workdir`.

  The config must be the run's (but for `RESUMABLE_FIELDS`, e.g. a different
  `num_eval_tasks`); the results go to `workdir/eval.json`, and are printed
  first, so that a read-only workdir still shows them.
  """
  validate(config)
  prepare_workdir(workdir, create=False)
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise ConfigError(
      f'{workdir} holds no run (no checkpoints/). Fix: train '
      'first (--mode=train), or give the workdir of a run.'
    )
  run = _Run(config, workdir, data_dir, source_dir, 'test', read_only=True)
  saved, source = _read_saved_config(workdir, run.checkpoints)
  if saved is None:
    raise ConfigError(f'{workdir} holds no checkpoint. Fix: train first.')
  check_same_run(saved, source, config, workdir)
  results = run.test()
  run.checkpoints.close()
  path = os.path.join(workdir, 'eval.json')
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
