"""jaxmeta.models.rematerialised: the same derivatives, less memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmeta
from jaxmeta.models import conv4
from jaxmeta.models import per_step_batch_norm
from jaxmeta.models import REMAT_POLICIES
from jaxmeta.models import rematerialised
from jaxmeta.models import resnet12
from experiments.benchmark import xla_costs

WAYS = 3


def _loss(model, params, x, y, key, step):
  logits = model.apply(params, x, key=key, step=step)
  return -jnp.mean(
    jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)
  )


def _maml_meta_gradient(model, num_steps, inner_lr=0.1):
  """Second-order MAML written out: `num_steps` scanned inner SGD steps on
  the support set, the query loss after them, its gradient with respect to
  the initial parameters, vmapped over tasks (one key per task)."""

  def meta_loss(params, support_x, support_y, query_x, query_y, key):
    def inner_step(p, step):
      grads = jax.grad(_loss, argnums=1)(
        model, p, support_x, support_y, jax.random.fold_in(key, step), step
      )
      return jax.tree.map(lambda a, g: a - inner_lr * g, p, grads), None

    adapted, _ = jax.lax.scan(inner_step, params, jnp.arange(num_steps))
    return _loss(model, adapted, query_x, query_y, key, num_steps - 1)

  per_task = jax.grad(meta_loss)
  return jax.vmap(per_task, in_axes=(None, 0, 0, 0, 0, 0))


def _tasks(shape, dtype, num_tasks=2, shots=1, queries=2):
  keys = jax.random.split(jax.random.key(7), 3)
  support = WAYS * shots
  query = WAYS * queries
  labels = lambda n: jnp.tile(jnp.arange(n) % WAYS, (num_tasks, 1))
  return (
    jax.random.normal(keys[0], (num_tasks, support) + shape, dtype),
    labels(support),
    jax.random.normal(keys[1], (num_tasks, query) + shape, dtype),
    labels(query),
    jax.random.split(keys[2], num_tasks),
  )


MODELS = {
  # Per-step batch norm: the step index reaches the model as a traced value
  # of the scan, closed over by the recomputed function.
  'conv4': lambda: per_step_batch_norm(
    conv4(WAYS, (16, 16, 1), num_filters=4), num_steps=2
  ),
  # DropBlock: the key selects the masks, which recomputation must repeat.
  'resnet12': lambda: resnet12(
    WAYS, (16, 16, 3), widths=(4, 4, 6, 6), drop_rate=0.2, dropblock_size=2
  ),
}


@pytest.mark.parametrize(
  'name,policy',
  [
    ('conv4', 'dots'),
    # Each compiles a second-order step for 20 to 40 s: the slow tier.
    pytest.param('conv4', 'full', marks=pytest.mark.slow),
    pytest.param('resnet12', 'full', marks=pytest.mark.slow),
  ],
)
def test_second_order_maml_meta_gradient_is_unchanged(name, policy):
  model = MODELS[name]()
  shape = (16, 16, 1) if name == 'conv4' else (16, 16, 3)
  with jax.enable_x64(True):
    params = jax.tree.map(
      lambda a: jnp.asarray(a, jnp.float64), model.init(jax.random.key(0))
    )
    tasks = _tasks(shape, jnp.float64)
    expected = jax.jit(_maml_meta_gradient(model, 2))(params, *tasks)
    got = jax.jit(_maml_meta_gradient(rematerialised(model, policy), 2))(
      params, *tasks
    )
    jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-10, atol=1e-12),
      got,
      expected,
    )
    # The gradient is not trivially zero: the comparison means something.
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(got)) > 0


def test_embed_is_unchanged_and_forward_kept():
  model = conv4(WAYS, (16, 16, 1), num_filters=4)
  remat = rematerialised(model)
  params = model.init(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 1))
  embed_grad = lambda m: jax.jit(
    jax.grad(lambda p: jnp.sum(m.embed(p, x) ** 2))
  )
  np.testing.assert_allclose(
    jax.jit(remat.embed)(params, x), jax.jit(model.embed)(params, x), rtol=1e-6
  )
  jax.tree.map(
    functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
    embed_grad(remat)(params),
    embed_grad(model)(params),
  )
  assert remat.forward is model.forward
  assert remat.feature_dim == model.feature_dim
  assert remat.init is model.init
  assert remat.batch_norm == model.batch_norm


def test_a_model_without_embed_keeps_none():
  model = jaxmeta.Model(
    lambda key: {'w': jnp.ones((2, 2))},
    lambda params, x, *, key=None, step=None: x @ params['w'],
  )
  assert rematerialised(model).embed is None


@pytest.mark.slow  # Compiles two ResNet-12 second-order steps (~50 s).
def test_second_order_step_needs_less_memory():
  """XLA's buffer assignment of the scanned second-order step: with every
  inner step recomputed in the backward pass, the program keeps a few
  parameter-sized values per step instead of the step's activations."""
  model = resnet12(WAYS, (16, 16, 3), widths=(4, 4, 4, 4), drop_rate=0.0)
  params = jax.eval_shape(model.init, jax.random.key(0))
  tasks = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
    _tasks((16, 16, 3), jnp.float32, num_tasks=1, shots=2, queries=2),
  )

  def temp_bytes(m):
    gradient = lambda p, *task: jax.tree.map(
      lambda g: g[0],
      _maml_meta_gradient(m, 3)(p, *jax.tree.map(lambda a: a[None], task)),
    )
    compiled = jax.jit(gradient).lower(params, *tasks).compile()
    return xla_costs.compiled_costs(compiled)['temp_bytes']

  plain, recomputed = temp_bytes(model), temp_bytes(rematerialised(model))
  assert recomputed < plain, (recomputed, plain)


