"""The meta-training step and batched evaluation, always on a mesh.

`make_meta_train_step` is the whole of one meta-iteration: task sampling,
per-task inner adaptation, outer loss, meta-gradient (second order for MAML),
averaging over the meta-batch and the optax update. Jitted once by the
caller, it is one XLA program on one device or data parallel over the tasks
of a mesh's devices (`jaxmeta.sharding`); `make_evaluate` likewise.
"""

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
    params: the trainable meta-parameters (the initialisation MAML learns),
      what the outer optimiser updates.
    model_state: the model's state, which no gradient moves: the running
      batch-norm statistics of a 'running' model (`norms.split_model_state`),
      updated by the meta-step with the learner's `update_state`; `{}` for a
      model without state.
    opt_state: the outer optax optimiser's state, of `params` alone.
    key: the run's base PRNG key; step `t` draws its tasks from
      `jax.random.fold_in(key, t)`, so a resumed run sees the same tasks
      (and, with `make_meta_train_step(..., model_keys=True)`, the same
      dropout or DropBlock masks: see `model_key`).
  """

  step: Array
  params: Params
  model_state: Params
  opt_state: optax.OptState
  key: PRNGKey

  def merged_params(self) -> Params:
    """The parameters the learner's functions take (`adapt`, `evaluate`,
    `predict`, `task_update`): `params` with `model_state` merged back in.

    The learners keep one parameter pytree because every forward pass holds
    the statistics constant: no algorithm needs a second argument, and the
    step merges where it calls them.
    """
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
  """Initialises meta-parameters, model state, optimiser state and the
  data key.

  The learner's initial parameters are split into the trainable ones, the
  optimiser's, and the model state (`norms.split_model_state`).
  The state is replicated over `mesh` (default: this process's first
  device), where the step built with the same mesh leaves it: the step's
  first call then compiles the program its later calls run.
  """
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
  """The key of the model's randomness at `state.step` (dropout, DropBlock).

  `fold_in(fold_in(state.key, step), MODEL_STREAM)`. Tasks are drawn from
  `fold_in(state.key, step)` itself, and a sampler that splits it into `n`
  keys gets `fold_in(., 0..n-1)`; the stream constant lies beyond any
  meta-batch size, so the model's key is none of the tasks' keys.

  Args:
    state: the current train state.

  Returns:
    A PRNG key, the same for the same `state.key` and `state.step` (a resumed
    run draws the same masks).
  """
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
    task_chunk_size: tasks are vmapped in chunks of this many and the
      chunks run one after another under `lax.scan`, summing gradients: the
      same result with the activation memory of one chunk (second-order MAML
      keeps every activation of every task of the chunk alive). Must divide
      the meta-batch size; the meta-batch size (or more) vmaps every task at
      once. None: `default_task_chunk_size`, the backend's fastest.
    key: optional key for the model's randomness: split into one key per
      task (`split(key, num_tasks)`, task `i` gets key `i` whatever the
      chunking), each handed to `learner.task_update`. None: no keys, the
      deterministic meta-gradient.
    task_keys: instead of `key`, the per-task keys `[num_tasks]` themselves
      (a device's slice of a meta-batch's keys on a mesh).
    global_step: optional meta-iteration (int32 scalar), handed to every
      `task_update` as `global_step=` for the algorithm's schedules.

  Returns:
    `(meta_grad, metrics)`: the averaged gradient (structure of `params`) and
    the per-task metrics averaged over tasks.
  """
  if global_step is None:
    task_update = learner.task_update
  else:
    task_update = lambda p, task, key=None: learner.task_update(
      p, task, key, global_step=global_step
    )
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
  """The fastest `task_chunk_size` on the current backend.

  On the CPU, one task at a time under `lax.scan` (no vmap): XLA:CPU already
  spreads each matmul over the cores, a vmapped batch of per-task weights
  turns every matmul into a batched one, and one task at a time keeps the
  activations of one task only. On accelerators, the whole meta-batch at
  once. The measurements are in benchmarks/README.md.

  Args:
    meta_batch_size: tasks per meta-batch (per device, when sharded).

  Returns:
    A chunk size dividing `meta_batch_size`.
  """
  if jax.default_backend() == 'cpu':
    return 1
  return meta_batch_size


