"""The meta-training step and batched evaluation, always on a mesh.

`make_meta_train_step` is one meta-iteration (task sampling, adaptation,
meta-gradient, the optax update), jitted once by the caller into one XLA
program, data parallel over the tasks of a mesh (`jaxmeta.sharding`).
"""

import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from jaxmeta import sharding

from jaxmeta.algorithms import MetaLearner
from jaxmeta.algorithms import STATISTICS_METRIC
from jaxmeta.models.norms import merge_model_state
from jaxmeta.models.norms import split_model_state
from jaxmeta.types import Array, Params, PRNGKey, Task


class MetaTrainState(flax.struct.PyTreeNode):
  """Everything a meta-training run carries from step to step.

  Attributes:
    step: int32 scalar, meta-iterations done so far.
    params: the trainable meta-parameters, what the outer optimiser updates.
    model_state: what no gradient moves: the running batch-norm statistics
      (`norms.split_model_state`), updated by the learner's `update_state`.
    opt_state: the outer optax optimiser's state, of `params` alone.
    key: the run's base key; step `t` draws its tasks from `fold_in(key, t)`.
  """

  step: Array
  params: Params
  model_state: Params
  opt_state: optax.OptState
  key: PRNGKey

  def merged_params(self) -> Params:
    """`params` with `model_state` merged back in: what the learner's
    functions take (their forward passes hold the statistics constant)."""
    return merge_model_state(self.params, self.model_state)


def _one_device_mesh(mesh: jax.sharding.Mesh | None) -> jax.sharding.Mesh:
  """`mesh`, or by default a mesh of this process's first device: the result
  is then the same on any machine and any meta-batch size divides."""
  if mesh is None:
    return sharding.make_mesh(jax.local_devices()[:1])
  return mesh


def init_train_state(
  learner: MetaLearner,
  optimizer: optax.GradientTransformation,
  key: PRNGKey,
  mesh: jax.sharding.Mesh | None = None,
) -> MetaTrainState:
  """The `MetaTrainState` of `learner.init`, split into trainable
  parameters and model state, replicated over `mesh` (default: this
  process's first device) where the step with the same mesh leaves it."""
  init_key, data_key = jax.random.split(key)
  params, model_state = split_model_state(learner.init(init_key))
  state = MetaTrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    model_state=model_state,
    opt_state=optimizer.init(params),
    key=data_key,
  )
  return sharding.replicate(state, _one_device_mesh(mesh))


# Stream of the model's keys under a step's key. With JAX's default
# (partitionable) threefry, `split(k, n)[j]` is `fold_in(k, j)`: a small
# constant would be the key a sampler splitting the step's key gives task j.
_MODEL_STREAM = 0x4D444C  # 'MDL'


def model_key(state: MetaTrainState) -> PRNGKey:
  """The key of the model's randomness (dropout, DropBlock) at
  `state.step`: `fold_in(fold_in(state.key, step), _MODEL_STREAM)`, none of
  the tasks' keys, the same in a resumed run."""
  return jax.random.fold_in(
    jax.random.fold_in(state.key, state.step), _MODEL_STREAM
  )


