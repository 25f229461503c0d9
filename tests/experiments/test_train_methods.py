"""The methods with a body and a head through the experiment harness: every
method trains and is evaluated end to end, and the config fields they bring
(`method`, `train_ways`, `batch_size`, `meta_lr_schedule`) are checked."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import tasks
from experiments import build
from experiments import config_checks
from support.tiny_runs import restore
from support.tiny_runs import run
from support.tiny_runs import tiny_config
from support.tiny_runs import TINY_MODEL_OPTIONS

METHODS = (
  'anil',
  'meta_sgd',
  'maml_plus_plus',
  'protonet',
  'baseline',
  'baseline_plus_plus',
)


# The quick tier keeps ANIL (a head-only inner loop), Meta-SGD (learned inner
# rates) and Baseline++ (minibatch pretraining) on Conv-4; MAML++ trains
# through the harness in the sinusoid test, ProtoNets in the test of more
# training ways.
_QUICK = ('anil', 'meta_sgd', 'baseline_plus_plus')


@pytest.mark.parametrize(
  'backbone, algorithm',
  [
    pytest.param(
      backbone,
      algorithm,
      marks=()
      if backbone == 'conv4' and algorithm in _QUICK
      else pytest.mark.slow,
    )
    for backbone in ('conv4', 'resnet12')
    for algorithm in METHODS
  ],
)
def test_every_method_trains_and_evaluates(
  tmp_path, tiny_dataset, algorithm, backbone
):
  config = tiny_config(tiny_dataset, algorithm=algorithm, backbone=backbone)
  config.model = ml_collections.ConfigDict(TINY_MODEL_OPTIONS[backbone])
  config.batch_size = 8
  results = run(config, tmp_path)
  assert results['iterations'] == 4 and results['algorithm'] == algorithm
  assert 0.0 <= results['test_accuracy'] <= 1.0
  assert len(results['test_accuracy_by_step']) == 3
  state, _ = restore(config, tmp_path)
  assert int(state.step) == 4
  assert jax.tree.structure(state.params) == jax.tree.structure(
    build.Run(config, str(tmp_path), None, None, 'train').init_state().params
  )


def test_methods_that_need_a_body_refuse_the_mlp_backbone(
  tmp_path, tiny_dataset
):
  config = tiny_config(tiny_dataset, algorithm='anil', backbone='mlp')
  config.model = ml_collections.ConfigDict(TINY_MODEL_OPTIONS['mlp'])
  with pytest.raises(config_checks.ConfigError, match='body and a head'):
    run(config, tmp_path)


def test_method_options_reach_the_builder_and_unknown_ones_are_refused(
  tmp_path, tiny_dataset
):
  config = tiny_config(tiny_dataset, algorithm='maml_plus_plus')
  config.method = ml_collections.ConfigDict(
    {'per_step_lr': False, 'per_step_bn': False, 'multi_step_loss': False}
  )
  built = build.Run(config, str(tmp_path / 'a'), None, None, 'train')
  params = built.init_state().params
  assert params['inner'] == {}
  assert params['model']['conv0']['scale'].ndim == 1
  config.method = ml_collections.ConfigDict({'msl_epochs': 3})
  with pytest.raises(config_checks.ConfigError, match='msl_epochs'):
    config_checks.validate(config)


def test_protonet_trains_with_more_ways_than_it_is_tested_on(
  tmp_path, tiny_dataset
):
  config = tiny_config(tiny_dataset, algorithm='protonet', train_ways=5)
  family = tasks.build(config)
  task = family.sample(jax.random.key(0), family.load('train'), True)
  assert task.support_y.shape == (5,) and int(task.support_y.max()) == 4
  task = family.sample(jax.random.key(0), family.load('val'), False)
  assert task.support_y.shape == (3,)
  results = run(config, tmp_path)
  assert results['iterations'] == 4


def test_train_ways_is_refused_for_methods_with_a_ways_wide_head(
  tmp_path, tiny_dataset
):
  config = tiny_config(tiny_dataset, algorithm='maml', train_ways=5)
  with pytest.raises(config_checks.ConfigError, match='train_ways'):
    run(config, tmp_path)


def test_baseline_pretrains_on_minibatches_of_all_training_classes(
  tmp_path, tiny_dataset
):
  config = tiny_config(tiny_dataset, algorithm='baseline', batch_size=16)
  built = build.Run(config, str(tmp_path), None, None, 'train')
  num_classes = built.load('train').shape[0]
  # The pretraining head spans every training class; evaluation fits a
  # head of `ways` outputs.
  params = built.init_state().params
  assert params['head']['w'].shape[1] == num_classes
  batch = built.family.sample_batch(jax.random.key(1), built.load('train'), 16)
  assert batch.support_x.shape[0] == 16 and batch.query_x.shape[0] == 0
  assert (
    0 <= int(batch.support_y.min()) and int(batch.support_y.max()) < num_classes
  )
  # The batch holds the images of the classes its labels name.
  images = np.asarray(built.load('train'))
  for x, y in zip(np.asarray(batch.support_x), np.asarray(batch.support_y)):
    matches = np.all(
      np.isclose(images[y].astype(np.float32) / 255.0, x[None]), axis=(1, 2, 3)
    )
    assert matches.any()
  evaluate = jax.jit(built.learner.evaluate, static_argnums=2)
  metrics = evaluate(
    params, built.family.sample(jax.random.key(2), built.load('val'), False), 3
  )
  assert metrics['accuracy_by_step'].shape == (4,)


def test_baseline_refuses_the_host_sampler(tmp_path, tiny_dataset):
  config = tiny_config(tiny_dataset, algorithm='baseline', sampler='host')
  with pytest.raises(config_checks.ConfigError, match='minibatches'):
    run(config, tmp_path)


def test_cosine_meta_learning_rate_schedule():
  config = tiny_config(
    'omniglot',
    meta_lr=1e-3,
    meta_lr_final=1e-5,
    meta_lr_schedule='cosine',
    num_iterations=100,
    meta_optimizer='sgd',
  )
  optimizer = build.build_optimizer(config)
  params = {'w': jnp.zeros(())}
  state = optimizer.init(params)
  rates = []
  for _ in range(101):
    updates, state = optimizer.update({'w': jnp.ones(())}, state)
    rates.append(-float(updates['w']))
  expected = [
    1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * min(t, 100) / 100))
    for t in range(101)
  ]
  np.testing.assert_allclose(rates, expected, rtol=1e-5)
  config.meta_lr_schedule = 'step'
  with pytest.raises(config_checks.ConfigError, match='meta_lr_schedule'):
    config_checks.validate(config)
