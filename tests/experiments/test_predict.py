"""Loading a trained run and classifying new images (`experiments.predict`)."""

import importlib.util
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

import jaxmeta
from jaxmeta import sharding
from jaxmeta.data import episodes
from jaxmeta.data import omniglot
from jaxmeta.data import omniglot_tfds
from jaxmeta.data import registry
from experiments import build
from experiments import checkpoints as checkpoints_lib
from experiments import config_checks
from experiments import evaluation
from experiments import predict
from experiments import tasks
import experiments
from support import REPO
from support.tiny_runs import run
from support.tiny_runs import tiny_config


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, tiny_dataset):
  """A finished 4-step MAML run on the tiny dataset: `(workdir, config)`."""
  workdir = tmp_path_factory.mktemp('tiny_run')
  config = tiny_config(tiny_dataset)
  run(config, workdir)
  return str(workdir), config


def _checkpoint(config, workdir, step):
  """`(state, meta)` of a step, as the harness restores it."""
  built = build.Run(config, workdir, None, None, 'train')
  try:
    return built.checkpoints.restore(built.init_state(), step)
  finally:
    built.checkpoints.close()


def test_load_run_gives_the_best_checkpoint_and_the_tested_accuracy(tiny_run):
  _check_load_run(*tiny_run)


def _publish_module():
  spec = importlib.util.spec_from_file_location(
    'publish', REPO / 'benchmarks' / 'reproduction' / 'publish.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_a_step_saved_without_optimiser_state_loads_and_resumes(
  tiny_run, tmp_path, capsys
):
  """A published model's checkpoint (`publish.drop_optimiser_state`):
  smaller, the same parameters for `load_run`, and a resume that starts the
  optimiser afresh and says so."""
  workdir, config = tiny_run
  copy = tmp_path / 'published'
  shutil.copytree(workdir, copy)
  step = json.loads((copy / 'results.json').read_text())['best_step']
  step_dir = copy / 'checkpoints' / str(step)
  size = lambda d: sum(p.stat().st_size for p in d.rglob('*') if p.is_file())
  before = size(step_dir / 'state')
  _publish_module().drop_optimiser_state(step_dir)
  assert size(step_dir / 'state') < before
  _, params, _ = experiments.load_run(copy)
  _, expected, _ = experiments.load_run(workdir)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params, expected)))

  full, _ = _checkpoint(config, workdir, step)
  capsys.readouterr()
  state, meta = _checkpoint(config, str(copy), step)
  assert 'holds no optimiser state' in capsys.readouterr().err
  assert meta == _checkpoint(config, workdir, step)[1]
  for field in ('step', 'params', 'model_state', 'key'):
    same = jax.tree.map(
      np.array_equal, getattr(state, field), getattr(full, field)
    )
    assert all(jax.tree.leaves(same)), field
  fresh = build.Run(config, str(tmp_path / 'fresh'), None, None, 'train')
  expected_opt = fresh.init_state().opt_state
  fresh.checkpoints.close()
  same = jax.tree.map(np.array_equal, state.opt_state, expected_opt)
  assert all(jax.tree.leaves(same))
  assert not all(
    jax.tree.leaves(
      jax.tree.map(np.array_equal, state.opt_state, full.opt_state)
    )
  )


@pytest.mark.slow
def test_load_run_gives_the_running_statistics_too(tmp_path, tiny_dataset):
  """'running' batch norm: the parameters come with the train state's
  `model_state` merged in, as evaluation uses them."""
  config = tiny_config(tiny_dataset, batch_norm='running')
  run(config, tmp_path)
  params = _check_load_run(str(tmp_path), config)
  assert 'batch_stats' in params


def _check_load_run(workdir, config):
  """load_run gives the best checkpoint's (merged) parameters, and the
  run's test accuracy is recomputed from them exactly."""
  results = json.loads(Path(workdir, 'results.json').read_text())
  learner, params, loaded_config = experiments.load_run(workdir)
  assert loaded_config.to_dict() == json.loads(
    json.dumps(config.to_dict())
  )  # As the JSON of the run holds it.
  state, _ = _checkpoint(config, workdir, results['best_step'])
  chex_equal = jax.tree.map(np.array_equal, params, state.merged_params())
  assert all(jax.tree.leaves(chex_equal))
  # The test of the run, recomputed with the loaded learner and parameters.
  family = tasks.build(loaded_config)
  evaluator = evaluation.Evaluator(
    learner, family, loaded_config, sharding.make_mesh(), alone=True
  )
  keys = episodes.eval_task_keys(config.eval_seed, config.num_eval_tasks)
  values, _, alone = evaluator(params, family.load('test'), keys)
  assert jaxmeta.mean_and_ci95(values)[0] == results['test_accuracy']
  assert jaxmeta.mean_and_ci95(alone)[0] == results['test_accuracy_alone']
  return params


