"""jaxmeta.distributed: joining a multi-process run only when there is one."""

import jax
import pytest

from jaxmeta import distributed


def test_initialize_distributed_is_a_no_op_on_one_process(monkeypatch):
  for var in (
    'SLURM_NTASKS',
    'OMPI_COMM_WORLD_SIZE',
    'TPU_WORKER_HOSTNAMES',
    'TPU_PROCESS_ADDRESSES',
    'JAX_COORDINATOR_ADDRESS',
  ):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv('SLURM_NTASKS', '1')  # A one-task SLURM job.

  def fail(**kwargs):
    raise AssertionError(f'initialize called with {kwargs}')

  monkeypatch.setattr(jax.distributed, 'initialize', fail)
  assert not distributed.initialize_distributed()
  assert distributed.is_main_process()


@pytest.mark.parametrize(
  'var, value',
  [
    ('SLURM_NTASKS', '4'),
    ('OMPI_COMM_WORLD_SIZE', '2'),
    ('TPU_WORKER_HOSTNAMES', 'host-0,host-1'),
    ('JAX_COORDINATOR_ADDRESS', '10.0.0.1:1234'),
  ],
)
def test_initialize_distributed_lets_jax_detect_a_launcher(
  monkeypatch, var, value
):
  for name in (
    'SLURM_NTASKS',
    'OMPI_COMM_WORLD_SIZE',
    'TPU_WORKER_HOSTNAMES',
    'TPU_PROCESS_ADDRESSES',
    'JAX_COORDINATOR_ADDRESS',
  ):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv(var, value)
  calls = []
  monkeypatch.setattr(
    jax.distributed, 'initialize', lambda **kwargs: calls.append(kwargs)
  )
  assert distributed.initialize_distributed()
  # No layout passed: JAX's cluster detection fills it in.
  assert calls == [
    dict(coordinator_address=None, num_processes=None, process_id=None)
  ]
