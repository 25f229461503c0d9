"""The training program (`experiments.train`) in-process, at tiny sizes."""

import json
import os

import chex
import jax
import ml_collections
import numpy as np
import optax
import pytest

import jaxmeta
from experiments import checkpoints as checkpoints_lib
from experiments import tasks
from experiments import build
from experiments import config_checks
from experiments import common
from experiments import train
from experiments import workdir
from experiments.configs import sinusoid as sinusoid_config
from support import tb_events
from support.tiny_runs import restore
from support.tiny_runs import run
from support.tiny_runs import TINY_MODEL_OPTIONS
from support.tiny_runs import tiny_config
from support.tiny_runs import tiny_sinusoid


# The MAML family and the pretrain baseline on every backbone; the methods
# with a body/head split are run through the harness in test_train_methods.
# The quick tier trains every algorithm on the MLP and MAML on Conv-4; the
# rest is slow (the ResNet-12 step compiles for up to half a minute).
@pytest.mark.parametrize(
  'backbone, algorithm',
  [
    pytest.param(
      backbone,
      algorithm,
      marks=()
      if backbone == 'mlp' or (backbone, algorithm) == ('conv4', 'maml')
      else pytest.mark.slow,
    )
    for backbone in sorted(jaxmeta.models.BACKBONES)
    for algorithm in ('fomaml', 'maml', 'pretrain', 'reptile')
  ],
)
def test_every_algorithm_trains_every_backbone(
  tmp_path, tiny_dataset, algorithm, backbone
):
  config = tiny_config(tiny_dataset, algorithm=algorithm, backbone=backbone)
  config.model = ml_collections.ConfigDict(TINY_MODEL_OPTIONS.get(backbone, {}))
  results = run(config, tmp_path)
  assert results['iterations'] == 4 and results['algorithm'] == algorithm
  assert 0.0 <= results['test_accuracy'] <= 1.0
  assert len(results['test_accuracy_by_step']) == 3
  state, _ = restore(config, tmp_path)
  assert int(state.step) == 4


# Regression through the harness: MAML and MAML++ (no other quick test trains
# it through the harness) in the quick tier; the other algorithms train on
# images there.
@pytest.mark.parametrize(
  'algorithm',
  [
    'maml',
    'maml_plus_plus',
    *(
      pytest.param(a, marks=pytest.mark.slow)
      for a in ('fomaml', 'meta_sgd', 'pretrain', 'reptile')
    ),
  ],
)
def test_every_algorithm_trains_on_sinusoids(tmp_path, algorithm):
  results = run(tiny_sinusoid(algorithm=algorithm), tmp_path)
  assert results['iterations'] == 4 and results['dataset'] == 'sinusoid'
  assert np.isfinite(results['test_mse'])
  assert len(results['test_mse_by_step']) == 11
  assert results['best_step'] in (2, 4)


@pytest.mark.slow
def test_sinusoid_maml_learns_to_adapt(tmp_path):
  config = sinusoid_config.get_config()
  config.update(
    num_iterations=1000,
    eval_every=1000,
    checkpoint_every=1000,
    num_eval_tasks=50,
    eval_batch_size=50,
  )
  results = run(config, tmp_path)
  by_step = results['test_mse_by_step']
  # Even 1000 meta-iterations make 10 steps of adaptation clearly useful.
  assert by_step[-1] < 0.7 * by_step[0], by_step