def apply_meta_gradient(
  learner: MetaLearner,
  optimizer: optax.GradientTransformation,
  state: MetaTrainState,
  grad: Params,
  metrics: dict[str, Array],
) -> tuple[MetaTrainState, dict[str, Array]]:
  """The end of a meta-step: the optimiser's update of the trainable
  parameters by `grad` (structured like `state.params`), then, for a learner
  with `update_state`, the update of the model state (the running batch-norm
  statistics) by the tasks' mean `STATISTICS_METRIC`, which leaves the
  metrics."""
  updates, opt_state = optimizer.update(grad, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics)
  statistics = metrics.pop(STATISTICS_METRIC, None)
  model_state = state.model_state
  if learner.update_state is not None:
    model_state = learner.update_state(model_state, statistics)
  metrics['meta_grad_norm'] = optax.tree.norm(grad)
  new_state = state.replace(
    step=state.step + 1,
    params=params,
    model_state=model_state,
    opt_state=opt_state,
  )
  return new_state, metrics


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

  The meta-batch is split over the devices of `mesh` (one device by
  default). Under `jax.shard_map` each device computes the mean
  meta-gradient of its own tasks (`meta_gradient`, chunked by
  `task_chunk_size` within the device), one `pmean` averages gradient and
  metrics together (one all-reduce, none on one device), and every device
  applies the same optimiser update to its replica of the state.

  The sampler draws a meta-batch, `sample_tasks(key, *data)`, because the
  data modules draw meta-batches (`episodes.sample_tasks` is a per-task
  sampler vmapped over `split(key, num_tasks)`) and its output's leading axis
  gives the meta-batch size; with that output split over the task axis, XLA
  gathers each task's images only on the device that adapts it. Task `i` of
  step `t` is drawn from `split(fold_in(state.key, t), num_tasks)[i]` on any
  number of devices.

  Args:
    learner: the algorithm.
    optimizer: the outer optimiser.
    sample_tasks: optional `sample_tasks(key, *data) -> Task`, a meta-batch
      `[num_tasks, ...]` drawn on the device from
      `fold_in(state.key, state.step)`; the step is then
      `step(state, *data)` (e.g. the image array, replicated). Without it the
      step is `step(state, tasks)` for a given meta-batch.
    task_chunk_size: see `meta_gradient` (None: the backend's fastest); must
      divide the tasks of one device.
    model_keys: if True, the model gets a key during meta-training (dropout,
      DropBlock active): task `i` gets key `i` of `split(model_key(state),
      num_tasks)`, on whichever device adapts it; the model's `apply` must
      then accept `key=`. If False (default), the model is deterministic.
    mesh: a 1-D mesh (`sharding.make_mesh`); default: this process's first
      device.

  Returns:
    `step(state, tasks)` or `step(state, *data)` -> `(new_state, metrics)`:
    metrics are the algorithm's query metrics averaged over tasks and
    `meta_grad_norm`; state and metrics come back replicated.

  Raises:
    ValueError: (when traced) if the meta-batch does not divide over the
      devices, or `task_chunk_size` does not divide the tasks of one device.
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
    return apply_meta_gradient(learner, optimizer, state, grad, metrics)

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

  Evaluation tasks are independent: each device adapts and scores its own,
  and nothing is reduced across devices.

  Args:
    learner: the algorithm.
    num_steps: inner steps of the adaptation (static).
    task_chunk_size: tasks evaluated at once (vmapped) on a device, chunks
      one after another (`lax.map`); must divide the tasks of one device.
      None: `default_task_chunk_size`, the backend's fastest.
    mesh: a 1-D mesh (`sharding.make_mesh`); default: this process's first
      device.

  Returns:
    `evaluate(params, tasks) -> metrics` (`params` merged with the model
    state: `MetaTrainState.merged_params`), every metric with a leading
    `[num_tasks]` axis (and `[num_tasks, num_steps + 1]` for `*_by_step`),
    split over the mesh like the tasks.
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
  """Mean and the 95% confidence half-width `1.96 * std / sqrt(n)`.

  The convention of the few-shot literature (Finn et al. 2017, Snell et al.
  2017): per-task accuracies of `n` evaluation tasks, population std.

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