def meta_gradient(
  learner: MetaLearner,
  params: Params,
  tasks: Task,
  task_chunk_size: int | None = None,
  key: PRNGKey | None = None,
  task_keys: Array | None = None,
  global_step: Array | None = None,
) -> tuple[Params, dict[str, Array]]:
  """Mean over the meta-batch of the per-task meta-gradients.

  Args:
    learner: the algorithm.
    params: meta-parameters.
    tasks: a meta-batch, every leaf with a leading `[num_tasks]` axis.
    task_chunk_size: tasks are vmapped in chunks of this many, the chunks
      summed under `lax.scan` (the memory of one chunk); must divide the
      meta-batch, or be >= it. None: `default_task_chunk_size`.
    key: optional key for the model's randomness, split into one key per task
      (`split(key, num_tasks)`). None: no keys.
    task_keys: instead of `key`, the per-task keys `[num_tasks]`.
    global_step: optional meta-iteration (int32 scalar) for `task_update`.

  Returns:
    `(meta_grad, metrics)`: the mean gradient (shaped like `params`) and the
    mean per-task metrics.
  """
  task_update = functools.partial(learner.task_update, global_step=global_step)
  num_tasks = jax.tree.leaves(tasks)[0].shape[0]
  if key is not None and task_keys is not None:
    raise ValueError('meta_gradient takes key or task_keys, not both.')
  if key is not None:
    task_keys = jax.random.split(key, num_tasks)
  if task_keys is not None:
    # The keys travel with the tasks: vmapped, chunked and scanned alike.
    tasks = (tasks, task_keys)
    keyed_update = task_update
    task_update = lambda p, task_and_key: keyed_update(p, *task_and_key)
  task_grads = jax.vmap(task_update, in_axes=(None, 0))
  if task_chunk_size is None:
    task_chunk_size = default_task_chunk_size(num_tasks)
  if task_chunk_size >= num_tasks:
    grads, metrics = task_grads(params, tasks)
    mean = lambda t: jax.tree.map(lambda v: jnp.mean(v, axis=0), t)
    return mean(grads), mean(metrics)
  if task_chunk_size < 1 or num_tasks % task_chunk_size:
    raise ValueError(
      f'task_chunk_size={task_chunk_size} must be >= 1 and '
      f'divide the meta-batch size {num_tasks}.'
    )
  chunks = jax.tree.map(
    lambda v: v.reshape(
      (num_tasks // task_chunk_size, task_chunk_size) + v.shape[1:]
    ),
    tasks,
  )

  if task_chunk_size == 1:
    # One task per scan step, not vmapped: a vmap over a chunk of one still
    # adds a batch axis to every matmul, which XLA:CPU runs slower.
    chunks = tasks
    chunk_sum_fn = lambda chunk: task_update(params, chunk)
  else:
    chunk_sum_fn = lambda chunk: jax.tree.map(
      lambda v: jnp.sum(v, axis=0), task_grads(params, chunk)
    )

  def accumulate(total, chunk):
    return jax.tree.map(jnp.add, total, chunk_sum_fn(chunk)), None

  # zeros_like keeps the abstract value's varying mesh axes: under
  # `jax.shard_map` the chunk sums vary over the task axis, and the scan
  # carry must too (check_vma), which `jnp.zeros(shape, dtype)` is not.
  zeros = jax.tree.map(
    jnp.zeros_like,
    jax.eval_shape(chunk_sum_fn, jax.tree.map(lambda v: v[0], chunks)),
  )
  (grad_sum, metric_sum), _ = jax.lax.scan(accumulate, zeros, chunks)
  mean = lambda t: jax.tree.map(lambda v: v / num_tasks, t)
  return mean(grad_sum), mean(metric_sum)


def default_task_chunk_size(meta_batch_size: int) -> int:
  """The fastest `task_chunk_size` (benchmarks/README.md): 1 on the CPU (a vmap
  makes every matmul a batched one), `meta_batch_size` on accelerators.

  Args:
    meta_batch_size: tasks per meta-batch (per device, when sharded).

  Returns:
    A chunk size dividing `meta_batch_size`.
  """
  if jax.default_backend() == 'cpu':
    return 1
  return meta_batch_size


def make_meta_train_step(
  learner: MetaLearner,
  optimizer: optax.GradientTransformation,
  sample_tasks: Callable[..., Task] | None = None,
  task_chunk_size: int | None = None,
  model_keys: bool = False,
  *,
  mesh: jax.sharding.Mesh | None = None,
) -> Callable[..., tuple[MetaTrainState, dict[str, Array]]]:
  """The (unjitted) meta-step on a mesh, to be jitted once by the caller.

  Each device computes the mean meta-gradient of its own tasks under
  `jax.shard_map`, one `pmean` averages gradient and metrics, and every
  device applies the same update to its replica of the state.

  Args:
    learner: the algorithm.
    optimizer: the outer optimiser.
    sample_tasks: optional `sample_tasks(key, *data) -> Task`, a meta-batch
      `[num_tasks, ...]` from `fold_in(state.key, state.step)`; the step is
      then `step(state, *data)`, else `step(state, tasks)`.
    task_chunk_size: see `meta_gradient`; must divide a device's tasks.
    model_keys: if True, task `i` gets key `i` of `split(model_key(state),
      num_tasks)` for the model's randomness; else it is deterministic.
    mesh: a 1-D mesh (`sharding.make_mesh`); default: this process's first
      device.

  Returns:
    `step(...) -> (new_state, metrics)`, replicated: the query metrics
    averaged over tasks and `meta_grad_norm`.

  Raises:
    ValueError: (when traced) if the tasks do not divide over the devices or
      the chunks.
  """
  mesh = _one_device_mesh(mesh)
  axis = sharding.task_axis(mesh)

  def local_gradient(state, tasks):
    num_local = jax.tree.leaves(tasks)[0].shape[0]
    task_keys = None
    if model_keys:  # This device's slice of the meta-batch's keys.
      keys = jax.random.split(model_key(state), num_local * mesh.size)
      start = jax.lax.axis_index(axis) * num_local
      task_keys = jax.lax.dynamic_slice_in_dim(keys, start, num_local)
    # The learner's functions take the merged parameters; the statistics'
    # gradient is zero (the forward passes hold them constant) and is
    # dropped, so the meta-gradient is that of the trainable parameters.
    grad, metrics = meta_gradient(
      learner,
      sharding.per_device(state.merged_params(), axis),
      tasks,
      task_chunk_size,
      task_keys=task_keys,
      global_step=state.step,
    )
    grad = split_model_state(grad)[0]
    # Every device has as many tasks, so the mean of the device means is
    # the mean over the meta-batch.
    return jax.lax.pmean((grad, metrics), axis)

  sharded_gradient = jax.shard_map(
    local_gradient, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P()
  )

  def step(state, *data):
    if sample_tasks is None:
      (tasks,) = data
    else:
      tasks = sample_tasks(jax.random.fold_in(state.key, state.step), *data)
    num_tasks = jax.tree.leaves(tasks)[0].shape[0]
    sharding.check_divisible(num_tasks, mesh, task_chunk_size)
    grad, metrics = sharded_gradient(state, tasks)
    # Replicated: every device applies the same update to its copy.
    updates, opt_state = optimizer.update(grad, state.opt_state, state.params)
    metrics = dict(metrics)
    statistics = metrics.pop(STATISTICS_METRIC, None)
    model_state = state.model_state
    if learner.update_state is not None:
      model_state = learner.update_state(model_state, statistics)
    metrics['meta_grad_norm'] = optax.tree.norm(grad)
    new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      model_state=model_state,
      opt_state=opt_state,
    )
    return new_state, metrics

  return step


