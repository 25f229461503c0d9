r"""Few-shot classification on Omniglot: meta-train, checkpoint, test.

The default run is short but real (a few minutes on 2 CPU cores): MAML,
5-way 1-shot, on the Vinyals split of the real Omniglot shipped with the
repository; it prints the test accuracy with its 95% confidence interval over
600 tasks of held-out test characters.

  python -m experiments.omniglot --workdir=/tmp/omniglot
  python -m experiments.omniglot --preset=maml_5w1s --workdir=runs/maml_5w1s
  python -m experiments.omniglot --mode=eval --workdir=runs/maml_5w1s

Explicit flags override a preset. Restarting with the same `--workdir`
resumes from the latest checkpoint. Outputs in the workdir: `config.json`,
`metrics.jsonl`, `tensorboard/`, `checkpoints/` (the last few), `best/` (best
validation accuracy), and `results.json` at the end of a run (`eval.json` for
`--mode=eval`).
"""

import functools
import os
import time
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

import jaxmeta
from jaxmeta.data import episodes
from jaxmeta.data import omniglot
from experiments import common


def get_config() -> ml_collections.ConfigDict:
  """The default: a short real run that fits a few minutes on 2 CPU cores."""
  c = ml_collections.ConfigDict()
  c.preset = ''
  c.algorithm = 'maml'
  c.ways = 5
  c.shots = 1
  c.queries = 5  # Query examples per class, training and evaluation.
  c.train_shots = 0  # Support shots per class in training; 0 = `shots`.
  c.train_queries = 0  # Query examples per class in training; 0 = `queries`.
  c.meta_batch_size = 8
  c.task_chunk_size = 0  # Tasks vmapped at once; 0: default_task_chunk_size.
  c.inner_steps = 1
  c.eval_inner_steps = 3
  c.inner_lr = 0.4
  c.inner_optimizer = 'sgd'  # 'sgd', or 'adam' (b1 = 0) as Reptile uses.
  c.meta_optimizer = 'adam'  # 'adam' or 'sgd'.
  c.meta_lr = 1e-3
  c.meta_lr_final = -1.0  # < 0: constant; else linear decay to this value.
  c.num_iterations = 500
  c.eval_every = 250
  c.num_val_tasks = 100
  c.num_eval_tasks = 600
  c.eval_batch_size = 50  # Evaluation tasks per compiled call.
  c.split = 'vinyals'
  c.image_size = 28
  c.num_filters = 32
  c.conv_impl = 'auto'
  c.seed = 0
  c.eval_seed = 2017
  c.checkpoint_every = 250
  c.keep_checkpoints = 3
  c.log_every = 10
  return c


def _maml(ways, shots, meta_batch_size, inner_lr, inner_steps):
  return dict(algorithm='maml', ways=ways, shots=shots, queries=15,
              train_shots=0, meta_batch_size=meta_batch_size,
              inner_steps=inner_steps, eval_inner_steps=10, inner_lr=inner_lr,
              inner_optimizer='sgd', meta_optimizer='adam', meta_lr=1e-3,
              meta_lr_final=-1.0, num_iterations=60_000, eval_every=1000,
              checkpoint_every=1000, num_filters=64, image_size=28,
              split='maml', num_val_tasks=600)


def _reptile(ways, shots, inner_batch_lr, inner_steps, iterations):
  # Nichol et al. 2018, README of openai/supervised-reptile (transductive
  # Omniglot runs): Adam (b1 = 0) inner loop, 10 training shots per class,
  # meta-batch 5, meta step size 1 linearly annealed to 0, 50 eval steps.
  # Reptile ignores the query set in training: one query per class is only
  # for the logged training accuracy.
  return dict(algorithm='reptile', ways=ways, shots=shots, queries=15,
              train_shots=10, train_queries=1, meta_batch_size=5,
              inner_steps=inner_steps,
              eval_inner_steps=50, inner_lr=inner_batch_lr,
              inner_optimizer='adam', meta_optimizer='sgd', meta_lr=1.0,
              meta_lr_final=0.0, num_iterations=iterations, eval_every=1000,
              checkpoint_every=1000, num_filters=64, image_size=28,
              split='maml', num_val_tasks=600)


