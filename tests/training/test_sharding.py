"""The step on a mesh: 8 virtual devices, two processes.

The sharded cases need several devices, and JAX fixes the CPU device count when
its backend starts, so they run in one subprocess with 8 virtual CPU devices
(`tests/support/sharding_cases.py` for the library and
`tests/support/sharded_train_cases.py` for the training program, all cases in
one interpreter). The multi-process cases start one driver that forks processes
joining one run on 127.0.0.1 (`tests/support/sharding_multiprocess_worker.py`,
`tests/support/multiprocess_train_worker.py`, `tests/support/forked.py`).
Everything is bounded by timeouts, so a hang fails the test instead of stalling
the suite.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmeta
from jaxmeta import sharding
from jaxmeta.data import episodes

from support import REPO
from support import forked

_SUPPORT = REPO / 'tests' / 'support'


def _env():
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
    [str(REPO)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
  )
  env['JAX_PLATFORMS'] = 'cpu'
  for var in (
    'SLURM_NTASKS',
    'OMPI_COMM_WORLD_SIZE',
    'TPU_WORKER_HOSTNAMES',
    'TPU_PROCESS_ADDRESSES',
    'JAX_COORDINATOR_ADDRESS',
  ):
    env.pop(var, None)
  return env


@pytest.mark.slow
def test_sharded_cases_on_8_virtual_cpu_devices():
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'pytest',
      '-q',
      '-p',
      'no:cacheprovider',
      str(_SUPPORT / 'sharding_cases.py'),
      str(_SUPPORT / 'sharded_train_cases.py'),
    ],
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  output = result.stdout + result.stderr
  assert result.returncode == 0, output
  assert ' passed' in output and 'skipped' not in output, output
  print(output.strip().splitlines()[-1])


def _tiny_run():
  images = jax.random.randint(
    jax.random.key(7), (10, 5, 4, 4, 1), 0, 256, jnp.int32
  ).astype(jnp.uint8)
  learner = jaxmeta.maml(
    jaxmeta.mlp((16, 8, 3)), jaxmeta.classification_loss, 0.3, 1
  )
  optimizer = optax.adam(0.05)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  sample = lambda key, im: episodes.sample_tasks(key, im, 4, 3, 2, 2)
  return learner, optimizer, state, sample, images


def test_the_default_one_device_step_compiles_once():
  """The initial state lies where the step leaves its states (the default
  mesh's one device), so the second call does not compile again."""
  learner, optimizer, state, sample, images = _tiny_run()
  leaf = jax.tree.leaves(state.params)[0]
  assert leaf.sharding.device_set == {jax.local_devices()[0]}
  step = jax.jit(
    jaxmeta.make_meta_train_step(learner, optimizer, sample),
    donate_argnums=0,
  )
  for _ in range(3):
    state, _ = step(state, images)
  assert step._cache_size() == 1
  assert int(state.step) == 3


def test_a_chunk_that_does_not_divide_a_devices_tasks_is_refused():
  learner, optimizer, state, sample, images = _tiny_run()
  mesh = sharding.make_mesh(jax.local_devices()[:1])
  assert sharding.check_divisible(4, mesh, 2) == 4
  with pytest.raises(ValueError, match=r'task_chunk_size=3 .* the 4 tasks'):
    sharding.check_divisible(4, mesh, 3)
  step = jaxmeta.make_meta_train_step(learner, optimizer, sample, 3)
  with pytest.raises(ValueError, match=r'task_chunk_size=3 .* the 4 tasks'):
    step(state, images)


def _launch(script, *args, timeout):
  """Runs a driver of multi-process runs (`tests/support/forked.py`); per run,
  the outputs of its processes, each of which must exit 0."""
  runs = forked.launch(script, *args, timeout=timeout, env=_env())
  for run in runs:
    for status, output in run:
      assert status == 0, output[-4000:]
  return [[output for _, output in run] for run in runs]


@pytest.mark.slow
def test_two_processes_agree_with_one_process(tmp_path):
  num_processes, local_devices = 2, 2
  _launch(
    'sharding_multiprocess_worker.py',
    num_processes,
    local_devices,
    tmp_path,
    timeout=240,
  )

  reference = np.load(tmp_path / 'reference.npz')
  for i in range(num_processes):
    result = np.load(tmp_path / f'process_{i}.npz')
    assert sorted(result.files) == sorted(reference.files)
    for name in reference.files:
      np.testing.assert_allclose(
        result[name],
        reference[name],
        atol=1e-5,
        rtol=0,
        err_msg=f'process {i}: {name}',
      )


def _run_programs(*runs):
  """Runs `(workdir, iterations, num_processes, local_devices)` of the
  training program in turn; per run, the results of its processes."""
  results = []
  for outputs in _launch(
    'multiprocess_train_worker.py',
    *(
      f'{processes},{devices},{iterations},{workdir}'
      for workdir, iterations, processes, devices in runs
    ),
    timeout=240 * len(runs),
  ):
    results.append([])
    for output in outputs:
      line = [x for x in output.splitlines() if x.startswith('RESULTS ')][-1]
      results[-1].append(json.loads(line[len('RESULTS ') :]))
  return results


@pytest.mark.slow
def test_two_processes_run_and_resume_the_training_program(tmp_path):
  """2 processes x 2 devices, stopped after 2 steps and resumed to 4, match
  one process with 4 devices run straight; only process 0 writes files."""
  (reference,), first, results = _run_programs(
    (tmp_path / 'one', 4, 1, 4),
    (tmp_path / 'two', 2, 2, 2),
    (tmp_path / 'two', 4, 2, 2),
  )
  assert [r['iterations'] for r in first] == [2, 2]
  assert [r['resumed_from_step'] for r in results] == [2, 2]
  for r in results:
    np.testing.assert_allclose(r['test_mse'], reference['test_mse'], rtol=1e-4)
    assert r['best_step'] == reference['best_step']
  on_disk = json.loads((tmp_path / 'two' / 'results.json').read_text())
  assert set(on_disk) == set(reference)
  records = [
    json.loads(x)
    for x in (tmp_path / 'two' / 'metrics.jsonl').read_text().splitlines()
  ]
  steps = [r['step'] for r in records if 'train/loss' in r]
  assert steps == [1, 2, 3, 4]  # One writer: no record twice.
