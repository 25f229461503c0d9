"""The running batch-norm statistics as `MetaTrainState.model_state`: out of
the optimiser and its weight decay, the same numbers as statistics kept in
the parameters, and checkpoints of that earlier layout read back."""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmeta
from experiments import checkpoints as checkpoints_lib
from jaxmeta.algorithms import normalised_learner
from jaxmeta.algorithms import STATISTICS_METRIC
from jaxmeta.types import Array, Params, PRNGKey, Task

WAYS, SIZE = 3, 8


def _learner(name='maml', mode='running', momentum=0.3):
  model = jaxmeta.conv4(
    WAYS, (SIZE, SIZE, 1), num_filters=4, num_blocks=2, batch_norm=mode
  )
  build = lambda m: jaxmeta.make_learner(
    name, m, jaxmeta.classification_loss, 0.1, 1
  )
  return normalised_learner(build, model, momentum, num_inner_steps=1)


def _tasks(key, num_tasks=2):
  def one(key):
    k1, k2 = jax.random.split(key)
    labels = jnp.repeat(jnp.arange(WAYS), 2)
    return Task(
      jax.random.uniform(k1, (WAYS * 2, SIZE, SIZE, 1)),
      labels,
      jax.random.uniform(k2, (WAYS * 2, SIZE, SIZE, 1)),
      labels,
    )

  return jax.vmap(one)(jax.random.split(key, num_tasks))


def test_split_and_merge_are_inverse_at_any_depth():
  stats = {'conv0': {'mean': jnp.zeros(2), 'var': jnp.ones(2)}}
  top = {'conv0': {'w': jnp.ones(3)}, 'batch_stats': stats}
  nested = {'model': top, 'lr': {'w': jnp.ones(3)}}
  for params, state in [
    (top, {'batch_stats': stats}),
    (nested, {'model': {'batch_stats': stats}}),
    ({'conv0': {'w': jnp.ones(3)}}, {}),
  ]:
    trainable, model_state = jaxmeta.split_model_state(params)
    assert 'batch_stats' not in str(jax.tree.structure(trainable))
    assert jax.tree.structure(model_state) == jax.tree.structure(state)
    merged = jaxmeta.merge_model_state(trainable, model_state)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, merged, params)


def _old_step(learner, optimizer, params, opt_state, tasks):
  """A meta-step with the statistics inside the parameters: the optimiser
  over all of them (the statistics' gradient zero), then their running
  average."""
  grad, metrics = jaxmeta.meta_gradient(learner, params, tasks)
  updates, opt_state = optimizer.update(grad, opt_state, params)
  params = optax.apply_updates(params, updates)
  if learner.update_state is None:
    return params, opt_state
  trainable, model_state = jaxmeta.split_model_state(params)
  model_state = learner.update_state(model_state, metrics[STATISTICS_METRIC])
  return jaxmeta.merge_model_state(trainable, model_state), opt_state


@pytest.mark.parametrize(
  'name, mode',
  [
    ('maml', 'running'),  # Statistics at the top of the parameters.
    pytest.param('meta_sgd', 'running', marks=pytest.mark.slow),  # 'model'.
    ('maml', 'transductive'),  # No model state.
  ],
)
def test_the_same_numbers_as_statistics_in_the_parameters(name, mode):
  learner = _learner(name, mode)
  optimizer = optax.adam(0.05)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  assert bool(state.model_state) == (mode == 'running')
  params = learner.init(jax.random.split(jax.random.key(0))[0])
  opt_state = optimizer.init(params)
  jax.tree.map(np.testing.assert_array_equal, state.merged_params(), params)
  step = jax.jit(jaxmeta.make_meta_train_step(learner, optimizer))
  old_step = jax.jit(_old_step, static_argnums=(0, 1))
  for t in range(3):
    tasks = _tasks(jax.random.key(t))
    state, _ = step(state, tasks)
    params, opt_state = old_step(learner, optimizer, params, opt_state, tasks)
    jax.tree.map(np.testing.assert_array_equal, state.merged_params(), params)
  if mode == 'running':  # The statistics moved.
    initial = jaxmeta.split_model_state(learner.init(jax.random.key(0)))[1]
    assert not np.allclose(
      jax.tree.leaves(state.model_state)[-1], jax.tree.leaves(initial)[-1]
    )