def test_load_run_latest_gives_the_last_step(tiny_run):
  workdir, config = tiny_run
  _, params, _ = predict.load_run(workdir, checkpoint='latest')
  state, _ = _checkpoint(config, workdir, 4)
  assert all(
    jax.tree.leaves(jax.tree.map(np.array_equal, params, state.params))
  )


def test_load_run_changes_nothing_in_the_workdir(tiny_run):
  workdir, _ = tiny_run

  def listing():
    return sorted(
      (str(p.relative_to(workdir)), p.stat().st_size, p.stat().st_mtime_ns)
      for p in Path(workdir).rglob('*')
    )

  before = listing()
  predict.load_run(workdir)
  assert listing() == before


def test_classify_scores_each_image_alone(tiny_run):
  workdir, config = tiny_run
  learner, params, config = predict.load_run(workdir)
  family = tasks.build(config)
  task = family.sample(jax.random.key(3), family.load('test'), False)
  steps = config.eval_inner_steps
  predicted = predict.classify(
    learner, params, task.support_x, task.support_y, task.query_x, steps
  )
  assert predicted.shape == task.query_y.shape
  # The accuracy the test reports with each query scored alone.
  accuracy = jnp.mean((predicted == task.query_y).astype(float))
  assert accuracy == jaxmeta.algorithms.score_alone(
    learner, params, task, steps
  )
  # A prediction does not change with the other images (transductive batch
  # norm: a batch of them would normalise each by the others).
  assert config.batch_norm == 'transductive'
  for i in range(len(task.query_x)):
    alone = predict.classify(
      learner,
      params,
      task.support_x,
      task.support_y,
      task.query_x[i : i + 1],
      steps,
    )
    assert int(alone[0]) == int(predicted[i])
  # uint8 images are scaled by 1/255, as the sampler scales the dataset's.
  images = family.load('test')[:3, 0]  # uint8 [3, 8, 8, 1]
  np.testing.assert_array_equal(
    predict.classify(
      learner, params, task.support_x, task.support_y, images, steps
    ),
    predict.classify(
      learner,
      params,
      task.support_x,
      task.support_y,
      np.asarray(images, np.float32) / 255.0,
      steps,
    ),
  )


def test_classify_compiles_once_per_shape(tiny_run):
  learner, params, _ = predict.load_run(tiny_run[0])
  x = np.zeros((3, 8, 8, 1), np.float32)
  before = predict._classify._cache_size()
  for _ in range(3):
    predict.classify(learner, params, x, np.arange(3), x, 1)
  assert predict._classify._cache_size() == before + 1


def test_classify_refuses_mismatched_shapes(tiny_run):
  learner, params, _ = predict.load_run(tiny_run[0])
  x = np.zeros((3, 8, 8, 1), np.float32)
  with pytest.raises(ValueError, match='support_labels must be int'):
    predict.classify(learner, params, x, np.zeros(2, np.int32), x, 1)
  with pytest.raises(ValueError, match='same image shape'):
    predict.classify(learner, params, x, np.arange(3), x[:, :4], 1)


def test_load_run_reads_no_data(tmp_path, tiny_dataset, monkeypatch):
  """The workdir records the input shape: loading needs no dataset."""
  config = tiny_config(tiny_dataset, num_iterations=2)
  run(config, tmp_path)

  def no_data(split, **kwargs):
    raise registry.DataError('the dataset is not here')

  monkeypatch.setitem(registry.DATASETS, tiny_dataset, no_data)
  learner, params, _ = predict.load_run(tmp_path)
  x = np.zeros((3, 8, 8, 1), np.uint8)
  assert predict.classify(learner, params, x, np.arange(3), x, 1).shape == (3,)


def test_load_run_without_a_recorded_input_shape_reads_the_test_split(
  tmp_path, tiny_dataset, monkeypatch
):
  """A run written before the input shape was recorded still loads."""
  meta = build.Run.meta
  monkeypatch.setattr(
    build.Run,
    'meta',
    lambda self: {k: v for k, v in meta(self).items() if k != 'input_shape'},
  )
  config = tiny_config(tiny_dataset, num_iterations=2)
  run(config, tmp_path)
  monkeypatch.undo()
  loaded = []
  load = registry.DATASETS[tiny_dataset]

  def recording(split, **kwargs):
    loaded.append(split)
    return load(split, **kwargs)

  monkeypatch.setitem(registry.DATASETS, tiny_dataset, recording)
  learner, params, _ = predict.load_run(tmp_path)
  assert loaded == ['test']
  x = np.zeros((3, 8, 8, 1), np.uint8)
  assert predict.classify(learner, params, x, np.arange(3), x, 1).shape == (3,)