def meta_train_step(
  learner: MetaLearner,
  optimizer: optax.GradientTransformation,
  state: MetaTrainState,
  tasks: Task,
  task_chunk_size: int | None = None,
) -> tuple[MetaTrainState, dict[str, Array]]:
  """One meta-iteration on a given meta-batch, on one device:
  `make_meta_train_step(learner, optimizer, None, task_chunk_size)(state,
  tasks)`."""
  return make_meta_train_step(learner, optimizer, None, task_chunk_size)(
    state, tasks
  )


def make_evaluate(
  learner: MetaLearner,
  num_steps: int,
  task_chunk_size: int | None = None,
  *,
  mesh: jax.sharding.Mesh | None = None,
) -> Callable[[Params, Task], dict[str, Array]]:
  """Per-task evaluation of a batch of tasks on a mesh (jit it once).

  Args:
    learner: the algorithm.
    num_steps: inner steps of the adaptation (static).
    task_chunk_size: tasks vmapped at once on a device (`lax.map` over the
      chunks); must divide a device's tasks. None: `default_task_chunk_size`.
    mesh: see `make_meta_train_step`.

  Returns:
    `evaluate(params, tasks) -> metrics` (`params` as
    `MetaTrainState.merged_params`), every metric with a leading `[num_tasks]`
    axis (`[num_tasks, num_steps + 1]` for `*_by_step`), split like the tasks.
  """
  mesh = _one_device_mesh(mesh)
  axis = sharding.task_axis(mesh)

  def local(params, tasks):
    params = sharding.per_device(params, axis)
    one = lambda task: learner.evaluate(params, task, num_steps)
    num_local = jax.tree.leaves(tasks)[0].shape[0]
    chunk = task_chunk_size or default_task_chunk_size(num_local)
    if chunk >= num_local:
      return jax.vmap(one)(tasks)
    # One task at a time is a plain `lax.map`: a vmap over a chunk of one
    # still adds a batch axis to every matmul (see `meta_gradient`).
    return jax.lax.map(one, tasks, batch_size=None if chunk == 1 else chunk)

  sharded = jax.shard_map(
    local, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P(axis)
  )

  def evaluate(params, tasks):
    num_tasks = jax.tree.leaves(tasks)[0].shape[0]
    sharding.check_divisible(num_tasks, mesh, task_chunk_size)
    return sharded(params, tasks)

  return evaluate


def mean_and_ci95(values: Any) -> tuple[float, float]:
  """Mean and the 95% confidence half-width `1.96 * std / sqrt(n)`
  (population std, as the few-shot literature reports).

  Args:
    values: per-task values, shape `[n]`.

  Returns:
    `(mean, ci95)` as Python floats.
  """
  values = np.asarray(values, dtype=np.float64).reshape(-1)
  if values.size == 0:
    raise ValueError('mean_and_ci95 needs at least one value.')
  return (
    float(values.mean()),
    float(1.96 * values.std() / np.sqrt(values.size)),
  )
