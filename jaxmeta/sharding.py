"""The meta-batch sharded over devices and hosts: tasks are the unit of work.

A meta-step is data parallel over tasks. Every device holds the whole train
state (parameters and optimiser state are replicated), adapts its own slice of
the meta-batch (scanning over chunks of it with `task_chunk_size`), and the
per-device meta-gradients are averaged inside the same compiled program by
one all-reduce; every device then applies the same optax update. Tasks are
sampled on the device that adapts them: a sampled meta-batch is never
gathered on one device or on the host.

Algorithms see one task and know nothing of this: the sharding is applied
where the meta-batch is created and where the gradient is averaged.

Typical use (one process, or every process of a multi-host job)::

  from jaxmeta import sharding
  sharding.initialize_distributed()  # Before anything touches a device.
  mesh = sharding.make_mesh()        # 1-D, all devices of all processes.
  state = sharding.replicate(jaxmeta.init_train_state(...), mesh)
  images = sharding.replicate(images, mesh)  # uint8 [classes, drawings, ...]
  # One task from (key, images): episodes.sample_task with the shape bound.
  sample = functools.partial(episodes.sample_task, ways=5, shots=1,
                             queries=15)
  step = jax.jit(sharding.shard_train_step(
      learner, optimizer, mesh, sample_task=sample, meta_batch_size=32,
      task_chunk_size=None), donate_argnums=0)
  state, metrics = step(state, images)    # metrics: replicated scalars
  evaluate = jax.jit(sharding.shard_evaluate(learner, num_steps=3, mesh=mesh,
                                             sample_task=sample))
  keys = sharding.shard_tasks(episodes.eval_task_keys(seed, 600), mesh)
  per_task = evaluate(state.params, keys, images)  # accuracy: [600], sharded
  if sharding.is_main_process():
    ...  # Logging, checkpoints.

Without a sampler, `step(state, tasks)` takes a meta-batch `[num_tasks, ...]`
(`shard_tasks` on one process, `tasks_from_process_local` when each process
reads its own tasks) and `evaluate(params, tasks)` likewise. Every
meta-batch must divide by the number of devices (a ValueError says so).

`shard_train_step` and `shard_evaluate` return unjitted functions, like
`make_meta_train_step` and `make_evaluate`: the training program jits them
once (and may wrap them, e.g. in a finiteness check, inside that jit).

With `sample_task`, task `i` of step `t` is drawn from
`split(fold_in(state.key, t), meta_batch_size)[i]`, exactly the task that the
unsharded `make_meta_train_step(learner, optimizer,
partial(episodes.sample_tasks, num_tasks=meta_batch_size, ...))` draws: a run
sees the same tasks on any number of devices, and its parameters agree with
the one-device run up to the order of floating-point sums.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import os
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from jaxmeta import training
from jaxmeta.algorithms import MetaLearner
from jaxmeta.types import Array, Params, PRNGKey, PyTree, Task

TASK_AXIS = 'tasks'

# Environment variables that say a launcher started several processes, with
# the number of processes where the variable holds it. JAX's own cluster
# detection (`jax.distributed.initialize()` without arguments) then finds the
# coordinator, the process count and this process's index.
_PROCESS_COUNT_VARS = (
  'SLURM_NTASKS',  # SLURM (srun).
  'OMPI_COMM_WORLD_SIZE',  # Open MPI (mpirun).
)


def make_mesh(
  devices: Sequence[jax.Device] | None = None, axis_name: str = TASK_AXIS
) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes).

  The axis is of type `Auto`, so a jitted function given an array with
  another sharding reshards it instead of failing.

  Args:
    devices: the devices, in mesh order; default `jax.devices()`.
    axis_name: the name of the task axis.

  Returns:
    A `jax.sharding.Mesh` with one axis, `axis_name`.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh(
    (len(devices),),
    (axis_name,),
    axis_types=(jax.sharding.AxisType.Auto,),
    devices=devices,
  )


def _axis(mesh: jax.sharding.Mesh) -> str:
  if len(mesh.axis_names) != 1:
    raise ValueError(
      'jaxmeta shards tasks over a 1-D mesh; got axes '
      f'{mesh.axis_names}. Fix: use sharding.make_mesh().'
    )
  return mesh.axis_names[0]


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The sharding of the train state: a full copy on every device."""
  return NamedSharding(mesh, P())


