"""The meta-step and evaluation on a mesh of 8 virtual CPU devices.

Run by `tests/training/test_sharding.py` in a subprocess (the device count is
fixed when JAX starts its backend, so it cannot be changed inside a test
session that has already used JAX); by hand: `pytest
tests/support/sharding_cases.py`.
"""

import functools
import re

import jax

NUM_DEVICES = 8
try:
  jax.config.update('jax_num_cpu_devices', NUM_DEVICES)
except RuntimeError:  # The backend is already up with its own device count.
  pass

import chex
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmeta
from jaxmeta import sharding
from experiments.benchmark import xla_costs
from jaxmeta.data import episodes

if jax.device_count() != NUM_DEVICES:
  pytest.skip(
    f'needs {NUM_DEVICES} CPU devices, JAX has '
    f'{jax.device_count()} (run this file in its own process)',
    allow_module_level=True,
  )

META_BATCH = 16  # 2 tasks per device, so task_chunk_size=1 makes 2 chunks.
SHAPE = dict(ways=3, shots=2, queries=2)
ALGORITHM_NAMES = ('maml', 'fomaml', 'reptile', 'pretrain')


def _images():
  # uint8 [classes, drawings, 4, 4, 1]: 10 classes, 5 drawings each.
  return jax.random.randint(
    jax.random.key(7), (10, 5, 4, 4, 1), 0, 256, jnp.int32
  ).astype(jnp.uint8)


def _setup(name):
  model = jaxmeta.mlp((16, 8, SHAPE['ways']))
  learner = jaxmeta.make_learner(
    name, model, jaxmeta.classification_loss, inner_lr=0.3, num_inner_steps=2
  )
  optimizer = optax.adam(0.05)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  return learner, optimizer, state


@pytest.fixture(scope='module')
def mesh():
  return sharding.make_mesh()


@pytest.fixture(scope='module')
def tasks():
  return episodes.sample_tasks(
    jax.random.key(3), _images(), META_BATCH, **SHAPE
  )


@functools.cache
def _reference_step(name):
  """The step on its default one-device mesh, jitted (one per algorithm)."""
  learner, optimizer, _ = _setup(name)
  return jax.jit(jaxmeta.make_meta_train_step(learner, optimizer))


@functools.cache
def _sharded(name, task_chunk_size):
  """(compiled sharded step, state after one step, metrics)."""
  learner, optimizer, state = _setup(name)
  mesh_ = sharding.make_mesh()
  tasks_ = sharding.shard_tasks(
    episodes.sample_tasks(jax.random.key(3), _images(), META_BATCH, **SHAPE),
    mesh_,
  )
  state = sharding.replicate(state, mesh_)
  step = jax.jit(
    jaxmeta.make_meta_train_step(
      learner, optimizer, task_chunk_size=task_chunk_size, mesh=mesh_
    )
  )
  compiled = step.lower(state, tasks_).compile()
  new_state, metrics = compiled(state, tasks_)
  return compiled, new_state, metrics


@pytest.mark.parametrize('task_chunk_size', [None, 1])
@pytest.mark.parametrize('name', ALGORITHM_NAMES)
def test_sharded_step_matches_single_device_step(name, task_chunk_size, tasks):
  _, _, state = _setup(name)
  expected_state, expected_metrics = _reference_step(name)(state, tasks)
  _, new_state, metrics = _sharded(name, task_chunk_size)
  chex.assert_trees_all_close(
    new_state.params, expected_state.params, atol=1e-5, rtol=0
  )
  chex.assert_trees_all_close(
    new_state.opt_state, expected_state.opt_state, atol=1e-5, rtol=1e-5
  )
  chex.assert_trees_all_close(metrics, expected_metrics, atol=1e-5, rtol=1e-5)
  assert int(new_state.step) == 1
  # Parameters moved: the comparison is not between two untouched states.
  moved = jax.tree.map(
    lambda a, b: float(np.max(np.abs(a - b))),
    *jax.device_get((new_state.params, state.params)),
  )
  assert max(jax.tree.leaves(moved)) > 1e-3


