r"""Meta-training on the sinusoid regression family (Finn et al. 2017, 5.1).

  python -m experiments.sinusoid --workdir=/tmp/sinusoid

meta-trains an MLP 1-40-40-1 with MAML (inner lr 0.01, K = 10, meta-batch
25, Adam 1e-3), then adapts it to held-out tasks and writes
`WORKDIR/results.json` with the query MSE before adaptation and after 1..10
inner steps (as in the paper's Figure 2), plus `metrics.jsonl` and
TensorBoard files. `--algorithm=pretrain` trains the paper's baseline: one
network on all tasks jointly, fine-tuned the same way at test time.
"""

import functools
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tqdm

import jaxmeta
from jaxmeta.data import sinusoid
from experiments import common


def get_config() -> ml_collections.ConfigDict:
  """The paper's settings; the iteration count keeps the run to ~a minute."""
  config = ml_collections.ConfigDict()
  config.algorithm = 'maml'
  config.hidden = (40, 40)
  config.shots = 10  # K support points per task (5 or 10 in the paper).
  config.queries = 10  # Query points per task during meta-training.
  config.meta_batch_size = 25
  config.inner_lr = 0.01
  config.inner_steps = 1
  config.eval_inner_steps = 10
  config.meta_lr = 1e-3
  config.num_iterations = 15_000  # The paper trains 70,000.
  config.num_eval_tasks = 600
  config.eval_queries = 100  # Query points scored per held-out task.
  config.log_every = 500
  config.seed = 0
  config.eval_seed = 1234
  return config


FLAGS = flags.FLAGS
_OVERRIDES = ('algorithm', 'num_iterations', 'shots', 'inner_steps',
              'eval_inner_steps', 'inner_lr', 'meta_lr', 'meta_batch_size',
              'num_eval_tasks', 'seed')


def define_flags() -> None:
  """Defines the command-line flags; only when run as a program, so that the
  experiment modules can be imported together (absl flags are global)."""
  flags.DEFINE_string('workdir', None, 'Output directory.')
  flags.DEFINE_enum('algorithm', None, jaxmeta.ALGORITHMS + jaxmeta.BASELINES,
                    'Algorithm (default maml).')
  flags.DEFINE_integer('num_iterations', None, 'Meta-training iterations.')
  flags.DEFINE_integer('shots', None, 'Support points K per task.')
  flags.DEFINE_integer('inner_steps', None, 'Inner steps in meta-training.')
  flags.DEFINE_integer('eval_inner_steps', None, 'Inner steps at evaluation.')
  flags.DEFINE_float('inner_lr', None, 'Inner learning rate.')
  flags.DEFINE_float('meta_lr', None, 'Adam learning rate.')
  flags.DEFINE_integer('meta_batch_size', None, 'Tasks per meta-batch.')
  flags.DEFINE_integer('num_eval_tasks', None, 'Held-out evaluation tasks.')
  flags.DEFINE_integer('seed', None, 'Seed of initialisation and data.')
  flags.DEFINE_bool('progress', True, 'Show a progress bar.')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for settings that cannot run."""
  for name in ('shots', 'queries', 'meta_batch_size', 'num_eval_tasks',
               'eval_queries'):
    if config[name] < 1:
      raise ValueError(f'--{name} must be >= 1, got {config[name]}.')
  for name in ('num_iterations', 'inner_steps', 'eval_inner_steps'):
    if config[name] < 0:
      raise ValueError(f'--{name} must be >= 0, got {config[name]}.')
  if config.inner_lr <= 0 or config.meta_lr <= 0:
    raise ValueError('--inner_lr and --meta_lr must be positive.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       progress: bool = True) -> dict:
  """Meta-trains, evaluates on held-out tasks, writes results.json."""
  validate(config)
  model = jaxmeta.mlp((1, *config.hidden, 1))
  learner = jaxmeta.make_learner(
      config.algorithm, model.init, jaxmeta.regression_loss(model.apply),
      config.inner_lr, config.inner_steps)
  optimizer = optax.adam(config.meta_lr)
  state = jaxmeta.init_train_state(learner, optimizer,
                                   jax.random.PRNGKey(config.seed))
  sample = functools.partial(sinusoid.sample_tasks,
                             num_tasks=config.meta_batch_size,
                             shots=config.shots, queries=config.queries)
  train_step = jax.jit(
      jaxmeta.make_meta_train_step(learner, optimizer, sample),
      donate_argnums=0)

  writer = common.MetricWriter(workdir)
  start = time.time()
  bar = tqdm.trange(config.num_iterations, disable=not progress,
                    desc=f'sinusoid {config.algorithm}')
  for _ in bar:
    state, metrics = train_step(state)
    step = int(state.step)
    if step % config.log_every == 0 or step == config.num_iterations:
      metrics = jax.device_get(metrics)
      if not jnp.isfinite(metrics['loss']):
        raise FloatingPointError(
            f'Non-finite meta-loss at step {step}; lower --inner_lr or '
            '--meta_lr.')
      writer.write(step, metrics, prefix='train/')
      bar.set_postfix(mse=f"{float(metrics['mse']):.3f}")
  jax.block_until_ready(state)
  train_seconds = time.time() - start

  test_tasks = sinusoid.sample_tasks(
      jax.random.PRNGKey(config.eval_seed), config.num_eval_tasks,
      config.shots, config.eval_queries)
  evaluate = jax.jit(jaxmeta.make_evaluate(learner, config.eval_inner_steps))
  mse_by_step = evaluate(state.params, test_tasks)['mse_by_step']  # [n, s+1]
  by_step = [jaxmeta.mean_and_ci95(mse_by_step[:, s])
             for s in range(mse_by_step.shape[1])]
  results = {
      'algorithm': config.algorithm,
      'iterations': int(state.step),
      'shots': config.shots,
      'eval_inner_steps': config.eval_inner_steps,
      'num_eval_tasks': config.num_eval_tasks,
      'pre_adaptation_mse': by_step[0][0],
      'pre_adaptation_mse_ci95': by_step[0][1],
      'post_adaptation_mse': by_step[-1][0],
      'post_adaptation_mse_ci95': by_step[-1][1],
      'post_adaptation_mse_by_step': [m for m, _ in by_step],
      'train_seconds': train_seconds,
      'steps_per_second': int(state.step) / max(train_seconds, 1e-9),
      'config': config.to_dict(),
  }
  writer.write(int(state.step), {'pre_adaptation_mse': by_step[0][0],
                                 'post_adaptation_mse': by_step[-1][0]},
               prefix='test/')
  writer.close()
  common.write_json(f'{workdir}/results.json', results)
  return results


def main(argv):
  common.check_command_line(argv, 'workdir')
  config = get_config()
  for name in _OVERRIDES:
    if FLAGS[name].value is not None:
      config[name] = FLAGS[name].value
  try:
    validate(config)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  results = train_and_evaluate(config, FLAGS.workdir, FLAGS.progress)
  print(f"{results['algorithm']}: query MSE before adaptation "
        f"{results['pre_adaptation_mse']:.3f}, after "
        f"{config.eval_inner_steps} steps "
        f"{results['post_adaptation_mse']:.3f} "
        f"(+- {results['post_adaptation_mse_ci95']:.3f}, "
        f"{config.num_eval_tasks} tasks); {FLAGS.workdir}/results.json")


if __name__ == '__main__':
  common.reexec_with_huge_pages()
  define_flags()
  app.run(main)