def test_the_optimiser_state_holds_no_statistics():
  learner = _learner('meta_sgd')
  optimizer = optax.adam(0.05)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  expected = optimizer.init(state.params)
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(expected)
  assert [v.shape for v in jax.tree.leaves(state.opt_state)] == [
    v.shape for v in jax.tree.leaves(expected)
  ]
  assert 'batch_stats' not in str(jax.tree.structure(state.opt_state))
  assert 'batch_stats' not in str(jax.tree.structure(state.params))


@pytest.mark.slow
def test_weight_decay_does_not_move_the_running_statistics():
  learner = _learner()
  tasks = _tasks(jax.random.key(1))
  decayed = optax.adamw(0.1, weight_decay=0.5)
  still = optax.sgd(0.0)
  a = jaxmeta.init_train_state(learner, decayed, jax.random.key(0))
  b = jaxmeta.init_train_state(learner, still, jax.random.key(0))
  a, _ = jaxmeta.meta_train_step(learner, decayed, a, tasks)
  b, _ = jaxmeta.meta_train_step(learner, still, b, tasks)
  # Only the running average moved them: the same as without an optimiser.
  jax.tree.map(np.testing.assert_array_equal, a.model_state, b.model_state)
  assert not np.allclose(a.params['conv0']['scale'], b.params['conv0']['scale'])
  # Kept in the parameters, weight decay would have moved them too.
  params = learner.init(jax.random.split(jax.random.key(0))[0])
  old, _ = _old_step(learner, decayed, params, decayed.init(params), tasks)
  moved = old['batch_stats']['conv0']['var']
  assert not np.allclose(moved, a.model_state['batch_stats']['conv0']['var'])


class _StateWithoutModelState(flax.struct.PyTreeNode):
  """The train state's layout with the statistics inside the parameters."""

  step: Array
  params: Params
  opt_state: optax.OptState
  key: PRNGKey


@pytest.mark.parametrize(
  'name, mode', [('meta_sgd', 'running'), ('maml', 'transductive')]
)
def test_a_checkpoint_without_model_state_is_read_into_it(tmp_path, name, mode):
  learner = _learner(name, mode)
  optimizer = optax.adam(0.05)
  tasks = _tasks(jax.random.key(2))
  params = learner.init(jax.random.split(jax.random.key(0))[0])
  opt_state = optimizer.init(params)
  params, opt_state = jax.jit(_old_step, static_argnums=(0, 1))(
    learner, optimizer, params, opt_state, tasks
  )
  old = _StateWithoutModelState(
    jnp.int32(1), params, opt_state, jax.random.key(7)
  )
  saved = checkpoints_lib.Checkpoints(tmp_path, 2, 'val_accuracy', True)
  saved.save(1, old, {'config': {}}, val_metric=0.5)
  saved.close()
  like = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))
  checkpoints = checkpoints_lib.Checkpoints(
    tmp_path, 2, 'val_accuracy', True, read_only=True
  )
  step, state, meta = checkpoints.restore_best_readable(like)
  assert step == 1 and meta == {'config': {}}
  assert int(state.step) == 1
  np.testing.assert_array_equal(
    jax.random.key_data(state.key), jax.random.key_data(old.key)
  )
  jax.tree.map(np.testing.assert_array_equal, state.merged_params(), params)
  trainable, model_state = jaxmeta.split_model_state(params)
  assert jax.tree.structure(state.model_state) == jax.tree.structure(
    model_state
  )
  # The optimiser's state of the trainable parameters, as the old one held.
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(
    like.opt_state
  )
  by_path = dict(jax.tree_util.tree_leaves_with_path(opt_state))
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state):
    np.testing.assert_array_equal(leaf, by_path[path])
  # And the run goes on from it as it would have.
  step = jax.jit(jaxmeta.make_meta_train_step(learner, optimizer))
  new, _ = step(state, tasks)
  ref, _ = jax.jit(_old_step, static_argnums=(0, 1))(
    learner, optimizer, params, opt_state, tasks
  )
  jax.tree.map(np.testing.assert_array_equal, new.merged_params(), ref)
  checkpoints.close()