def task_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The sharding of a meta-batch: the leading task axis split over devices."""
  return NamedSharding(mesh, P(_axis(mesh)))


def check_divisible(num_tasks: int, mesh: jax.sharding.Mesh) -> int:
  """Tasks per device; raises if the meta-batch does not divide evenly.

  Args:
    num_tasks: tasks in the (global) meta-batch.
    mesh: the device mesh.

  Returns:
    `num_tasks // mesh.size`.

  Raises:
    ValueError: naming both numbers, if `num_tasks % mesh.size != 0` (every
      device must adapt the same number of tasks; none are dropped).
  """
  num_devices = mesh.size
  if num_tasks < 1 or num_tasks % num_devices:
    raise ValueError(
      f'A meta-batch of {num_tasks} tasks cannot be split evenly over '
      f'{num_devices} devices. Fix: use a meta-batch size that is a '
      f'multiple of {num_devices} (e.g. '
      f'{max(1, -(-num_tasks // num_devices)) * num_devices}).'
    )
  return num_tasks // num_devices


def _check_chunk(
  task_chunk_size: int | None, tasks_per_device: int, num_devices: int
) -> None:
  if task_chunk_size is None or task_chunk_size >= tasks_per_device:
    return
  if task_chunk_size < 1 or tasks_per_device % task_chunk_size:
    raise ValueError(
      f'task_chunk_size={task_chunk_size} must be >= 1 and divide the '
      f'{tasks_per_device} tasks each of the {num_devices} devices '
      "adapts (chunks are taken from a device's own tasks)."
    )


def replicate(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  """Puts a full copy of every leaf on every device of `mesh`.

  For the train state and for data every device reads (the image array of a
  split). In a multi-process run every process must pass the same values:
  each process copies its own to its own devices, nothing is sent between
  processes.
  """
  return _put(tree, replicated(mesh))


def _put(tree: PyTree, sharding: NamedSharding) -> PyTree:
  """`device_put` that also works when `sharding` spans several processes.

  `jax.device_put` only reaches this process's devices; across processes,
  every process builds its own shards from its (identical) host copy.
  """
  if sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda v: _global_from_host(v, sharding), tree)


def _global_from_host(value: Any, sharding: NamedSharding) -> Array:
  if jax.dtypes.issubdtype(getattr(value, 'dtype', None), jax.dtypes.prng_key):
    return jax.random.wrap_key_data(
      _global_from_host(jax.random.key_data(value), sharding),
      impl=jax.random.key_impl(value),
    )
  host = np.asarray(value)
  return jax.make_array_from_callback(
    host.shape, sharding, lambda index: host[index]
  )


def shard_tasks(tasks: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  """Splits a meta-batch (every leaf `[num_tasks, ...]`) over the devices.

  For a meta-batch that every process holds whole (one process, or the
  same evaluation keys on every process); each device receives only its
  rows. Where each process holds only its own tasks, use
  `tasks_from_process_local`.

  Raises:
    ValueError: if `num_tasks` does not divide by the number of devices.
  """
  check_divisible(jax.tree.leaves(tasks)[0].shape[0], mesh)
  return _put(tasks, task_sharding(mesh))


def tasks_from_process_local(
  local_tasks: PyTree, mesh: jax.sharding.Mesh
) -> PyTree:
  """The global meta-batch from each process's own tasks.

  Every process passes its `[local_tasks, ...]` slice (e.g. read from its own
  data shard); the result is one global array per leaf, `[local_tasks *
  process_count, ...]`, sharded over the task axis, whose rows on this
  process's devices are this process's tasks (in the order of the mesh). No
  data crosses processes.

  Args:
    local_tasks: a meta-batch pytree held by this process (NumPy or arrays).
    mesh: the device mesh (all processes' devices).

  Returns:
    The global meta-batch, sharded with `task_sharding(mesh)`.

  Raises:
    ValueError: if the local meta-batch does not divide over this process's
      devices.
  """
  num_local = jax.tree.leaves(local_tasks)[0].shape[0]
  num_global = num_local * jax.process_count()
  check_divisible(num_global, mesh)
  local_devices = sum(
    d.process_index == jax.process_index() for d in mesh.devices.flat
  )
  if num_local % local_devices:
    raise ValueError(
      f'This process holds {num_local} tasks for its {local_devices} '
      f'devices. Fix: a per-process meta-batch that is a multiple of '
      f'{local_devices}.'
    )
  sharding = task_sharding(mesh)
  return jax.tree.map(
    lambda v: jax.make_array_from_process_local_data(sharding, v), local_tasks
  )


def _per_device(params: Params, axis: str) -> Params:
  """The replicated parameters as this device's own (varying) copy.

  Inside `shard_map`, the gradient with respect to a replicated (invariant)
  value is summed over the devices (the transpose of using it in per-device
  work). Every inner-loop gradient of every task would then be an
  all-reduce, and adaptation would see the sum over devices. Differentiating
  with respect to a per-device copy keeps each task's gradients on its
  device; the one `pmean` of the meta-gradient is the only reduction.
  """
  return jax.lax.pcast(params, axis, to='varying')


def _local_task_keys(
  key: PRNGKey, num_tasks: int, tasks_per_device: int, axis: str
) -> Array:
  """This device's slice of `split(key, num_tasks)` (no communication)."""
  keys = jax.random.split(key, num_tasks)  # The same on every device.
  start = jax.lax.axis_index(axis) * tasks_per_device
  return jax.lax.dynamic_slice_in_dim(keys, start, tasks_per_device)


def shard_train_step(
  learner: MetaLearner,
  optimizer: optax.GradientTransformation,
  mesh: jax.sharding.Mesh | None = None,
  *,
  sample_task: Callable[..., Task] | None = None,
  meta_batch_size: int | None = None,
  task_chunk_size: int | None = None,
  model_keys: bool = False,
) -> Callable[..., tuple[training.MetaTrainState, dict[str, Array]]]:
  """`make_meta_train_step` with the meta-batch split over `mesh`'s devices.

  Under `jax.shard_map`: each device computes the mean meta-gradient of its
  own tasks (`training.meta_gradient`, with `task_chunk_size` chunks of its
  own tasks under `lax.scan`), then one `pmean` over the task axis averages
  the gradient and the metrics together (one all-reduce per step), and every
  device applies the same optimiser update to its replica of the state.

  Args:
    learner: the algorithm.
    optimizer: the outer optimiser.
    mesh: a 1-D mesh (default `make_mesh()`).
    sample_task: optional `sample_task(key, *data) -> Task` drawing ONE task
      on the device, e.g. `episodes.sample_task` with the task shape bound.
      If given, the step is `step(state, *data)` (`data`, e.g. the image
      array, replicated) and every device draws its own tasks; otherwise the
      step is `step(state, tasks)` with a meta-batch `[num_tasks, ...]`.
    meta_batch_size: tasks per step over all devices; required with
      `sample_task`.
    task_chunk_size: see `training.meta_gradient`; must divide the tasks of
      one device.
    model_keys: as in `training.make_meta_train_step`: task `i` of the
      meta-batch gets key `i` of `split(training.model_key(state),
      num_tasks)`, on whichever device adapts it, so the model's randomness
      is that of the unsharded step.

  Returns:
    `step(state, tasks)` or `step(state, *data)` -> `(new_state, metrics)`,
    unjitted; state and metrics come back replicated.

  Raises:
    ValueError: if the meta-batch does not divide over the devices, or
      `task_chunk_size` does not divide the tasks of one device.
  """
  mesh = make_mesh() if mesh is None else mesh
  axis = _axis(mesh)

  def local_step(state, tasks):
    task_keys = None
    if model_keys:
      per_device = jax.tree.leaves(tasks)[0].shape[0]
      task_keys = _local_task_keys(
        training.model_key(state), per_device * mesh.size, per_device, axis
      )
    grad, metrics = training.meta_gradient(
      learner,
      _per_device(state.params, axis),
      tasks,
      task_chunk_size,
      task_keys=task_keys,
      global_step=state.step,
    )
    # One collective: the gradient and the metrics in a single all-reduce.
    # Every device has the same number of tasks, so the mean of the device
    # means is the mean over the meta-batch.
    grad, metrics = jax.lax.pmean((grad, metrics), axis)
    return training.apply_meta_gradient(
      learner, optimizer, state, grad, metrics
    )

  if sample_task is None:
    sharded = jax.shard_map(
      local_step, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P()
    )

    def step(state, tasks):
      per_device = check_divisible(jax.tree.leaves(tasks)[0].shape[0], mesh)
      _check_chunk(task_chunk_size, per_device, mesh.size)
      return sharded(state, tasks)

    return step

  if meta_batch_size is None:
    raise ValueError(
      'shard_train_step(sample_task=...) needs '
      'meta_batch_size, the tasks per step over all devices.'
    )
  per_device = check_divisible(meta_batch_size, mesh)
  _check_chunk(task_chunk_size, per_device, mesh.size)

  def sampling_step(state, *data):
    keys = _local_task_keys(
      jax.random.fold_in(state.key, state.step),
      meta_batch_size,
      per_device,
      axis,
    )
    tasks = jax.vmap(lambda k: sample_task(k, *data))(keys)
    return local_step(state, tasks)

  def step(state, *data):
    return jax.shard_map(
      sampling_step, mesh=mesh, in_specs=(P(),) * (1 + len(data)), out_specs=P()
    )(state, *data)

  return step


def shard_sample_tasks(
  sample_task: Callable[..., Task],
  num_tasks: int,
  mesh: jax.sharding.Mesh | None = None,
) -> Callable[..., Task]:
  """A meta-batch sampler whose output is created sharded over the tasks.

  `sampler(key, *data)` returns the same tasks as `vmap(sample_task)` over
  `split(key, num_tasks)` (i.e. `episodes.sample_tasks`), but each device
  draws only its own `num_tasks / devices` of them: the result is sharded
  with `task_sharding(mesh)` and was never on one device.

  Args:
    sample_task: `sample_task(key, *data) -> Task` for one task.
    num_tasks: tasks over all devices.
    mesh: a 1-D mesh (default `make_mesh()`).

  Returns:
    `sampler(key, *data) -> Task`, unjitted.
  """
  mesh = make_mesh() if mesh is None else mesh
  axis = _axis(mesh)
  per_device = check_divisible(num_tasks, mesh)

  def local(key, *data):
    keys = _local_task_keys(key, num_tasks, per_device, axis)
    return jax.vmap(lambda k: sample_task(k, *data))(keys)

  def sampler(key, *data):
    return jax.shard_map(
      local, mesh=mesh, in_specs=(P(),) * (1 + len(data)), out_specs=P(axis)
    )(key, *data)

  return sampler


def shard_evaluate(
  learner: MetaLearner,
  num_steps: int,
  mesh: jax.sharding.Mesh | None = None,
  *,
  sample_task: Callable[..., Task] | None = None,
) -> Callable[..., dict[str, Array]]:
  """`training.make_evaluate` with the evaluation tasks split over devices.

  Evaluation tasks are independent: each device adapts and scores its own,
  and nothing is reduced across devices.

  Args:
    learner: the algorithm.
    num_steps: inner steps at evaluation (static).
    mesh: a 1-D mesh (default `make_mesh()`).
    sample_task: optional `sample_task(key, *data) -> Task`; if given, the
      function is `evaluate(params, keys, *data)` and each device draws the
      tasks of its own keys; otherwise `evaluate(params, tasks)`.

  Returns:
    `evaluate(params, tasks)` or `evaluate(params, keys, *data)` -> metrics,
    every metric `[num_tasks, ...]` sharded over the task axis; unjitted.

  Raises:
    ValueError: if the number of tasks does not divide over the devices.
  """
  mesh = make_mesh() if mesh is None else mesh
  axis = _axis(mesh)
  evaluate_tasks = training.make_evaluate(learner, num_steps)

  if sample_task is None:

    def local(params, tasks):
      return evaluate_tasks(_per_device(params, axis), tasks)
  else:

    def local(params, keys, *data):
      tasks = jax.vmap(lambda k: sample_task(k, *data))(keys)
      return evaluate_tasks(_per_device(params, axis), tasks)

  def evaluate(params, tasks_or_keys, *data):
    check_divisible(jax.tree.leaves(tasks_or_keys)[0].shape[0], mesh)
    return jax.shard_map(
      local,
      mesh=mesh,
      in_specs=(P(), P(axis)) + (P(),) * len(data),
      out_specs=P(axis),
    )(params, tasks_or_keys, *data)

  return evaluate


def _launcher_process_count() -> int:
  """The number of processes a launcher says it started (1 if none)."""
  for var in _PROCESS_COUNT_VARS:
    value = os.environ.get(var)
    if value:
      try:
        return int(value)
      except ValueError:
        continue
  # GKE TPU slices (and Cloud TPU launchers) list the slice's hosts.
  for var in ('TPU_PROCESS_ADDRESSES', 'TPU_WORKER_HOSTNAMES'):
    value = os.environ.get(var)
    if value:
      return len([h for h in value.split(',') if h])
  return 1


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  force: bool = False,
  **kwargs: Any,
) -> bool:
  """Joins a multi-process run if there is one; a no-op on one process.

  Calls `jax.distributed.initialize` when an argument gives the run's
  layout, `JAX_COORDINATOR_ADDRESS` is set, a launcher says it started
  several processes (SLURM's `SLURM_NTASKS`, Open MPI's
  `OMPI_COMM_WORLD_SIZE`, a TPU slice's `TPU_WORKER_HOSTNAMES` or
  `TPU_PROCESS_ADDRESSES`), or `force` is set (e.g. on a Cloud TPU VM slice,
  whose hosts JAX finds through the metadata server). Without arguments JAX
  detects the coordinator, the number of processes and this process's index
  itself. Must be called before anything touches a device.

  Args:
    coordinator_address: `host:port` of process 0's coordinator.
    num_processes: processes in the run.
    process_id: this process's index.
    force: initialise even if nothing in the environment says there are
      several processes.
    **kwargs: passed to `jax.distributed.initialize` (e.g.
      `local_device_ids`, `initialization_timeout`).

  Returns:
    True if `jax.distributed.initialize` was called.
  """
  explicit = any(
    v is not None for v in (coordinator_address, num_processes, process_id)
  )
  if not (
    explicit
    or force
    or os.environ.get('JAX_COORDINATOR_ADDRESS')
    or _launcher_process_count() > 1
  ):
    return False
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    **kwargs,
  )
  return True


def is_main_process() -> bool:
  """True on process 0, the one that logs and writes checkpoints."""
  return jax.process_index() == 0