def test_outputs_layout_and_results(tmp_path, tiny_dataset):
  config = tiny_config(tiny_dataset)
  results = run(config, tmp_path)
  on_disk = json.loads((tmp_path / 'results.json').read_text())
  assert on_disk == json.loads(json.dumps(results))
  for key in (
    'algorithm',
    'preset',
    'ways',
    'shots',
    'queries',
    'split',
    'eval_inner_steps',
    'test_accuracy',
    'test_ci95',
    'num_test_tasks',
    'test_accuracy_by_step',
    'best_step',
    'best_val_accuracy',
    'config',
    'iterations',
    'steps_per_second',
    'compile_seconds',
    'train_seconds',
    'resumed_from_step',
  ):
    assert key in on_disk, key
  assert on_disk['num_test_tasks'] == 6 and on_disk['split'] is None
  records = [
    json.loads(line)
    for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()
  ]
  assert [r['step'] for r in records if 'train/loss' in r] == [1, 2, 3, 4]
  val = {r['step']: r['val/accuracy'] for r in records if 'val/accuracy' in r}
  assert sorted(val) == [2, 4]
  # Tasks per second leave out the call that compiled: the first validation.
  speed = {
    r['step']: r.get('val/tasks_per_second')
    for r in records
    if 'val/accuracy' in r
  }
  assert speed[2] is None and speed[4] > 0
  assert on_disk['test_tasks_per_second'] > 0
  # The best checkpoint is the step with the best validation accuracy (the
  # later one on a tie).
  assert on_disk['best_step'] == max(sorted(val), key=lambda s: (val[s], s))
  assert on_disk['best_val_accuracy'] == pytest.approx(
    val[on_disk['best_step']]
  )
  # The flattened config and the test metrics, for TensorBoard's HParams tab.
  hparams, metric_tags = tb_events.hparams(tmp_path / 'tensorboard')
  assert hparams['algorithm'] == 'maml' and hparams['model.num_filters'] == 4
  assert hparams['meta_lr'] == config.meta_lr and hparams['ways'] == 3
  assert 'test/accuracy' in metric_tags and 'test/accuracy_alone' in metric_tags
  ((step, value),) = tb_events.scalars(tmp_path / 'tensorboard')[
    'test/accuracy'
  ]
  assert step == 4 and value == pytest.approx(on_disk['test_accuracy'])
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']
  _, meta = restore(config, tmp_path)
  assert meta['config']['model'] == {'num_blocks': 2, 'num_filters': 4}
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved == json.loads(json.dumps(config.to_dict()))


def test_keeps_the_latest_checkpoints_and_the_best(tmp_path, tiny_dataset):
  config = tiny_config(
    tiny_dataset,
    num_iterations=8,
    eval_every=1,
    checkpoint_every=1,
    keep_checkpoints=2,
  )
  results = run(config, tmp_path)
  steps = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints'))
  assert steps == sorted({7, 8, results['best_step']})
  records = [
    json.loads(line)
    for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()
  ]
  val = {r['step']: r['val/accuracy'] for r in records if 'val/accuracy' in r}
  assert results['best_step'] == max(val, key=lambda s: (val[s], s))


def test_resumed_run_is_bit_identical(tmp_path, tiny_dataset):
  config = tiny_config(
    tiny_dataset, num_iterations=6, eval_every=3, checkpoint_every=3
  )
  straight = run(config, tmp_path / 'straight')
  run(
    tiny_config(
      tiny_dataset, num_iterations=3, eval_every=3, checkpoint_every=3
    ),
    tmp_path / 'resumed',
  )
  resumed = run(config, tmp_path / 'resumed')
  assert resumed['resumed_from_step'] == 3
  assert resumed['test_accuracy'] == straight['test_accuracy']
  a, _ = restore(config, tmp_path / 'straight')
  b, _ = restore(config, tmp_path / 'resumed')
  assert int(a.step) == int(b.step) == 6
  chex.assert_trees_all_equal(a, b)
  steps = [
    json.loads(line)['step']
    for line in (tmp_path / 'resumed' / 'metrics.jsonl')
    .read_text()
    .splitlines()
    if 'train/loss' in line
  ]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_rerunning_a_finished_run_keeps_its_figures(tmp_path, tiny_dataset):
  config = tiny_config(tiny_dataset)
  first = run(config, tmp_path)
  again = run(config, tmp_path)
  for key in (
    'steps_per_second',
    'compile_seconds',
    'train_seconds',
    'test_accuracy',
    'best_step',
  ):
    assert again[key] == first[key], key
  assert first['steps_per_second'] is not None


