"""The training program on 8 virtual CPU devices.

Run by `tests/training/test_sharding.py` in the subprocess that has 8 devices
(the device count is fixed when JAX starts its backend); by hand: `pytest
tests/support/sharded_train_cases.py`.
"""

import json

import jax

NUM_DEVICES = 8
try:
  jax.config.update('jax_num_cpu_devices', NUM_DEVICES)
except RuntimeError:  # The backend is already up with its own device count.
  pass

import ml_collections
import chex
import numpy as np
import pytest

from experiments import build
from experiments import config_checks
from support import tiny_runs

if jax.device_count() != NUM_DEVICES:
  pytest.skip(
    f'needs {NUM_DEVICES} CPU devices, JAX has '
    f'{jax.device_count()} (run this file in its own process)',
    allow_module_level=True,
  )


def _one_device_replay(config, workdir, steps):
  """The same steps on a one-device mesh, from the same initial state."""
  built = build.Run(config, str(workdir), None, None, 'train')
  state = jax.device_put(built.init_state(), jax.devices()[0])
  data = built.family.load('train')
  step = build.make_train_step(
    built.learner, built.optimizer, built.family, config, mesh=None
  )
  for _ in range(steps):
    batch = data
    if built.family.sample_host is not None:
      batch = built.family.sample_host(
        jax.random.fold_in(state.key, state.step), data, config.meta_batch_size
      )
    state, _ = step(state, batch)
  built.checkpoints.close()
  return state


@pytest.mark.parametrize(
  'family', ['images', 'sinusoid', 'dropblock', 'host_sampler']
)
def test_sharded_run_matches_one_device_and_resumes(
  tmp_path, tiny_dataset, family
):
  if family in ('images', 'dropblock', 'host_sampler'):

    def make(**o):
      c = tiny_runs.tiny_config(
        tiny_dataset, meta_batch_size=8, eval_batch_size=5, **o
      )
      if family == 'host_sampler':
        c.sampler = 'host'
      if family == 'dropblock':  # Model keys: each task's own DropBlock mask.
        c.backbone = 'resnet12'
        c.model = ml_collections.ConfigDict(
          {'widths': (2, 2, 2), 'drop_rate': 0.5, 'dropblock_size': 1}
        )
      return c

    config = make()
  else:
    config = tiny_runs.tiny_sinusoid(meta_batch_size=8)
    make = lambda **o: tiny_runs.tiny_sinusoid(meta_batch_size=8, **o)
  results = tiny_runs.run(config, tmp_path / 'straight')
  tiny_runs.run(make(num_iterations=2), tmp_path / 'resumed')
  resumed = tiny_runs.run(config, tmp_path / 'resumed')
  assert resumed['resumed_from_step'] == 2
  straight_state, _ = tiny_runs.restore(config, tmp_path / 'straight')
  resumed_state, _ = tiny_runs.restore(config, tmp_path / 'resumed')
  chex.assert_trees_all_equal(straight_state, resumed_state)
  assert straight_state.params is not None
  sharded_leaf = jax.tree.leaves(straight_state.params)[0]
  assert len(sharded_leaf.sharding.device_set) == NUM_DEVICES
  replay = _one_device_replay(config, tmp_path / 'replay', 4)
  chex.assert_trees_all_close(
    jax.device_get(straight_state.params),
    jax.device_get(replay.params),
    atol=1e-5,
    rtol=1e-5,
  )
  on_disk = json.loads((tmp_path / 'straight' / 'results.json').read_text())
  assert set(on_disk) == set(results)
  metric = 'mse' if family == 'sinusoid' else 'accuracy'
  assert {
    f'test_{metric}',
    'test_ci95',
    f'best_val_{metric}',
    'steps_per_second',
    'iterations',
  } <= set(on_disk)
  assert np.isfinite(on_disk[f'test_{metric}'])


def test_a_meta_batch_that_does_not_divide_is_refused(tmp_path, tiny_dataset):
  with pytest.raises(config_checks.ConfigError, match=r'12 tasks .* 8 devices'):
    tiny_runs.run(
      tiny_runs.tiny_config(tiny_dataset, meta_batch_size=12), tmp_path
    )
