"""A config becomes a run: model, learner, optimiser, task family and the
compiled training step (`Run`, `make_train_step`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

import jaxmeta
from jaxmeta import sharding
from . import checkpoints as checkpoints_lib
from . import config_checks
from . import tasks


def build_learner(
  config: ml_collections.ConfigDict,
  family: tasks.TaskFamily,
  input_shape: tuple[int, ...],
  num_train_classes: int | None = None,
) -> jaxmeta.MetaLearner:
  """The backbone and algorithm named by the config; `num_train_classes`
  is the `num_classes` of the algorithms taking it, unless `config.method`
  sets it."""
  options = dict(config.method)
  if 'num_classes' in jaxmeta.algorithms.options(config.algorithm):
    if options.get('num_classes') is None:
      options['num_classes'] = num_train_classes
    # Fewer outputs than training classes: labels past the head score
    # nothing.
    if num_train_classes and options['num_classes'] < num_train_classes:
      raise config_checks.ConfigError(
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
      raise config_checks.ConfigError(
        f'config.batch_norm={config.batch_norm!r}: the backbone '
        f"{config.backbone} has no batch norm; use 'transductive'."
      ) from e
    raise config_checks.ConfigError(f'{config.backbone}: {e}') from e
  except ValueError as e:
    raise config_checks.ConfigError(f'{config.backbone}: {e}') from e
  remat = config.get('remat', '')
  if remat:
    if remat not in jaxmeta.models.REMAT_POLICIES:
      raise config_checks.ConfigError(
        f'Unknown config.remat {remat!r}. Fix: --config.remat=<one of '
        f"{', '.join(jaxmeta.models.REMAT_POLICIES)}>, or '' (off)."
      )
    if config.batch_norm != 'transductive':
      raise config_checks.ConfigError(
        f'config.remat={remat!r} recomputes the transductive forward pass '
        f'only, not batch_norm={config.batch_norm!r}. Fix: '
        "--config.remat=''."
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
    raise config_checks.ConfigError(
      f'{config.backbone} / {config.algorithm}: {e}'
    ) from e
  traits = jaxmeta.algorithms.traits(config.algorithm)
  if tasks.train_ways(config) != config.ways and not traits.any_ways:
    raise config_checks.ConfigError(
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
      raise config_checks.ConfigError(
        f'config.{", ".join(ignored)}: {config.algorithm} trains on '
        'minibatches of config.batch_size images of all classes, not on '
        f'episodes. Fix: set {", ".join(i.split("=")[0] for i in ignored)} '
        'to 0 (config.batch_size sets its minibatch).'
      )
  if traits.train_batches and (
    family.sample_batch is None or config.sampler != 'device'
  ):
    raise config_checks.ConfigError(
      f'{config.algorithm} trains on minibatches of all classes: it needs an '
      "image dataset and config.sampler = 'device'."
    )
  return learner


def build_optimizer(
  config: ml_collections.ConfigDict,
) -> optax.GradientTransformation:
  """The outer optimiser, with the rate schedule of the config (see
  `experiments/configs/default.py`)."""
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


def all_finite(tree: Any) -> jax.Array:
  """Whether every float of `tree` is finite (a bool scalar)."""
  leaves = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def open_checkpoints(
  workdir, config, family: tasks.TaskFamily, read_only: bool = False
) -> checkpoints_lib.Checkpoints:
  """The checkpoints of the run in `workdir`, ranked on validation by
  `family.metric`."""
  return checkpoints_lib.Checkpoints(
    workdir,
    config.keep_checkpoints,
    f'val_{family.metric}',
    family.higher_is_better,
    read_only=read_only,
  )


def make_train_step(
  learner: jaxmeta.MetaLearner,
  optimizer: optax.GradientTransformation,
  family: tasks.TaskFamily,
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh | None = None,
):
  """The jitted step `(state, batch) -> (state, metrics)` on `mesh`.

  `batch` is the training split, from which the step draws its tasks; or,
  where the family draws meta-batches on the host (`family.sample_host`),
  the meta-batch, augmented in the step. See `jaxmeta.make_meta_train_step`
  for the mesh. A step whose loss, meta-gradient, new parameters or new
  optimiser state are not all finite is not applied: the state stays the
  last good one (its `step` names the failing step) and `metrics['finite']`
  is False.
  """
  chunk = config.task_chunk_size or jaxmeta.default_task_chunk_size(
    config.meta_batch_size
  )

  def sample_task(key, data):
    if jaxmeta.algorithms.traits(config.algorithm).train_batches:
      return family.sample_batch(key, data, config.batch_size)
    return family.sample(key, data, True)

  def sample_tasks(key, data):
    if family.sample_host is not None:  # Drawn on the host: augmented here.
      key = jax.random.fold_in(key, 1)
      keys = jax.random.split(key, config.meta_batch_size)
      return jax.vmap(family.augment)(keys, data)
    keys = jax.random.split(key, config.meta_batch_size)
    return jax.vmap(lambda k: sample_task(k, data))(keys)

  meta_step = jaxmeta.make_meta_train_step(
    learner, optimizer, sample_tasks, chunk, model_keys=True, mesh=mesh
  )

  def train_step(state, data):
    new_state, metrics = meta_step(state, data)
    finite = (
      jnp.isfinite(metrics['loss'])
      & jnp.isfinite(metrics['meta_grad_norm'])
      & all_finite(
        (new_state.params, new_state.model_state, new_state.opt_state)
      )
    )
    new_state = jax.tree.map(
      lambda n, o: jnp.where(finite, n, o), new_state, state
    )
    return new_state, dict(metrics, finite=finite)

  return jax.jit(train_step, donate_argnums=0)


class Run:
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
      raise config_checks.ConfigError(
        f'config.seed / config.eval_seed: {e}'
      ) from e
    self.mesh = sharding.make_mesh()
    try:
      sharding.check_divisible(
        config.meta_batch_size, self.mesh, config.task_chunk_size or None
      )
    except ValueError as e:
      raise config_checks.ConfigError(
        f'config.meta_batch_size / task_chunk_size: {e}'
      ) from e
    try:
      self.family = tasks.build(config, data_dir, source_dir)
    except tasks.TaskFamilyError as e:
      raise config_checks.ConfigError(str(e)) from e
    self.data = {}
    self.load(first_split)
    num_train_classes = None
    if 'num_classes' in jaxmeta.algorithms.options(config.algorithm):
      train_data = self.load(config.get('train_split', 'train'))
      num_train_classes = len(tasks.class_images(train_data)[0])
    # Recorded in the workdir (`meta`) so that `predict.load_run` rebuilds the
    # learner without the data.
    self.input_shape = tuple(self.family.input_shape(self.data[first_split]))
    self.learner = build_learner(
      config, self.family, self.input_shape, num_train_classes
    )
    self.optimizer = build_optimizer(config)
    self.metric = self.family.metric
    self.checkpoints = open_checkpoints(workdir, config, self.family, read_only)

  def load(self, split):
    """The data of `split`, on every device of the mesh."""
    if split not in self.data:
      try:
        data = self.family.load(split)
      except tasks.TaskFamilyError as e:
        raise config_checks.ConfigError(str(e)) from e
      if data is not None:
        data = sharding.replicate(data, self.mesh)
      self.data[split] = data
    return self.data[split]

  def init_state(self) -> jaxmeta.MetaTrainState:
    """The initial state, replicated over the mesh."""
    return jaxmeta.init_train_state(
      self.learner,
      self.optimizer,
      jax.random.PRNGKey(self.config.seed),
      self.mesh,
    )

  def meta(self) -> dict[str, Any]:
    return {
      'config': self.config.to_dict(),
      'jaxmeta_version': jaxmeta.__version__,
      'input_shape': list(self.input_shape),
    }
