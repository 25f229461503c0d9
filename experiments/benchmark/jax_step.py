"""jaxmeta's side: the batch, the learner, the checked and the timed step."""

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import jaxmeta
from . import xla_costs
from .checks import flatten_params
from .timing import Timer

Config = ml_collections.ConfigDict
FLOPS_SOURCE = 'XLA cost analysis of the step, loops unrolled'


def make_tasks(config: Config, key: jax.Array) -> jaxmeta.Task:
  """A meta-batch of random image-like inputs with balanced labels.

  Pixels in [0, 1] like real images: Bernoulli(0.2) strokes for one channel
  (Omniglot-like), uniform for three. (On N(0, 1) noise, second-order MAML
  is so ill-conditioned that float32 meta-gradients of any implementation
  differ from float64 by up to 2e-3; on [0, 1] images by ~3e-6.)

  Returns:
    A `Task`: `support_x` `[meta_batch, ways * shots, H, W, C]`, `support_y`
    `[meta_batch, ways * shots]` int32; the query set with `ways * queries`.
  """
  support_key, query_key = jax.random.split(key)

  def images(k, per_class):
    shape = (config.meta_batch, config.ways * per_class) + config.input_shape
    if config.input_shape[-1] == 1:
      return jax.random.bernoulli(k, 0.2, shape).astype(jnp.float32)
    return jax.random.uniform(k, shape, jnp.float32)

  def labels(per_class):
    one = jnp.repeat(jnp.arange(config.ways, dtype=jnp.int32), per_class)
    return jnp.tile(one, (config.meta_batch, 1))

  return jaxmeta.Task(
    images(support_key, config.shots),
    labels(config.shots),
    images(query_key, config.queries),
    labels(config.queries),
  )


def jax_setup(config: Config, algorithm: str, conv_impl: str):
  """The learner of `algorithm` on `config`'s Conv-4, and the Adam update."""
  model = jaxmeta.conv4(
    config.ways,
    config.input_shape,
    config.num_filters,
    config.num_blocks,
    conv_impl=conv_impl,
  )
  # The PyTorch Reptiles do the update only; so does this one (no query
  # scoring for monitoring, see `jaxmeta.reptile`).
  options = {'query_metrics': False} if algorithm == 'reptile' else {}
  learner = jaxmeta.make_learner(
    algorithm,
    model,
    jaxmeta.classification_loss,
    config.inner_lr,
    config.inner_steps,
    **options,
  )
  return learner, optax.adam(config.outer_lr)


def jax_task_chunk_size(config: Config, settings: Config) -> int | None:
  """The task chunking of jaxmeta's timed (and checked) step:
  `--task_chunk_size`, else the backend's default."""
  if settings.task_chunk_size > 0:
    return settings.task_chunk_size
  return jaxmeta.default_task_chunk_size(config.meta_batch)


def jax_meta_gradient(
  config: Config,
  algorithm: str,
  conv_impl: str,
  params,
  tasks,
  float64: bool = False,
  task_chunk_size: int | None = None,
) -> dict[str, np.ndarray]:
  """jaxmeta's mean meta-gradient at full float32 (or float64) precision,
  `task_chunk_size` tasks vmapped at a time (None: the backend's
  default)."""
  learner, _ = jax_setup(config, algorithm, conv_impl)
  fn = functools.partial(
    jaxmeta.meta_gradient, learner, task_chunk_size=task_chunk_size
  )
  dtype = jnp.float64 if float64 else jnp.float32
  with jax.enable_x64(float64), jax.default_matmul_precision('highest'):
    params, tasks = jax.tree.map(
      lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v,
      (params, tasks),
    )
    # A check runs once: on GPUs it compiles without autotuning, which takes
    # tens of seconds on a full-size MAML step (benchmarks/README.md).
    options = (
      {'xla_gpu_autotune_level': 0} if jax.default_backend() == 'gpu' else None
    )
    compiled = (
      jax.jit(fn).lower(params, tasks).compile(compiler_options=options)
    )
    grads, _ = compiled(params, tasks)
  return flatten_params(grads, dtype)


def program_peak_bytes(compiled) -> int | None:
  """Device memory one run of a compiled program needs, from XLA's analysis:
  arguments + outputs - donated buffers + temporaries (the device's
  `peak_bytes_in_use` counts since the process started)."""
  try:
    m = compiled.memory_analysis()
  except Exception:
    m = None
  if m is None:
    return None
  return int(
    m.argument_size_in_bytes
    + m.output_size_in_bytes
    - m.alias_size_in_bytes
    + m.temp_size_in_bytes
  )


def meta_step(
  config: Config,
  algorithm: str,
  conv_impl: str,
  init_key: jax.Array,
  settings: Config,
):
  """jaxmeta's timed meta-step, jitted with the state donated, its initial
  state and its task chunking."""
  learner, optimizer = jax_setup(config, algorithm, conv_impl)
  chunk = jax_task_chunk_size(config, settings)
  step = jax.jit(
    jaxmeta.make_meta_train_step(learner, optimizer, task_chunk_size=chunk),
    donate_argnums=0,
  )
  return step, jaxmeta.init_train_state(learner, optimizer, init_key), chunk


def start_jax_timer(
  config: Config,
  algorithm: str,
  conv_impl: str,
  init_key: jax.Array,
  tasks: jaxmeta.Task,
  settings: Config,
) -> Timer:
  """Compiles jaxmeta's jitted meta-step (meta-gradient + Adam, state
  donated) and runs it once; its info has XLA's FLOP count of the step."""
  step, state, chunk = meta_step(
    config, algorithm, conv_impl, init_key, settings
  )
  carry = {'state': state}
  # The precision is fixed when the step is traced and compiled.
  precision = None if settings.timing_precision == 'default' else 'highest'
  with jax.default_matmul_precision(precision):
    start = time.perf_counter()
    compiled = step.lower(carry['state'], tasks).compile()
  compile_s = time.perf_counter() - start

  def run():
    carry['state'], carry['metrics'] = compiled(carry['state'], tasks)
    jax.block_until_ready((carry['state'], carry['metrics']))

  run()
  first_step_s = time.perf_counter() - start
  flops = xla_costs.unrolled_flops(step, carry['state'], tasks)

  def finish():
    metrics = carry['metrics']
    return {
      'final_loss': float(metrics.get('loss', metrics.get('support_loss')))
    }

  return Timer(
    run,
    dict(
      task_chunk_size=chunk,
      compile_s=compile_s,
      first_step_s=first_step_s,
      first_run_s=first_step_s - compile_s,
      peak_memory_bytes=program_peak_bytes(compiled),
      peak_memory_source='XLA memory analysis of the compiled step',
      flops=flops,
      flops_source=FLOPS_SOURCE,
    ),
    finish,
  )