PRESETS = {
    # Finn et al. 2017 (cbfinn/maml README): inner lr 0.4, 1 step, meta-batch
    # 32, Adam 1e-3, 60k iterations for 5-way; 0.1, 5 steps, 16 for 20-way.
    'maml_5w1s': _maml(5, 1, 32, 0.4, 1),
    'maml_5w5s': _maml(5, 5, 32, 0.4, 1),
    'maml_20w1s': _maml(20, 1, 16, 0.1, 5),
    'maml_20w5s': _maml(20, 5, 16, 0.1, 5),
}
PRESETS.update({
    name.replace('maml', 'fomaml'): dict(preset, algorithm='fomaml')
    for name, preset in list(PRESETS.items())})
PRESETS.update({
    'reptile_5w1s': _reptile(5, 1, 1e-3, 5, 100_000),
    'reptile_5w5s': _reptile(5, 5, 1e-3, 5, 100_000),
    'reptile_20w1s': _reptile(20, 1, 5e-4, 10, 200_000),
    'reptile_20w5s': _reptile(20, 5, 5e-4, 10, 200_000),
})

# Fields that may differ when a run in a workdir is resumed or evaluated.
_RESUMABLE_FIELDS = ('num_iterations', 'eval_every', 'num_eval_tasks',
                     'task_chunk_size',
                     'eval_batch_size', 'checkpoint_every', 'keep_checkpoints',
                     'log_every', 'conv_impl')

_INT_FLAGS = ('ways', 'shots', 'queries', 'train_shots', 'train_queries',
              'meta_batch_size', 'task_chunk_size', 'inner_steps',
              'eval_inner_steps', 'num_iterations', 'eval_every',
              'num_val_tasks', 'num_eval_tasks', 'eval_batch_size',
              'image_size', 'num_filters', 'seed', 'eval_seed',
              'checkpoint_every', 'keep_checkpoints', 'log_every')
_FLOAT_FLAGS = ('inner_lr', 'meta_lr', 'meta_lr_final')
_CONFIG_FLAGS = _INT_FLAGS + _FLOAT_FLAGS + (
    'algorithm', 'split', 'inner_optimizer', 'meta_optimizer', 'conv_impl')
FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the flags; only when run as a program, so that the experiment
  modules can be imported together (absl flags are global)."""
  flags.DEFINE_string('workdir', None, 'Directory of the run (required).')
  flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                    'train: meta-train (resuming if the workdir has a run), '
                    'then test; eval: test the best checkpoint of the workdir.')
  flags.DEFINE_enum('preset', None, sorted(PRESETS), 'Published settings.')
  flags.DEFINE_string('data_dir', None,
                      'TFDS data dir for the prepared cache.')
  flags.DEFINE_string('source_dir', None,
                      'Directory with the Omniglot zips (default: the copy '
                      'shipped in data/omniglot).')
  flags.DEFINE_bool('progress', True, 'Show a progress bar.')
  flags.DEFINE_enum('algorithm', None, list(jaxmeta.ALGORITHMS), 'Algorithm.')
  flags.DEFINE_enum('split', None, list(omniglot.SPLIT_SCHEMES),
                    'Character split.')
  flags.DEFINE_enum('inner_optimizer', None, ['sgd', 'adam'],
                    'Inner optimiser (adam only for reptile).')
  flags.DEFINE_enum('meta_optimizer', None, ['adam', 'sgd'],
                    'Outer optimiser.')
  flags.DEFINE_enum('conv_impl', None, list(jaxmeta.models.CONV_IMPLS),
                    'Convolution implementation.')
  for name in _INT_FLAGS:
    flags.DEFINE_integer(name, None, f'Overrides config.{name}.')
  for name in _FLOAT_FLAGS:
    flags.DEFINE_float(name, None, f'Overrides config.{name}.')


class ConfigError(ValueError):
  """A configuration that cannot run, found before any compilation."""


def build_config(preset: str | None = None,
                 overrides: dict[str, Any] | None = None
                 ) -> ml_collections.ConfigDict:
  """Default config, then the preset's fields, then explicit overrides."""
  config = get_config()
  if preset:
    if preset not in PRESETS:
      raise ConfigError(f'Unknown preset {preset!r}; choose one of '
                        f'{sorted(PRESETS)}.')
    config.update(PRESETS[preset])
    config.preset = preset
  for name, value in (overrides or {}).items():
    if name not in config:
      raise ConfigError(f'Unknown config field {name!r}.')
    config[name] = value
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks everything that can be checked without data or compilation."""
  if config.algorithm not in jaxmeta.ALGORITHMS:
    raise ConfigError(f'Unknown algorithm {config.algorithm!r}; choose one '
                      f'of {jaxmeta.ALGORITHMS}.')
  if config.split not in omniglot.SPLIT_SCHEMES:
    raise ConfigError(f'Unknown split {config.split!r}; choose one of '
                      f'{omniglot.SPLIT_SCHEMES}.')
  for name in ('ways', 'shots', 'queries', 'meta_batch_size', 'num_val_tasks',
               'num_eval_tasks', 'eval_batch_size', 'num_filters',
               'eval_every', 'checkpoint_every', 'keep_checkpoints',
               'log_every', 'image_size'):
    if config[name] < 1:
      raise ConfigError(f'--{name} must be >= 1, got {config[name]}.')
  for name in ('inner_steps', 'eval_inner_steps', 'num_iterations',
               'train_shots', 'train_queries', 'task_chunk_size'):
    if config[name] < 0:
      raise ConfigError(f'--{name} must be >= 0, got {config[name]}.')
  if config.inner_lr <= 0 or config.meta_lr <= 0:
    raise ConfigError('--inner_lr and --meta_lr must be positive, got '
                      f'{config.inner_lr} and {config.meta_lr}.')
  if config.ways < 2:
    raise ConfigError(f'--ways must be >= 2 for classification, got '
                      f'{config.ways}.')
  for shots, queries in (_train_shape(config), (config.shots,
                                                 config.queries)):
    if shots + queries > omniglot.NUM_DRAWINGS:
      raise ConfigError(
          f'shots + queries = {shots} + {queries} exceeds the '
          f'{omniglot.NUM_DRAWINGS} drawings of an Omniglot character; lower '
          '--shots/--train_shots or --queries/--train_queries.')
  chunk = config.task_chunk_size
  if chunk and config.meta_batch_size % chunk:
    raise ConfigError(f'--task_chunk_size={config.task_chunk_size} must '
                      f'divide --meta_batch_size={config.meta_batch_size}.')
  if config.inner_optimizer == 'adam' and config.algorithm != 'reptile':
    raise ConfigError('--inner_optimizer=adam applies to reptile only; '
                      'MAML differentiates plain SGD inner steps.')
  if config.image_size < 16 or config.image_size > 105:
    raise ConfigError('--image_size must be in [16, 105] for Conv-4 on '
                      f'Omniglot, got {config.image_size}.')


def _train_shape(config) -> tuple[int, int]:
  """(shots, queries) per class of the training tasks."""
  return (config.train_shots or config.shots,
          config.train_queries or config.queries)


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses a workdir that holds a run of a different configuration."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  import json  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    saved = json.load(f)
  current = common.to_python(config.to_dict())
  diffs = {k: (saved.get(k), v) for k, v in current.items()
           if k not in _RESUMABLE_FIELDS and saved.get(k) != v}
  if diffs:
    listed = ', '.join(f'{k}: saved {a!r} vs now {b!r}'
                       for k, (a, b) in sorted(diffs.items()))
    raise ConfigError(
        f'{workdir} holds a run of a different configuration ({listed}). '
        'Use a new --workdir, or the same flags to resume that run.')


def make_learner(config: ml_collections.ConfigDict) -> jaxmeta.MetaLearner:
  model = jaxmeta.conv4(config.ways, (config.image_size, config.image_size, 1),
                        num_filters=config.num_filters,
                        conv_impl=config.conv_impl)
  inner_optimizer = None
  if config.inner_optimizer == 'adam':
    inner_optimizer = optax.adam(config.inner_lr, b1=0.0)
  return jaxmeta.make_learner(config.algorithm, model.init,
                              jaxmeta.classification_loss(model.apply),
                              config.inner_lr, config.inner_steps,
                              inner_optimizer)


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> optax.GradientTransformation:
  lr = config.meta_lr
  if config.meta_lr_final >= 0:
    lr = optax.linear_schedule(config.meta_lr, config.meta_lr_final,
                               max(config.num_iterations, 1))
  if config.meta_optimizer == 'adam':
    return optax.adam(lr)
  return optax.sgd(lr)


def _load_split(config, split, data_dir, source_dir):
  data = omniglot.load(split, config.split, image_size=config.image_size,
                       data_dir=data_dir, source_dir=source_dir)
  num_classes, num_drawings = data.images.shape[:2]
  try:
    episodes.check_episode_config(num_classes, num_drawings, config.ways,
                                  *_train_shape(config))
    episodes.check_episode_config(num_classes, num_drawings, config.ways,
                                  config.shots, config.queries)
  except episodes.EpisodeConfigError as e:
    raise ConfigError(f'The {split} split of {config.split!r}: {e}') from e
  return jax.device_put(data.images)  # uint8 [classes, 20, S, S, 1]


class Evaluator:
  """Accuracy over a fixed set of tasks, in compiled chunks of tasks."""

  def __init__(self, learner, config):
    self._chunk = config.eval_batch_size
    shape = dict(ways=config.ways, shots=config.shots, queries=config.queries)
    evaluate = jaxmeta.make_evaluate(learner, config.eval_inner_steps)

    def run_chunk(params, images, keys):
      tasks = jax.vmap(functools.partial(episodes.sample_task, images=images,
                                         **shape))(keys)
      metrics = evaluate(params, tasks)
      return metrics['accuracy'], metrics['accuracy_by_step']

    self._run_chunk = jax.jit(run_chunk)

  def __call__(self, params, images, keys) -> tuple[np.ndarray, np.ndarray]:
    """Per-task accuracy `[n]` and accuracy after each step `[n, steps+1]`."""
    n = keys.shape[0]
    padded = -(-n // self._chunk) * self._chunk
    # Pad with repeated keys so that every call has the same shape.
    keys = jnp.concatenate([keys, keys[:padded - n]]) if padded > n else keys
    acc, by_step = [], []
    for i in range(0, padded, self._chunk):
      a, b = self._run_chunk(params, images, keys[i:i + self._chunk])
      acc.append(np.asarray(a))
      by_step.append(np.asarray(b))
    return np.concatenate(acc)[:n], np.concatenate(by_step)[:n]


def _make_train_step(learner, optimizer, config):
  shots, queries = _train_shape(config)
  shape = dict(num_tasks=config.meta_batch_size, ways=config.ways,
               shots=shots, queries=queries)

  def train_step(state, images):
    sample = functools.partial(episodes.sample_tasks, images=images, **shape)
    new_state, metrics = jaxmeta.make_meta_train_step(
        learner, optimizer, sample,
        task_chunk_size=(config.task_chunk_size or
                         jaxmeta.default_task_chunk_size(
                             config.meta_batch_size)))(state)
    # A non-finite step is not applied: the state stays the last good one,
    # so the host can name the step and nothing bad reaches a checkpoint.
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(
        metrics['meta_grad_norm'])
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state,
                             state)
    return new_state, dict(metrics, finite=finite)

  return jax.jit(train_step, donate_argnums=0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data_dir: str | None = None,
                       source_dir: str | None = None,
                       progress: bool = True) -> dict[str, Any]:
  """Meta-trains (resuming if possible), then tests the best checkpoint."""
  validate(config)
  check_workdir(workdir, config)
  train_images = _load_split(config, 'train', data_dir, source_dir)
  val_images = _load_split(config, 'val', data_dir, source_dir)
  os.makedirs(workdir, exist_ok=True)
  common.write_json(os.path.join(workdir, 'config.json'), config.to_dict())

  learner = make_learner(config)
  optimizer = make_optimizer(config)
  state = jaxmeta.init_train_state(learner, optimizer,
                                   jax.random.PRNGKey(config.seed))
  checkpoints = common.Checkpoints(workdir, config.keep_checkpoints)
  best = {'step': -1, 'val_accuracy': -1.0}
  restored = common.Checkpoints.restore(checkpoints.latest, state)
  if restored is not None:
    state, meta = restored
    best = meta['best']
    print(f'Resuming from step {int(state.step)} of {workdir}.')

  train_step = _make_train_step(learner, optimizer, config)
  evaluator = Evaluator(learner, config)
  val_keys = episodes.eval_task_keys(config.eval_seed + 1,
                                     config.num_val_tasks)
  writer = common.MetricWriter(workdir)
  start_step = int(state.step)
  config_dict = config.to_dict()

  def validate_and_checkpoint(state, step):
    acc, _ = evaluator(state.params, val_images, val_keys)
    val_accuracy, val_ci = jaxmeta.mean_and_ci95(acc)
    writer.write(step, {'accuracy': val_accuracy, 'ci95': val_ci},
                 prefix='val/')
    if val_accuracy > best['val_accuracy']:
      best.update(step=step, val_accuracy=val_accuracy)
      checkpoints.save_best(step, state, config_dict, best=best)
    return val_accuracy

  start = time.time()
  bar = tqdm.tqdm(total=config.num_iterations, initial=start_step,
                  disable=not progress, desc=f'omniglot {config.algorithm}')
  step = start_step
  compile_seconds = None
  while step < config.num_iterations:
    state, metrics = train_step(state, train_images)
    step += 1
    if compile_seconds is None:
      jax.block_until_ready(state)
      compile_seconds = time.time() - start
      start = time.time()  # Steps per second exclude the first compilation.
      first_timed_step = step
    if step % config.log_every == 0 or step == config.num_iterations:
      metrics = jax.device_get(metrics)
      if not metrics.pop('finite'):
        last = checkpoints.latest.latest_step()
        raise FloatingPointError(
            f'The meta-loss became non-finite at step {int(state.step) + 1} '
            f'(loss {metrics["loss"]}, meta-gradient norm '
            f'{metrics["meta_grad_norm"]}). Likely cause: --inner_lr '
            f'({config.inner_lr}) or --meta_lr ({config.meta_lr}) too large. '
            f'The last good checkpoint (step {last}) is kept in '
            f'{workdir}/checkpoints.')
      writer.write(step, metrics, prefix='train/')
      bar.set_postfix(loss=f"{metrics['loss']:.3f}",
                      acc=f"{metrics['accuracy']:.3f}")
    bar.update(1)
    if step % config.eval_every == 0 or step == config.num_iterations:
      val_accuracy = validate_and_checkpoint(state, step)
      bar.write(f'step {step}: val accuracy {val_accuracy:.4f} '
                f'(best {best["val_accuracy"]:.4f} at {best["step"]})')
    if step % config.checkpoint_every == 0 or step == config.num_iterations:
      checkpoints.save_latest(step, state, config_dict, best=best)
  bar.close()
  jax.block_until_ready(state)
  train_seconds = time.time() - start
  timed_steps = step - first_timed_step if compile_seconds else 0
  steps_per_second = timed_steps / train_seconds if timed_steps else None
  if best['step'] < 0:  # No training step in this call and none saved.
    validate_and_checkpoint(state, step)

  results = test(config, workdir, learner, checkpoints, data_dir, source_dir)
  results.update(
      iterations=step, steps_per_second=steps_per_second,
      compile_seconds=compile_seconds, train_seconds=train_seconds,
      resumed_from_step=start_step)
  writer.write(step, {'accuracy': results['test_accuracy'],
                      'ci95': results['test_ci95']}, prefix='test/')
  writer.close()
  checkpoints.close()
  common.write_json(os.path.join(workdir, 'results.json'), results)
  return results


def test(config, workdir, learner, checkpoints, data_dir, source_dir):
  """Tests the best-validation checkpoint on the fixed test tasks."""
  test_images = _load_split(config, 'test', data_dir, source_dir)
  like = jaxmeta.init_train_state(learner, make_optimizer(config),
                                  jax.random.PRNGKey(config.seed))
  restored = common.Checkpoints.restore(checkpoints.best, like)
  if restored is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}/best to test; '
                            'train first (--mode=train).')
  state, meta = restored
  keys = episodes.eval_task_keys(config.eval_seed, config.num_eval_tasks)
  acc, by_step = Evaluator(learner, config)(state.params, test_images, keys)
  mean, ci95 = jaxmeta.mean_and_ci95(acc)
  return {
      'algorithm': config.algorithm, 'preset': config.preset or None,
      'ways': config.ways, 'shots': config.shots, 'queries': config.queries,
      'split': config.split, 'eval_inner_steps': config.eval_inner_steps,
      'test_accuracy': mean, 'test_ci95': ci95,
      'num_test_tasks': config.num_eval_tasks,
      'test_accuracy_by_step': by_step.mean(axis=0).tolist(),
      'best_step': int(state.step),
      'best_val_accuracy': meta['best']['val_accuracy'],
      'config': config.to_dict(),
  }


def evaluate_only(config, workdir, data_dir=None, source_dir=None):
  """`--mode=eval`: tests the best checkpoint of `workdir`."""
  saved = os.path.join(workdir, 'config.json')
  if not os.path.exists(saved):
    raise ConfigError(f'{workdir} holds no run (no config.json); train first.')
  check_workdir(workdir, config)
  learner = make_learner(config)
  checkpoints = common.Checkpoints(workdir, config.keep_checkpoints)
  results = test(config, workdir, learner, checkpoints, data_dir, source_dir)
  checkpoints.close()
  common.write_json(os.path.join(workdir, 'eval.json'), results)
  return results


def config_from_flags() -> ml_collections.ConfigDict:
  overrides = {name: FLAGS[name].value for name in _CONFIG_FLAGS
               if FLAGS[name].value is not None}
  if FLAGS.mode == 'eval' and FLAGS.workdir:
    # Evaluate the run as it was configured; flags may still override.
    path = os.path.join(FLAGS.workdir, 'config.json')
    if os.path.exists(path):
      import json  # pylint: disable=g-import-not-at-top
      with open(path) as f:
        saved = json.load(f)
      config = get_config()
      config.update({k: v for k, v in saved.items() if k in config})
      config.update(overrides)
      return config
  return build_config(FLAGS.preset, overrides)


def main(argv):
  common.check_command_line(argv, 'workdir')
  try:
    config = config_from_flags()
    validate(config)
    if FLAGS.mode == 'eval':
      results = evaluate_only(config, FLAGS.workdir, FLAGS.data_dir,
                              FLAGS.source_dir)
    else:
      results = train_and_evaluate(config, FLAGS.workdir, FLAGS.data_dir,
                                   FLAGS.source_dir, FLAGS.progress)
  except (ConfigError, omniglot.OmniglotError) as e:
    raise app.UsageError(str(e)) from e
  print(f"{results['algorithm']} {results['ways']}-way {results['shots']}-shot"
        f" Omniglot ({results['split']} split): test accuracy "
        f"{100 * results['test_accuracy']:.2f}% +- "
        f"{100 * results['test_ci95']:.2f}% (95% CI, "
        f"{results['num_test_tasks']} tasks, "
        f"{results['eval_inner_steps']} inner steps; best validation step "
        f"{results['best_step']}). Results: {FLAGS.workdir}/"
        f"{'eval' if FLAGS.mode == 'eval' else 'results'}.json")


if __name__ == '__main__':
  common.reexec_with_huge_pages()
  define_flags()
  app.run(main)