def test_unknown_policy_names_the_valid_ones():
  model = conv4(WAYS, (16, 16, 1), num_filters=4)
  with pytest.raises(ValueError, match="'full', 'dots'"):
    rematerialised(model, 'everything')
  with pytest.raises(ValueError, match='policy must be'):
    rematerialised(model, 3)
  # A jax.checkpoint_policies policy is accepted as it is.
  rematerialised(model, jax.checkpoint_policies.everything_saveable)
  assert set(REMAT_POLICIES) >= {'full', 'dots'}


def _sinusoid_config(**overrides):
  from experiments.configs import sinusoid

  config = sinusoid.get_config()
  config.update(overrides)
  return config


def test_config_remat_gives_the_same_meta_gradient():
  from experiments import build
  from experiments import tasks

  def meta_gradient(config):
    family = tasks.build(config)
    learner = build.build_learner(config, family, (1,))
    params = learner.init(jax.random.key(0))
    task = family.sample(jax.random.key(1), None, True)
    return jax.jit(learner.task_update)(params, task)[0]

  config = _sinusoid_config(inner_steps=2)
  with jax.enable_x64(True):
    expected = meta_gradient(config)
    got = meta_gradient(_sinusoid_config(inner_steps=2, remat='full'))
    jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-8),
      got,
      expected,
    )


@pytest.mark.parametrize(
  'overrides,message',
  [
    (dict(remat='some'), r"Unknown config.remat 'some'. Fix: --config.remat="),
    (
      dict(
        remat='full',
        backbone='conv4',
        model={'num_filters': 4},
        batch_norm='support',
      ),
      "recomputes the transductive forward pass only, not batch_norm='support'",
    ),
  ],
)
def test_bad_config_remat_is_one_config_error(overrides, message):
  from experiments import build
  from experiments import config_checks
  from experiments import tasks

  config = _sinusoid_config()
  overrides = dict(overrides)
  model = overrides.pop('model', None)
  config.update(overrides)
  if model is not None:
    config.model = model  # Replaced, not merged with the MLP's options.
  with pytest.raises(config_checks.ConfigError, match=message):
    build.build_learner(config, tasks.build(config), (16, 16, 1))