def test_running_statistics_are_averaged_over_every_device(mesh, tasks):
  # Each device's tasks' statistics travel with the metrics' all-reduce.
  model = jaxmeta.conv4(
    SHAPE['ways'],
    (4, 4, 1),
    num_filters=4,
    num_blocks=2,
    batch_norm='running',
  )
  learner = jaxmeta.normalised_learner(
    lambda m: jaxmeta.make_learner(
      'maml', m, jaxmeta.classification_loss, 0.3, 1
    ),
    model,
    momentum=0.5,
    num_inner_steps=1,
  )
  optimizer = optax.adam(0.05)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  expected, _ = jax.jit(jaxmeta.make_meta_train_step(learner, optimizer))(
    state, tasks
  )
  step = jax.jit(jaxmeta.make_meta_train_step(learner, optimizer, mesh=mesh))
  new, _ = step(
    sharding.replicate(state, mesh), sharding.shard_tasks(tasks, mesh)
  )
  chex.assert_trees_all_close(
    new.merged_params(), expected.merged_params(), atol=1e-5, rtol=1e-5
  )
  moved = new.model_state['batch_stats']['conv1']['var'] - 1.0
  assert float(jnp.max(jnp.abs(moved))) > 1e-3


def _shapes(text):
  """['f32[4,5]', 'f32[]', ...] from an HLO shape string, layouts dropped."""
  return [
    f'{t}[{d}]' for t, d in re.findall(r'\b([a-z]+\d*)\[([\d,]*)\]', text)
  ]


_COLLECTIVE = re.compile(
  r'=\s*(.*?)\s+(all-reduce|all-reduce-start|all-gather|all-gather-start|'
  r'reduce-scatter|collective-permute|collective-permute-start|all-to-all|'
  r'collective-broadcast)\('
)
_HOST_TRANSFER = re.compile(
  r'\s(infeed|outfeed|send|send-done|recv|recv-done)\(|'
  r'custom_call_target="[^"]*(callback|host)[^"]*"',
  re.IGNORECASE,
)


@pytest.mark.parametrize('task_chunk_size', [None, 1])
@pytest.mark.parametrize('name', ALGORITHM_NAMES)
def test_one_all_reduce_of_gradient_and_metrics_no_host_transfer(
  name, task_chunk_size
):
  """The compiled step's only collective is ONE all-reduce.

  Counted: every collective instruction in the optimised HLO of the whole
  program, nested computations (the scan's while body) included. Expected:
  a single all-reduce whose operands are the gradient's leaves and the
  metrics' scalars (the `pmean` of the pair), nothing inside the inner loops.
  """
  compiled, new_state, metrics = _sharded(name, task_chunk_size)
  hlo = compiled.as_text()
  collectives = _COLLECTIVE.findall(hlo)
  assert [op for _, op in collectives] == ['all-reduce'], collectives
  reduced = sorted(_shapes(collectives[0][0]))
  expected = sorted(
    [
      f'f32[{",".join(map(str, p.shape))}]'
      for p in jax.tree.leaves(new_state.params)
    ]
    + ['f32[]'] * (len(metrics) - 1)
  )  # meta_grad_norm: after the mean.
  assert reduced == expected
  assert not _HOST_TRANSFER.search(hlo), _HOST_TRANSFER.search(hlo)
  costs = xla_costs.compiled_costs(compiled)
  assert (costs['all_reduce_count'], costs['other_collective_count']) == (1, 0)
  assert costs['all_reduce_bytes'] == 4 * (
    sum(p.size for p in jax.tree.leaves(new_state.params)) + len(metrics) - 1
  )


def test_state_and_metrics_come_back_replicated(mesh):
  _, new_state, metrics = _sharded('maml', None)
  for leaf in jax.tree.leaves((new_state, metrics)):
    assert leaf.sharding.is_fully_replicated
    assert len(leaf.sharding.device_set) == NUM_DEVICES


def _sample_tasks(key, images, num_tasks=META_BATCH):
  return episodes.sample_tasks(key, images, num_tasks, **SHAPE)