def test_a_step_that_overflows_the_parameters_is_not_applied():
  """Finite loss and gradient, non-finite new parameters: not applied."""
  model = jaxmeta.mlp((1, 4, 1))
  learner = jaxmeta.maml(model, jaxmeta.regression_loss, 0.01, 1)
  # The meta-gradient times 1e38 overflows float32 wherever |grad| > 3.4.
  learner = learner._replace(
    task_update=lambda p, t, key=None, global_step=None: (
      jax.tree.map(lambda x: jax.numpy.full_like(x, 10.0), p),
      {'loss': jax.numpy.float32(1.0), 'mse': jax.numpy.float32(1.0)},
    )
  )
  optimizer = optax.sgd(1e38)
  family = tasks.sinusoid_family(tiny_sinusoid())
  step = build.make_train_step(learner, optimizer, family, tiny_sinusoid())
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.PRNGKey(0))
  before = jax.tree.map(np.asarray, state)
  after, metrics = step(state, None)
  assert not bool(metrics['finite'])
  assert np.isfinite(metrics['loss']) and np.isfinite(metrics['meta_grad_norm'])
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, after), before)


@pytest.mark.slow
def test_the_model_gets_its_key_in_training(tiny_dataset):
  """DropBlock is active in the step: it equals the keyed library step."""
  config = tiny_config(tiny_dataset, backbone='resnet12')
  config.model = ml_collections.ConfigDict(
    {'widths': (2, 2, 2), 'drop_rate': 0.5, 'dropblock_size': 1}
  )
  built = build.Run(config, '/nonexistent', None, None, 'train')
  data = built.family.load('train')
  step = build.make_train_step(
    built.learner, built.optimizer, built.family, config
  )
  new, _ = step(built.init_state(), data)
  reference = {}
  for keyed in (True, False):
    sample = lambda key, keyed=keyed: jax.vmap(
      lambda k: built.family.sample(k, data, True)
    )(jax.random.split(key, config.meta_batch_size))
    reference[keyed], _ = jax.jit(
      jaxmeta.make_meta_train_step(
        built.learner,
        built.optimizer,
        sample,
        task_chunk_size=1,
        model_keys=keyed,
      )
    )(built.init_state())
  chex.assert_trees_all_close(new.params, reference[True].params, atol=1e-6)
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(new.params, reference[False].params, atol=1e-6)


def test_extending_a_run_with_a_decaying_rate_is_refused(tmp_path):
  """The rate decays over num_iterations: a longer run from the same
  checkpoints would have taken its first steps at other rates."""
  decaying = lambda n: tiny_sinusoid(
    num_iterations=n, meta_lr_final=0.0, meta_lr_schedule='linear'
  )
  short = run(decaying(2), tmp_path / 'run')
  with pytest.raises(
    config_checks.ConfigError,
    match=r'decays \(linear\) over num_iterations=2; going on from its step '
    r'2 with num_iterations=4 .* Fix: rerun with --config.num_iterations=2',
  ):
    run(decaying(4), tmp_path / 'run')
  # Nothing of the run changed: the same command finishes as before.
  again = run(decaying(2), tmp_path / 'run')
  assert again['test_mse'] == short['test_mse']
  state, _ = restore(decaying(2), tmp_path / 'run')
  assert int(state.step) == 2
  # The longer run in its own workdir; and a constant rate may be extended.
  assert run(decaying(4), tmp_path / 'long')['iterations'] == 4
  constant = lambda n: tiny_sinusoid(num_iterations=n, meta_lr_final=-1.0)
  run(constant(2), tmp_path / 'constant')
  assert run(constant(4), tmp_path / 'constant')['resumed_from_step'] == 2