def test_load_run_of_baseline_reads_its_head_width_from_the_checkpoint(
  tmp_path, tiny_dataset
):
  """Baseline's pretraining head spans the 12 training classes."""
  config = tiny_config(
    tiny_dataset, algorithm='baseline', batch_size=8, num_iterations=2
  )
  run(config, tmp_path)
  _, params, _ = predict.load_run(tmp_path)
  assert params['head']['w'].shape[1] == 12
  state, _ = _checkpoint(config, str(tmp_path), 2)
  assert all(
    jax.tree.leaves(jax.tree.map(np.array_equal, params, state.params))
  )


def test_load_run_errors(tmp_path, tiny_run):
  with pytest.raises(config_checks.ConfigError, match='holds no run'):
    predict.load_run(tmp_path)
  with pytest.raises(ValueError, match="'best' or 'latest'"):
    predict.load_run(tiny_run[0], checkpoint='last')


def _copy_run(workdir, target):
  subprocess.run(['cp', '-a', workdir, str(target)], check=True)
  return str(target)


def test_load_run_refuses_a_damaged_checkpoint_and_moves_nothing(
  tmp_path, tiny_run
):
  workdir = _copy_run(tiny_run[0], tmp_path / 'run')
  best = json.loads(Path(workdir, 'results.json').read_text())['best_step']
  step_dir = Path(workdir, 'checkpoints', str(best))
  for path in (step_dir / 'state').rglob('*'):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(b'\0' * path.stat().st_size)
  with pytest.raises(
    checkpoints_lib.CheckpointError, match='could not be read'
  ):
    predict.load_run(workdir)
  assert step_dir.is_dir() and not Path(workdir, 'unreadable').exists()


def test_load_run_refuses_a_run_without_checkpoints(tmp_path, tiny_run):
  workdir = _copy_run(tiny_run[0], tmp_path / 'run')
  for step_dir in Path(workdir, 'checkpoints').iterdir():
    subprocess.run(['rm', '-r', str(step_dir)], check=True)
  with pytest.raises(checkpoints_lib.CheckpointError, match='holds no valid'):
    predict.load_run(workdir)
  with pytest.raises(checkpoints_lib.CheckpointError, match='Fix: train'):
    predict.load_run(workdir, checkpoint='latest')


def _omniglot_pngs(classes):
  """`{class name: [PNG bytes of drawers 1..20]}` from the shipped zips."""
  wanted = {'/'.join(c.split('/')[:2]): c for c in classes}
  found = {c: {} for c in classes}
  for source in omniglot_tfds.SOURCES:
    path = REPO / 'data' / 'omniglot' / f'images_{source}.zip'
    with zipfile.ZipFile(path) as z:
      for member in z.namelist():
        parts = member.split('/')
        if len(parts) == 4 and parts[3].endswith('.png'):
          character = '/'.join(parts[1:3])
          if character in wanted:
            drawer = int(parts[3][:-4].split('_')[1])
            found[wanted[character]][drawer] = z.read(member)
  return {c: [d[k] for k in sorted(d)] for c, d in found.items()}


@pytest.fixture(scope='module')
def omniglot_run(tmp_path_factory, omniglot_data_dir):
  """A 2-step tiny Conv-4 MAML run, 5-way, on 28x28 Omniglot: `(workdir,
  config, data_dir)`."""
  workdir = str(tmp_path_factory.mktemp('omniglot_run'))
  config = tiny_config('omniglot', ways=5, num_iterations=2)
  config.data = ml_collections.ConfigDict(
    {'scheme': 'vinyals', 'image_size': 28}
  )
  run(config, workdir, data_dir=omniglot_data_dir)
  return workdir, config, omniglot_data_dir