def test_each_device_draws_only_its_own_tasks(mesh):
  """The sampler's meta-batch is drawn split over the devices: the
  per-device program holds the images of its 2 tasks, never all 16."""
  learner, optimizer, state = _setup('maml')
  step = jax.jit(
    jaxmeta.make_meta_train_step(learner, optimizer, _sample_tasks, mesh=mesh)
  )
  hlo = (
    step.lower(
      sharding.replicate(state, mesh), sharding.replicate(_images(), mesh)
    )
    .compile()
    .as_text()
  )
  shapes = set(_shapes(hlo))
  support = [SHAPE['ways'] * SHAPE['shots'], 4, 4, 1]  # Per task.
  per_device = 'f32[{}]'.format(','.join(map(str, [2] + support)))
  whole = 'f32[{}]'.format(','.join(map(str, [META_BATCH] + support)))
  assert per_device in shapes, sorted(shapes)
  assert whole not in shapes
  assert not _HOST_TRANSFER.search(hlo)


def test_sampling_step_draws_the_tasks_of_the_one_device_step(mesh):
  learner, optimizer, state = _setup('maml')
  images = _images()
  reference = jax.jit(
    jaxmeta.make_meta_train_step(learner, optimizer, _sample_tasks)
  )
  step = jax.jit(
    jaxmeta.make_meta_train_step(
      learner, optimizer, _sample_tasks, task_chunk_size=1, mesh=mesh
    )
  )
  expected, sharded = state, sharding.replicate(state, mesh)
  sharded_images = sharding.replicate(images, mesh)
  for _ in range(2):
    expected, expected_metrics = reference(expected, images)
    sharded, metrics = step(sharded, sharded_images)
  chex.assert_trees_all_close(
    sharded.params, expected.params, atol=1e-5, rtol=0
  )
  chex.assert_trees_all_close(metrics, expected_metrics, atol=1e-5, rtol=1e-5)


def test_sharded_evaluate_matches_the_one_device_evaluate(mesh, tasks):
  learner, _, state = _setup('maml')
  expected = jax.jit(jaxmeta.make_evaluate(learner, 3))(state.params, tasks)
  evaluate = jax.jit(jaxmeta.make_evaluate(learner, 3, mesh=mesh))
  args = (
    sharding.replicate(state.params, mesh),
    sharding.shard_tasks(tasks, mesh),
  )
  compiled = evaluate.lower(*args).compile()
  metrics = compiled(*args)
  chex.assert_trees_all_close(metrics, expected, atol=1e-5, rtol=1e-5)
  assert metrics['accuracy'].sharding.is_equivalent_to(
    sharding.task_sharding(mesh), 1
  )
  assert not _COLLECTIVE.findall(compiled.as_text())


def test_meta_batch_not_divisible_by_devices_is_a_clear_error(mesh, tasks):
  learner, optimizer, state = _setup('maml')
  state, images = sharding.replicate(state, mesh), _images()
  odd = jax.tree.map(lambda v: v[:12], tasks)
  step = jaxmeta.make_meta_train_step(learner, optimizer, mesh=mesh)
  message = r'12 tasks cannot be split evenly over 8 devices'
  with pytest.raises(ValueError, match=message):
    jax.jit(step)(state, odd)
  with pytest.raises(ValueError, match=message):
    sharding.shard_tasks(odd, mesh)
  sample_12 = functools.partial(_sample_tasks, num_tasks=12)
  with pytest.raises(ValueError, match=message):
    jaxmeta.make_meta_train_step(learner, optimizer, sample_12, mesh=mesh)(
      state, images
    )
  with pytest.raises(ValueError, match=message):
    jaxmeta.make_evaluate(learner, 1, mesh=mesh)(state.params, odd)
  sample_48 = functools.partial(_sample_tasks, num_tasks=48)
  with pytest.raises(ValueError, match=r'task_chunk_size=4 .* the 6 tasks'):
    jaxmeta.make_meta_train_step(
      learner, optimizer, sample_48, task_chunk_size=4, mesh=mesh
    )(state, images)