def test_nothing_at_or_after_a_non_finite_step_is_saved(tmp_path, tiny_dataset):
  config = tiny_config(
    tiny_dataset,
    meta_optimizer='sgd',
    meta_lr=1e38,
    num_iterations=6,
    checkpoint_every=1,
    eval_every=1,
    log_every=100,
  )
  with pytest.raises(
    common.RunError,
    match=r'Meta-step \d produced non-finite'
    r'.*not applied',
  ) as error:
    run(config, tmp_path)
  bad_step = int(str(error.value).split()[1])
  saved = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints'))
  assert all(s < bad_step for s in saved), (saved, bad_step)
  for s in saved:
    state, _ = restore(config, tmp_path, s)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_divergence_after_good_steps_keeps_them(tmp_path, tiny_dataset):
  good = tiny_config(tiny_dataset, num_iterations=2)
  run(good, tmp_path / 'run')
  # Resuming that run with a diverging setting is a different configuration.
  bad = tiny_config(
    tiny_dataset,
    meta_optimizer='sgd',
    meta_lr=1e38,
    num_iterations=6,
    checkpoint_every=1,
    log_every=100,
  )
  with pytest.raises(config_checks.ConfigError, match='meta_lr'):
    run(bad, tmp_path / 'run')
  state, _ = restore(good, tmp_path / 'run')
  assert int(state.step) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_evaluating_a_checkpoint_with_non_finite_parameters_fails(
  tmp_path, tiny_dataset
):
  config = tiny_config(tiny_dataset, num_iterations=2)
  run(config, tmp_path)
  built = build.Run(config, str(tmp_path), None, None, 'train')
  state, meta = built.checkpoints.restore(built.init_state(), 2)
  poisoned = state.replace(
    params=jax.tree.map(lambda x: x * np.float32('nan'), state.params)
  )
  built.checkpoints.manager.delete(2)
  built.checkpoints.save(2, poisoned, meta, val_metric=1.0)
  built.checkpoints.close()
  with pytest.raises(common.RunError, match='non-finite parameters'):
    train.evaluate(config, str(tmp_path))


@pytest.mark.parametrize(
  'overrides,message',
  [
    (dict(shots=-1), r'config.shots must be >= 1'),
    (dict(meta_batch_size=0), r'config.meta_batch_size must be >= 1'),
    (dict(inner_steps=-1), r'config.inner_steps must be >= 0'),
    (dict(algorithm='protonets'), 'Unknown algorithm'),
    (dict(dataset='imagenet'), 'Unknown dataset'),
    (dict(backbone='vgg'), 'Unknown backbone'),
    (dict(inner_lr=-0.1), 'inner_lr must be a positive finite'),
    (dict(meta_lr=float('nan')), 'meta_lr must be a positive finite'),
    (dict(meta_lr=float('inf')), 'meta_lr must be a positive finite'),
    (dict(meta_lr_final=float('nan')), 'meta_lr_final must be finite'),
    (dict(seed=2**70), 'seed=.* is too large'),
    (dict(num_iterations=2**40), 'num_iterations=.* is too large'),
    (dict(task_chunk_size=3), 'must divide config.meta_batch_size=2'),
    (dict(inner_optimizer='adam'), 'inner_optimizer applies to'),
    (
      dict(inner_optimizer='rmsprop'),
      r"Unknown config.inner_optimizer 'rmsprop'",
    ),
    (dict(ways=13), r'train split .*ways=13 is more than the 12 classes'),
    (dict(shots=3, queries=4), r'shots \+ queries = 3 \+ 4 = 7 is more'),
  ],
)
def test_bad_configs_are_rejected_before_any_work(
  tmp_path, tiny_dataset, overrides, message
):
  with pytest.raises(config_checks.ConfigError, match=message):
    run(tiny_config(tiny_dataset, **overrides), tmp_path)
  assert not os.path.exists(tmp_path / 'config.json')


