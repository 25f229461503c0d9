"""Joining a multi-process run (`initialize_distributed`, before anything
touches a device) and the main process that logs (`is_main_process`).
"""

import os
from typing import Any

import jax

# Environment variables in which a launcher says how many processes it
# started; JAX's own cluster detection then finds the rest.
_PROCESS_COUNT_VARS = (
  'SLURM_NTASKS',  # SLURM (srun).
  'OMPI_COMM_WORLD_SIZE',  # Open MPI (mpirun).
)


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

  Calls `jax.distributed.initialize` if an argument, `JAX_COORDINATOR_ADDRESS`,
  a launcher (SLURM, Open MPI, a TPU slice) or `force` (a Cloud TPU VM
  slice) says there are several processes; before anything touches a device.

  Args:
    coordinator_address: `host:port` of process 0's coordinator.
    num_processes: processes in the run.
    process_id: this process's index.
    force: initialise whatever the environment says.
    **kwargs: passed to `jax.distributed.initialize`.

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