@pytest.mark.slow
def test_the_command_classifies_pngs_of_held_out_characters(
  tmp_path, omniglot_run, omniglot_data_dir
):
  workdir, config, _ = omniglot_run
  test = omniglot.load('test', data_dir=omniglot_data_dir)
  picked = [0, 9, 17, 30, 41]  # Five test characters, unrotated.
  classes = [test.class_names[4 * i] for i in picked]
  assert all(c.endswith('/rot000') for c in classes)
  pngs = _omniglot_pngs(classes)
  support, queries = tmp_path / 'support', tmp_path / 'images'
  queries.mkdir()
  names, query_paths = [], []
  for label, c in enumerate(classes):
    name = c.split('/')[0] + '_' + c.split('/')[1]
    names.append(name)
    (support / name).mkdir(parents=True)
    (support / name / 'drawer01.png').write_bytes(pngs[c][0])
    for drawer in (1, 2, 3):
      path = queries / f'{name}_{drawer + 1:02d}.png'
      path.write_bytes(pngs[c][drawer])
      query_paths.append(str(path))
  # The files read back as the dataset's own images.
  dataset_images = test.images[[4 * i for i in picked]]  # [5, 20, 28, 28, 1]
  np.testing.assert_array_equal(
    predict.read_image(query_paths[0], (28, 28, 1), 'omniglot'),
    dataset_images[0, 1],
  )
  env = dict(os.environ, JAXMETA_DATA_DIR=omniglot_data_dir)
  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.predict',
      f'--workdir={workdir}',
      f'--support={support}',
      f'--images={queries}',
    ],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO,
  )
  assert done.returncode == 0, done.stderr
  rows = [line.split('\t') for line in done.stdout.splitlines()]
  assert [r[0] for r in rows] == sorted(query_paths)
  # The library call on the dataset's images predicts the same classes.
  learner, params, config = predict.load_run(
    workdir, data_dir=omniglot_data_dir
  )
  predicted = predict.classify(
    learner,
    params,
    dataset_images[:, 0],
    np.arange(5),
    dataset_images[:, 1:4].reshape(15, 28, 28, 1),
    config.eval_inner_steps,
  )
  expected = {p: names[int(k)] for p, k in zip(query_paths, predicted)}
  assert rows == [[p, expected[p]] for p in sorted(query_paths)]


@pytest.mark.slow
def test_the_command_errors_are_one_line(tmp_path, omniglot_run):
  workdir = omniglot_run[0]
  one_class = tmp_path / 'one_class'
  (one_class / 'a').mkdir(parents=True)
  png = one_class / 'a' / 'x.png'
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(png)
  five = tmp_path / 'five'
  for name in 'abcde':
    (five / name).mkdir(parents=True)
    (five / name / 'x.png').write_bytes(png.read_bytes())
  (tmp_path / 'text.png').write_text('text')
  cases = [
    (
      [f'--workdir={tmp_path}', f'--support={five}', f'--images={png}'],
      'holds no run',
    ),
    ([f'--workdir={workdir}', f'--images={png}'], '--support is required'),
    (
      [f'--workdir={workdir}', f'--support={five}', '--images=nope'],
      'neither a file nor a folder',
    ),
    (
      [f'--workdir={workdir}', f'--support={tmp_path}', f'--images={png}'],
      'holds no PNG or JPEG image',
    ),
    (
      [f'--workdir={workdir}', f'--support={one_class}', f'--images={png}'],
      'has 1 classes, but this maml run classifies 5',
    ),
    (
      [
        f'--workdir={workdir}',
        f'--support={five}',
        f'--images={tmp_path / "text.png"}',
      ],
      'is not a readable image',
    ),
  ]
  env = dict(os.environ, JAXMETA_DATA_DIR=omniglot_run[2])
  for argv, message in cases:
    done = subprocess.run(
      [sys.executable, '-m', 'experiments.predict', *argv],
      capture_output=True,
      text=True,
      env=env,
      cwd=REPO,
    )
    assert done.returncode == 1, (argv, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('Error: '), done.stderr
    assert message in lines[0], lines[0]


@pytest.mark.slow
def test_the_readme_example_runs(omniglot_run, monkeypatch):
  """The README's example as written, on a tiny MAML run instead of the
  published ProtoNets model."""
  workdir, _, data_dir = omniglot_run
  text = (REPO / 'README.md').read_text()
  code = next(
    block
    for block in text.split('```python\n')[1:]
    if 'load_run(' in block.split('```')[0]
  ).split('```')[0]
  published = "'benchmarks/reproduction/protonet_omniglot_5w1s'"
  assert f'model = {published}' in code and 'load_run(model)' in code
  code = code.replace(published, repr(workdir))
  monkeypatch.setenv('JAXMETA_DATA_DIR', data_dir)
  namespace = {}
  exec(compile(code, 'README.md', 'exec'), namespace)
  assert namespace['classes'].shape == (95,)
  assert set(np.unique(namespace['classes'])) <= set(range(5))