def test_a_failed_start_does_not_block_the_corrected_command(
  tmp_path, tiny_dataset
):
  with pytest.raises(config_checks.ConfigError):
    run(tiny_config(tiny_dataset, seed=2**70), tmp_path)
  run(tiny_config(tiny_dataset, num_iterations=1), tmp_path)


def test_backbone_errors_are_config_errors(tmp_path, tiny_dataset):
  config = tiny_config(tiny_dataset)
  config.model.num_blocks = 4  # 8x8 images cannot be pooled four times.
  with pytest.raises(config_checks.ConfigError, match='too small'):
    run(config, tmp_path)


def test_a_run_saved_before_a_field_was_added_has_its_former_value(
  tiny_dataset,
):
  config = tiny_config(tiny_dataset)
  saved = config.to_dict()
  del saved['train_split']  # As runs saved before the field existed.
  workdir.check_same_run(saved, 'config.json', config, 'old_run')
  config.train_split = 'trainval'
  with pytest.raises(
    config_checks.ConfigError,
    match=r"train_split: saved 'train' vs now 'trainval'",
  ):
    workdir.check_same_run(saved, 'config.json', config, 'old_run')


def test_a_different_configuration_is_refused_even_without_config_json(
  tmp_path, tiny_dataset
):
  run(tiny_config(tiny_dataset, num_iterations=2), tmp_path)
  os.remove(tmp_path / 'config.json')
  with pytest.raises(
    config_checks.ConfigError,
    match=r'different configuration \(inner_lr: saved 0.4 '
    r'vs now 0.1, seed: saved 0 vs now 3; from its '
    r'checkpoint step 2\)',
  ):
    run(
      tiny_config(tiny_dataset, num_iterations=4, seed=3, inner_lr=0.1),
      tmp_path,
    )
  # Resumable fields may change.
  results = run(
    tiny_config(tiny_dataset, num_iterations=4, num_eval_tasks=3), tmp_path
  )
  assert results['resumed_from_step'] == 2 and results['num_test_tasks'] == 3


def test_workdir_errors(tmp_path, tiny_dataset):
  a_file = tmp_path / 'file'
  a_file.write_text('x')
  with pytest.raises(config_checks.ConfigError, match='is a file'):
    run(tiny_config(tiny_dataset), a_file)
  with pytest.raises(config_checks.ConfigError, match='is a file'):
    train.evaluate(tiny_config(tiny_dataset), str(a_file))
  with pytest.raises(
    config_checks.ConfigError, match='Cannot create .*Not a directory. Fix:'
  ):
    run(tiny_config(tiny_dataset), a_file / 'run')
  old = tmp_path / 'old'
  (old / 'best').mkdir(parents=True)
  with pytest.raises(config_checks.ConfigError, match='earlier version'):
    run(tiny_config(tiny_dataset), old)
  corrupt = tmp_path / 'corrupt'
  corrupt.mkdir()
  (corrupt / 'config.json').write_text('{"seed": ')
  with pytest.raises(config_checks.ConfigError, match='corrupted'):
    run(tiny_config(tiny_dataset), corrupt)


