"""Meshes and shardings of the meta-batch: tasks are the unit of work.

The train state and the data every task reads are replicated (`replicate`),
the meta-batch is split over a 1-D mesh (`make_mesh`) along its leading
task axis: `shard_tasks` splits one every process holds whole,
`tasks_from_process_local` builds one from each process's own tasks.
"""

from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from jaxmeta.types import Array, Params, PyTree

TASK_AXIS = 'tasks'


def make_mesh(
  devices: Sequence[jax.Device] | None = None, axis_name: str = TASK_AXIS
) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: `jax.devices()`, of all processes),
  its axis `Auto` (a jitted function reshards other inputs).

  Args:
    devices: the devices, in mesh order.
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


def task_axis(mesh: jax.sharding.Mesh) -> str:
  """The name of the mesh's one axis; a ValueError for any other mesh."""
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
  return NamedSharding(mesh, P(task_axis(mesh)))


def check_divisible(
  num_tasks: int,
  mesh: jax.sharding.Mesh,
  task_chunk_size: int | None = None,
) -> int:
  """Tasks per device, `num_tasks // mesh.size`.

  Args:
    num_tasks: tasks in the (global) meta-batch.
    mesh: the device mesh.
    task_chunk_size: optional chunk of a device's tasks adapted at once;
      if smaller than a device's tasks, it must divide them.

  Raises:
    ValueError: naming the numbers, if the tasks do not divide evenly over
      the devices or the chunk does not divide them.
  """
  num_devices = mesh.size
  if num_tasks < 1 or num_tasks % num_devices:
    raise ValueError(
      f'A meta-batch of {num_tasks} tasks cannot be split evenly over '
      f'{num_devices} devices. Fix: use a meta-batch size that is a '
      f'multiple of {num_devices} (e.g. '
      f'{max(1, -(-num_tasks // num_devices)) * num_devices}).'
    )
  per_device = num_tasks // num_devices
  chunk = task_chunk_size
  if (
    chunk is not None
    and chunk < per_device
    and (chunk < 1 or per_device % chunk)
  ):
    raise ValueError(
      f'task_chunk_size={chunk} must be >= 1 and divide the {per_device} '
      f'tasks of each device ({num_tasks} tasks over {num_devices} devices).'
    )
  return per_device


def per_device(params: Params, axis: str) -> Params:
  """Inside `shard_map`: the replicated parameters as this device's copy,
  so that a task's gradients stay on its device (a gradient with respect to
  a replicated value is summed over the devices)."""
  return jax.lax.pcast(params, axis, to='varying')


def replicate(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  """Puts a full copy of every leaf on every device of `mesh`; in a
  multi-process run every process must pass the same values."""
  return _put(tree, replicated(mesh))


def _put(tree: PyTree, sharding: NamedSharding) -> PyTree:
  """`device_put` that also works when `sharding` spans several processes
  (each builds its own shards from its identical host copy)."""
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
  """Splits a meta-batch (every leaf `[num_tasks, ...]`) that every process
  holds whole over the devices.

  Raises:
    ValueError: if `num_tasks` does not divide by the number of devices.
  """
  check_divisible(jax.tree.leaves(tasks)[0].shape[0], mesh)
  return _put(tasks, task_sharding(mesh))


def tasks_from_process_local(
  local_tasks: PyTree, mesh: jax.sharding.Mesh
) -> PyTree:
  """The global meta-batch `[local_tasks * process_count, ...]`, sharded with
  `task_sharding(mesh)`, whose rows on this process's devices are its own.

  Args:
    local_tasks: a meta-batch pytree held by this process.
    mesh: the device mesh (all processes' devices).

  Returns:
    The global meta-batch.

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