@pytest.mark.slow
def test_an_unreadable_checkpoint_falls_back_to_the_previous(
  tmp_path, tiny_dataset, capsys
):
  config = tiny_config(tiny_dataset, num_iterations=4, eval_every=100)
  straight = run(config, tmp_path / 'straight')
  half = tiny_config(tiny_dataset, num_iterations=4, eval_every=100)
  run(half, tmp_path / 'broken')
  # Damage every file of the state of step 4.
  for root, _, files in os.walk(
    tmp_path / 'broken' / 'checkpoints' / '4' / 'state'
  ):
    for name in files:
      with open(os.path.join(root, name), 'r+b') as f:
        f.truncate(max(0, os.path.getsize(f.name) // 2))
  os.remove(tmp_path / 'broken' / 'results.json')
  capsys.readouterr()
  again = run(config, tmp_path / 'broken')
  err = capsys.readouterr().err
  assert 'checkpoint step 4 could not be read' in err
  assert again['resumed_from_step'] == 2
  assert again['test_accuracy'] == straight['test_accuracy']
  assert os.listdir(tmp_path / 'broken' / 'unreadable') == ['4']


def test_eval_mode(tmp_path, tiny_dataset):
  config = tiny_config(tiny_dataset)
  trained = run(config, tmp_path)
  again = train.evaluate(
    tiny_config(tiny_dataset, num_eval_tasks=8), str(tmp_path)
  )
  assert (
    again['num_test_tasks'] == 8 and again['best_step'] == trained['best_step']
  )
  assert json.loads((tmp_path / 'eval.json').read_text())['num_test_tasks'] == 8
  with pytest.raises(
    config_checks.ConfigError, match='different configuration'
  ):
    train.evaluate(tiny_config(tiny_dataset, ways=4), str(tmp_path))
  with pytest.raises(config_checks.ConfigError, match='holds no run'):
    train.evaluate(config, str(tmp_path / 'nothing'))
  # Evaluation reads the checkpoints, not the results of the run.
  os.remove(tmp_path / 'results.json')
  assert (
    train.evaluate(config, str(tmp_path))['best_step'] == (trained['best_step'])
  )


def test_eval_on_a_read_only_workdir_prints_the_result_first(
  tmp_path, tiny_dataset, capsys, monkeypatch
):
  config = tiny_config(tiny_dataset)
  run(config, tmp_path)
  capsys.readouterr()

  def refuse(path, obj):
    raise PermissionError(13, 'Permission denied', path)

  monkeypatch.setattr(common, 'write_json', refuse)
  with pytest.raises(common.RunError, match='Could not write'):
    train.evaluate(config, str(tmp_path))
  assert 'test accuracy' in capsys.readouterr().out


def test_task_family_registry_names_both_kinds(tiny_dataset):
  assert {'omniglot', 'sinusoid', tiny_dataset} <= set(tasks.names())


def test_checkpoints_without_validation_are_not_best(tmp_path):
  ckpt = checkpoints_lib.Checkpoints(str(tmp_path), 1, 'val_mse', False)
  state = {'w': np.zeros(2, np.float32)}
  ckpt.save(1, state, {'config': {}}, val_metric=0.5)
  ckpt.save(2, state, {'config': {}}, val_metric=0.2)
  ckpt.save(3, state, {'config': {}}, val_metric=0.9)
  ckpt.save(4, state, {'config': {}})
  assert ckpt.best_step() == 2 and ckpt.best_metric() == 0.2
  assert sorted(ckpt.manager.all_steps()) == [2, 4]
  ckpt.close()


def test_file_uri_and_relative_workdirs_run_and_resume(tmp_path, monkeypatch):
  straight = run(tiny_sinusoid(), tmp_path / 'straight')
  uri = f'file://{tmp_path}/uri'
  run(tiny_sinusoid(num_iterations=2), uri)
  resumed = run(tiny_sinusoid(), uri)
  assert resumed['resumed_from_step'] == 2
  assert resumed['test_mse'] == straight['test_mse']
  a, _ = restore(tiny_sinusoid(), tmp_path / 'straight')
  b, _ = restore(tiny_sinusoid(), tmp_path / 'uri')
  chex.assert_trees_all_equal(a, b)
  assert train.evaluate(tiny_sinusoid(), uri)['test_mse'] == resumed['test_mse']
  monkeypatch.chdir(tmp_path)
  relative = run(tiny_sinusoid(), os.path.join('runs', 'rel'))
  assert relative['test_mse'] == straight['test_mse']
  assert sorted(os.listdir(tmp_path / 'runs' / 'rel')) == [
    'checkpoints',
    'config.json',
    'lock',
    'metrics.jsonl',
    'results.json',
    'tensorboard',
  ]
  assert sorted(os.listdir(tmp_path)) == ['runs', 'straight', 'uri']
