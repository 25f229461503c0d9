r"""Meta-step speed of jaxmeta against PyTorch implementations, correctness first.

For each configuration (model, task shapes, meta-batch) and algorithm (MAML,
first-order MAML, Reptile) it builds ONE set of initial weights (jaxmeta's
`conv4` init, fixed seed) and ONE meta-batch of random images and labels
(`jax.random`, fixed seed; random data, not Omniglot: speed does not depend on
pixel values), then:

1. Cross-check: computes the mean meta-gradient with `jaxmeta.meta_gradient`
   (with the timed step's task chunking: the checked program is the timed
   one) and with every PyTorch implementation on those weights and that batch, in
   float32 with full-precision matmuls (no TF32, JAX matmul precision
   'highest'), and compares them tensor by tensor. The reference is jaxmeta
   with the FIRST of `--conv_impls` (list 'xla' first to make XLA's direct
   convolution the reference); every other jaxmeta conv implementation and
   every PyTorch implementation is checked against it, and (`--float64_check`,
   default) computed again in float64 against jaxmeta's float64 result; see
   `verdict` for the pass rule. An implementation that fails gets no speed
   figure and the run exits non-zero after writing its outputs.
2. Timing: the whole meta-step (meta-gradient + Adam update) of each
   implementation that passed: jaxmeta's jitted `make_meta_train_step` (state
   donated), and the PyTorch step (`zero_grad`, meta-gradient, `Adam.step`).
   The implementations of one configuration and algorithm are compiled and
   run once each, then timed in turns of `--interleave_block` steps, so that
   a change of load on a shared machine does not bias their ratios. Median and
   min over the timed steps, synchronised with `jax.block_until_ready` /
   `torch.cuda.synchronize`.

Implementations: `jaxmeta` (one row per `--conv_impls` entry), `torch_loop`
(per-task loop, learn2learn/higher style), `torch_func` (`torch.func` with
`vmap` over tasks), `torch_higher` (the `higher` library). See
`experiments/torch_baselines.py`.

  python -m experiments.benchmark --out=/tmp/bench                 # full size
  python -m experiments.benchmark --size=tiny --out=/tmp/bench      # CI size
  python -m experiments.benchmark --configs=omniglot_5w1s_mb4 \
      --conv_impls=xla,patches --out=benchmarks/cpu

Outputs in `--out`: `benchmark.json` (settings, cross-checks, one row per
configuration x algorithm x implementation; strict JSON: a non-finite number,
e.g. the relative error of a NaN gradient, is written as null),
`benchmark.md` (a table) and `benchmark.png` (ms per meta-step, log scale).

Algorithms: MAML, first-order MAML and Reptile (`ALGORITHMS`), which
`experiments/torch_baselines.py` implements too. PyTorch
(`requirements-benchmark.txt`) is optional: without it,
`--implementations=jaxmeta` times jaxmeta's alone.
"""

import dataclasses
import datetime
import functools
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxmeta
from . import common


class BenchmarkError(ValueError):
  """A bad request or a missing dependency: one line, printed without a trace."""


NO_TORCH = (
  'the PyTorch implementations need torch and higher: install '
  'requirements-benchmark.txt (pip install -r '
  'requirements-benchmark.txt), or pass --implementations=jaxmeta'
)


def import_torch_baselines():
  """Returns `experiments.torch_baselines`, or raises BenchmarkError(NO_TORCH)."""
  try:
    from . import torch_baselines
  except ImportError as e:
    raise BenchmarkError(f'{NO_TORCH} ({e}).') from e
  return torch_baselines


try:
  _torch_baselines = import_torch_baselines()
except BenchmarkError:
  _torch_baselines = None
# The algorithms with a PyTorch baseline (the same three for jaxmeta-only
# runs where PyTorch is not installed).
ALGORITHMS = ('maml', 'fomaml', 'reptile')
# Concrete conv implementations (`--conv_impls=all` expands to them).
ALL_CONV_IMPLS = tuple(i for i in jaxmeta.models.CONV_IMPLS if i != 'auto')
TORCH_IMPLEMENTATIONS = ('torch_loop', 'torch_func', 'torch_higher')
IMPLEMENTATIONS = ('jaxmeta',) + TORCH_IMPLEMENTATIONS
PRECISIONS = ('highest', 'default')
# Gradients whose norm is below this fraction of the whole meta-gradient's
# norm are zero in exact arithmetic (a parameter that batch norm cancels, as
# a conv bias would be), so their per-tensor relative error is rounding noise
# over rounding noise; they are compared against the global norm.
ZERO_GRAD_FRACTION = 1e-4
# How much `--debug_perturb_check` scales a torch gradient tensor by.
DEBUG_PERTURBATION = 1e-3
# Largest relative error between a PyTorch implementation's float64
# meta-gradient and jaxmeta's (the float64 check): the same function computed
# in float64 agrees to ~1e-13 even where float32 rounding, amplified by the
# problem's conditioning, leaves 1e-3; a larger gap is a different function.
FLOAT64_TOL = 1e-8
MIN_TIMED_STEPS = 3
BYTES_PER_MIB = 2**20


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """One benchmark configuration: model, task shapes and meta-batch.

  Attributes:
    name: configuration name used in flags and outputs.
    ways: classes per task (the head's width).
    shots: support examples per class.
    queries: query examples per class.
    meta_batch: tasks per meta-step.
    inner_steps: inner SGD steps per task.
    inner_lr: inner learning rate.
    input_shape: `(height, width, channels)`.
    num_filters: Conv-4 filters per layer.
    num_blocks: Conv-4 blocks.
    outer_lr: Adam learning rate of the meta-update.
  """

  name: str
  ways: int
  shots: int
  queries: int
  meta_batch: int
  inner_steps: int
  inner_lr: float
  input_shape: tuple[int, int, int]
  num_filters: int
  num_blocks: int = 4
  outer_lr: float = 1e-3


CONFIGS = {
  c.name: c
  for c in (
    BenchConfig(
      'omniglot_5w1s',
      ways=5,
      shots=1,
      queries=15,
      meta_batch=32,
      inner_steps=1,
      inner_lr=0.4,
      input_shape=(28, 28, 1),
      num_filters=64,
    ),
    # The CPU anchor: omniglot_5w1s at meta-batch 4 (2-core CPUs).
    BenchConfig(
      'omniglot_5w1s_mb4',
      ways=5,
      shots=1,
      queries=15,
      meta_batch=4,
      inner_steps=1,
      inner_lr=0.4,
      input_shape=(28, 28, 1),
      num_filters=64,
    ),
    BenchConfig(
      'omniglot_20w1s',
      ways=20,
      shots=1,
      queries=15,
      meta_batch=16,
      inner_steps=5,
      inner_lr=0.1,
      input_shape=(28, 28, 1),
      num_filters=64,
    ),
    BenchConfig(
      'miniimagenet_5w1s',
      ways=5,
      shots=1,
      queries=15,
      meta_batch=4,
      inner_steps=5,
      inner_lr=0.01,
      input_shape=(84, 84, 3),
      num_filters=32,
    ),
    # CI size: two tasks, 8 filters, two inner steps (so that second-order
    # terms through more than one step are cross-checked).
    BenchConfig(
      'tiny',
      ways=5,
      shots=1,
      queries=3,
      meta_batch=2,
      inner_steps=2,
      inner_lr=0.4,
      input_shape=(28, 28, 1),
      num_filters=8,
    ),
  )
}
DEFAULT_CONFIGS = {
  'full': ('omniglot_5w1s', 'omniglot_20w1s', 'miniimagenet_5w1s'),
  'tiny': ('tiny',),
}
DEFAULT_NUM_STEPS = {'full': 20, 'tiny': 3}
DEFAULT_WARMUP_STEPS = {'full': 2, 'tiny': 1}

FLAGS = flags.FLAGS


def _check_names(flag: str, known: Sequence[str], extra: Sequence[str] = ()):
  """A flag validator: every entry of the list flag is one of `known`."""

  def check(values):
    unknown = [v for v in values or () if v not in known and v not in extra]
    if unknown:
      raise flags.ValidationError(
        f'--{flag}: unknown {unknown}; choose from '
        f'{", ".join(list(known) + list(extra))}.'
      )
    return True

  return check


def _check_out(out):
  if out is not None and os.path.exists(out) and not os.path.isdir(out):
    raise flags.ValidationError(
      f'--out={out} is an existing file; the benchmark writes a folder '
      '(benchmark.json, .md, .png). Fix: name a new or existing folder.'
    )
  return True


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the flags; only when run as a program, so that the experiment
  modules can be imported together (absl flags are global)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('out', None, 'Output directory.', required=True, **fv)
  flags.DEFINE_enum(
    'size',
    'full',
    ['full', 'tiny'],
    'full: the paper configurations; tiny: CI shapes.',
    **fv,
  )
  flags.DEFINE_list(
    'configs',
    [],
    'Configurations to run (default: those of '
    f'--size). Known: {sorted(CONFIGS)}.',
    **fv,
  )
  flags.DEFINE_list(
    'algorithms',
    list(ALGORITHMS),
    f'Algorithms to run, any of {", ".join(ALGORITHMS)}.',
    **fv,
  )
  flags.DEFINE_list(
    'implementations',
    list(IMPLEMENTATIONS),
    f'Implementations to run, any of {", ".join(IMPLEMENTATIONS)}.',
    **fv,
  )
  flags.DEFINE_list(
    'conv_impls',
    ['auto'],
    'jaxmeta conv implementations to '
    f'time: any of {", ".join(jaxmeta.models.CONV_IMPLS)}; '
    f"'all' (or 'both') = {','.join(ALL_CONV_IMPLS)}.",
    **fv,
  )
  flags.DEFINE_integer(
    'num_steps',
    None,
    'Timed meta-steps per row (default 20; 3 at --size=tiny).',
    lower_bound=1,
    **fv,
  )
  flags.DEFINE_integer(
    'warmup_steps',
    None,
    'Untimed steps after the first (default 2; 1 at --size=tiny).',
    lower_bound=0,
    **fv,
  )
  flags.DEFINE_float(
    'max_seconds_per_row',
    0.0,
    'If > 0, time fewer than '
    '--num_steps steps (at least 3) where the warm-up says they '
    'would take longer than this; the row records the count.',
    lower_bound=0.0,
    **fv,
  )
  flags.DEFINE_enum(
    'timing_precision',
    'highest',
    PRECISIONS,
    'Matmul precision of the TIMED steps on both sides: highest '
    '(float32, no TF32: what the cross-check uses) or default '
    '(JAX default precision; TF32 allowed in torch on CUDA).',
    **fv,
  )
  flags.DEFINE_float(
    'check_tol',
    1e-4,
    'Largest relative error of the '
    'float32 meta-gradient against the reference, per '
    'parameter tensor (see `verdict` for the float64 rule).',
    lower_bound=0.0,
    **fv,
  )
  flags.DEFINE_bool(
    'float64_check',
    True,
    'Also compute the meta-gradient in '
    'float64 (jaxmeta, and every PyTorch implementation): '
    "reports each float32 result's error against it, and "
    'fails a PyTorch implementation whose float64 gradient '
    f"differs from jaxmeta's by more than {FLOAT64_TOL:g}.",
    **fv,
  )
  flags.DEFINE_integer(
    'task_chunk_size',
    0,
    'jaxmeta: tasks vmapped at once '
    'in the timed meta-step and its cross-check; 0: '
    'jaxmeta.default_task_chunk_size (one task at a time '
    'on CPUs, the whole meta-batch on accelerators).',
    lower_bound=0,
    **fv,
  )
  flags.DEFINE_integer(
    'interleave_block',
    5,
    'Timed steps of one '
    'implementation per turn (each turn starts with one '
    'untimed step); see `time_interleaved`.',
    lower_bound=1,
    **fv,
  )
  flags.DEFINE_integer(
    'seed', 0, 'Seed of the initial weights and the batch.', lower_bound=0, **fv
  )
  flags.DEFINE_string(
    'torch_device', 'auto', "'auto' (cuda if available), 'cpu' or 'cuda'.", **fv
  )
  flags.DEFINE_list(
    'debug_perturb_check',
    [],
    'Testing aid: torch '
    'implementations whose gradients are scaled by 1 + 1e-3 '
    'before the cross-check, which must then fail.',
    **fv,
  )
  for flag, known, extra in (
    ('configs', sorted(CONFIGS), ()),
    ('algorithms', ALGORITHMS, ()),
    ('implementations', IMPLEMENTATIONS, ()),
    ('conv_impls', jaxmeta.models.CONV_IMPLS, ('all', 'both')),
  ):
    flags.register_validator(flag, _check_names(flag, known, extra), **fv)
  flags.register_validator('out', _check_out, **fv)


@dataclasses.dataclass(frozen=True)
class Settings:
  """Run-wide settings (the parsed flags)."""

  out: str
  configs: tuple[str, ...]
  algorithms: tuple[str, ...]
  implementations: tuple[str, ...]
  conv_impls: tuple[str, ...]
  num_steps: int
  warmup_steps: int
  max_seconds_per_row: float = 0.0
  timing_precision: str = 'highest'
  check_tol: float = 1e-4
  seed: int = 0
  torch_device: str = 'auto'
  debug_perturb_check: tuple[str, ...] = ()
  task_chunk_size: int = 0
  float64_check: bool = True
  interleave_block: int = 5


# ----------------------------------------------------------------------------
# Data, weights and the cross-check.


def make_tasks(config: BenchConfig, key: jax.Array) -> jaxmeta.Task:
  """A meta-batch of random image-like inputs with balanced labels.

  Pixels in [0, 1] like real images: Bernoulli(0.2) strokes for one channel
  (Omniglot-like), uniform for three. N(0, 1) noise makes second-order MAML
  with inner lr 0.4 so ill-conditioned that float32 meta-gradients of ANY
  implementation (XLA's own convolution included) differ from the float64
  value by 1e-4 to 2e-3 relative; on [0, 1] images they agree to ~3e-6.

  Returns:
    A `Task` with `support_x` `[meta_batch, ways * shots, H, W, C]`,
    `support_y` `[meta_batch, ways * shots]` int32 (and the same for the
    query set with `ways * queries`).
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


def flatten_params(params, dtype=np.float32) -> dict[str, np.ndarray]:
  """`{'conv0': {'w': a}}` -> `{'conv0/w': np.asarray(a, dtype)}`."""
  return {
    f'{m}/{leaf}': np.array(v, dtype)
    for m, d in params.items()
    for leaf, v in d.items()
  }


def cross_check(
  reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], tol: float
) -> dict[str, Any]:
  """Compares two meta-gradients tensor by tensor.

  The error of tensor `t` is `||c_t - r_t|| / ||r_t||`, except for tensors
  whose reference norm is below `ZERO_GRAD_FRACTION * ||r||` (zero in exact
  arithmetic, e.g. a bias before batch norm), whose error is
  `||c_t - r_t|| / ||r||`.

  Args:
    reference: jaxmeta's meta-gradient, `{name: array}`.
    candidate: the other implementation's, same names and shapes.
    tol: largest allowed error per tensor.

  Returns:
    `{'passed', 'max_rel_err', 'worst_tensor', 'tensors': {name: {'rel_err',
    'ref_norm', 'scale'}}, 'problems': [...]}`; `scale` is 'tensor' or
    'global' (the near-zero rule).
  """
  problems = []
  if set(reference) != set(candidate):
    problems.append(
      f'parameter names differ: {sorted(set(reference))} vs '
      f'{sorted(set(candidate))}'
    )
  global_norm = float(
    np.sqrt(
      sum(np.sum(np.square(v, dtype=np.float64)) for v in reference.values())
    )
  )
  tensors = {}
  for name in sorted(set(reference) & set(candidate)):
    ref = np.asarray(reference[name], np.float64)
    cand = np.asarray(candidate[name], np.float64)
    if ref.shape != cand.shape:
      problems.append(f'{name}: shape {cand.shape} != {ref.shape}')
      tensors[name] = {
        'rel_err': float('inf'),
        'ref_norm': None,
        'scale': 'tensor',
      }
      continue
    ref_norm = float(np.linalg.norm(ref))
    near_zero = ref_norm < ZERO_GRAD_FRACTION * global_norm
    denom = global_norm if near_zero else ref_norm
    diff = float(np.linalg.norm(cand - ref))
    if denom > 0:
      err = diff / denom
    else:
      err = 0.0 if diff == 0 else float('inf')
    if not np.isfinite(cand).all():
      err = float('inf')
    tensors[name] = {
      'rel_err': err,
      'ref_norm': ref_norm,
      'scale': 'global' if near_zero else 'tensor',
    }
  errs = {n: t['rel_err'] for n, t in tensors.items()}
  worst = max(errs, key=errs.get) if errs else None
  max_err = errs[worst] if worst else float('inf')
  passed = not problems and bool(errs) and max_err <= tol
  return {
    'passed': passed,
    'max_rel_err': max_err,
    'worst_tensor': worst,
    'tol': tol,
    'tensors': tensors,
    'problems': problems,
  }


def verdict(
  entry: dict[str, Any], tol: float, reference_vs_float64: float | None
) -> tuple[bool, str]:
  """Whether an implementation's meta-gradient passes the cross-check.

  Passes if it computes the same function (its float64 meta-gradient agrees
  with jaxmeta's to `FLOAT64_TOL`, where the float64 check ran) and its
  float32 meta-gradient either agrees with the reference's to `tol`, or lies
  within the reference's own float32 error `e` (its distance from the float64
  meta-gradient) of the reference or of the float64 meta-gradient. The
  second way exists because at full size no two float32 implementations
  agree to 1e-4: a max-pool window whose two largest inputs (or a ReLU whose
  input) are closer than float32 resolves (to each other, to zero) routes
  the gradient another way (one window in one of 32 Omniglot tasks moves
  that task's gradient by 4%), differently in each implementation, while in
  float64 they agree to 1e-14.

  Args:
    entry: `cross_check(reference, candidate, tol)` of the float32
      meta-gradients, with `vs_float64_max_rel_err` and `float64_agreement`
      where the float64 check ran.
    tol: the float32 tolerance.
    reference_vs_float64: the reference's own float32 error against float64.

  Returns:
    `(passed, how)`: how is 'float32' or 'float64' (the rule that passed it),
    or why it failed: 'error', 'float64 mismatch', 'float32 mismatch'.
  """
  if entry.get('problems'):
    return False, 'error'
  agreement = entry.get('float64_agreement')
  if agreement is not None and not agreement <= FLOAT64_TOL:
    return False, 'float64 mismatch'
  if entry.get('max_rel_err') is not None and entry['max_rel_err'] <= tol:
    return True, 'float32'
  vs_float64 = entry.get('vs_float64_max_rel_err')
  if (
    agreement is not None
    and vs_float64 is not None
    and reference_vs_float64 is not None
    and min(entry['max_rel_err'], vs_float64) <= max(tol, reference_vs_float64)
  ):
    return True, 'float64'
  return False, 'float32 mismatch'


def float64_errors(
  truth: dict[str, np.ndarray] | None, got: dict[str, np.ndarray]
) -> dict[str, Any]:
  """A float32 meta-gradient's error against the float64 one (if computed)."""
  if truth is None:
    return {}
  result = cross_check(truth, got, float('inf'))
  return {
    'vs_float64_max_rel_err': result['max_rel_err'],
    'vs_float64_worst_tensor': result['worst_tensor'],
  }


# ----------------------------------------------------------------------------
# Environment.


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo, else `platform.processor()`."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def environment(torch_device: str | None) -> dict[str, Any]:
  """Device names, library versions and machine facts for every row."""
  jax_device = jax.devices()[0]
  env = {
    'jax_backend': jax.default_backend(),
    'jax_device': f'{jax_device.platform}:{jax_device.device_kind}',
    'cpu': cpu_name(),
    'cpu_count': os.cpu_count(),
    'python': platform.python_version(),
    'platform': platform.platform(),
    'versions': {
      p: package_version(p)
      for p in ('jax', 'jaxlib', 'optax', 'numpy', 'torch', 'higher')
    },
    'jaxmeta': getattr(jaxmeta, '__version__', None),
    # Set by `common.reexec_with_huge_pages` (both JAX and PyTorch run in
    # this one process, under the same allocator settings).
    'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
  }
  if torch_device is not None:
    import torch

    env['torch_device'] = (
      torch.cuda.get_device_name(0)
      if torch_device == 'cuda'
      else f'cpu:{cpu_name()}'
    )
    env['torch_num_threads'] = torch.get_num_threads()
  return env


def load_average() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def summarise(times_s: Sequence[float], meta_batch: int) -> dict[str, Any]:
  median = statistics.median(times_s)
  return {
    'median_ms': 1e3 * median,
    'min_ms': 1e3 * min(times_s),
    'max_ms': 1e3 * max(times_s),
    'num_timed_steps': len(times_s),
    'tasks_per_s': meta_batch / median,
  }


def timed_count(settings: Settings, last_warmup_s: float) -> int:
  """Timed steps: `num_steps`, fewer if `max_seconds_per_row` says so."""
  if settings.max_seconds_per_row <= 0 or last_warmup_s <= 0:
    return settings.num_steps
  affordable = int(settings.max_seconds_per_row / last_warmup_s)
  return max(
    min(settings.num_steps, MIN_TIMED_STEPS),
    min(settings.num_steps, affordable),
  )


# ----------------------------------------------------------------------------
# JAX side.


def jax_setup(config: BenchConfig, algorithm: str, conv_impl: str):
  model = jaxmeta.conv4(
    config.ways,
    config.input_shape,
    config.num_filters,
    config.num_blocks,
    conv_impl=conv_impl,
  )
  if algorithm == 'reptile':
    # The PyTorch Reptiles do the update only; so does this one (no query
    # scoring for monitoring, see `jaxmeta.reptile`).
    learner = jaxmeta.reptile(
      model,
      jaxmeta.classification_loss,
      config.inner_lr,
      config.inner_steps,
      query_metrics=False,
    )
  else:
    learner = jaxmeta.make_learner(
      algorithm,
      model,
      jaxmeta.classification_loss,
      config.inner_lr,
      config.inner_steps,
    )
  optimizer = optax.adam(config.outer_lr)
  return learner, optimizer


def _compile_unoptimised(fn, *args):
  """Compiles `fn` for a one-off check: on GPUs without autotuning.

  XLA:GPU autotunes every matmul and convolution of a program, which makes
  compiling a full-size MAML step take tens of seconds (see
  benchmarks/README.md). A check computed once does not need the fastest
  kernels.
  """
  lowered = jax.jit(fn).lower(*args)
  options = (
    {'xla_gpu_autotune_level': 0} if jax.default_backend() == 'gpu' else None
  )
  return lowered.compile(compiler_options=options)


def jax_task_chunk_size(config: BenchConfig, settings: Settings) -> int | None:
  """The task chunking of jaxmeta's timed step: `--task_chunk_size`, else
  the backend's default (one task at a time on CPUs, all at once on
  accelerators). The cross-check computes the meta-gradient with the same
  chunking, so that it checks the program that is timed."""
  if settings.task_chunk_size > 0:
    return settings.task_chunk_size
  return jaxmeta.default_task_chunk_size(config.meta_batch)


def jax_meta_gradient(
  config: BenchConfig,
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
  if float64:
    with jax.enable_x64(True), jax.default_matmul_precision('highest'):
      to64 = lambda v: (
        jnp.asarray(v, jnp.float64)
        if jnp.issubdtype(v.dtype, jnp.floating)
        else v
      )
      params, tasks = jax.tree.map(to64, (params, tasks))
      grads, _ = _compile_unoptimised(fn, params, tasks)(params, tasks)
      return flatten_params(grads, np.float64)
  with jax.default_matmul_precision('highest'):
    grads, _ = _compile_unoptimised(fn, params, tasks)(params, tasks)
  return flatten_params(grads)


def program_peak_bytes(compiled) -> int | None:
  """Device memory one run of a compiled program needs, from XLA's analysis.

  Arguments + outputs - donated (aliased) buffers + temporaries. Not the
  device's `peak_bytes_in_use`: that counts since the process started, so
  every row after the largest would report the largest (seen on an H200).
  """
  try:
    m = compiled.memory_analysis()
  except Exception:
    return None
  if m is None:
    return None
  return int(
    m.argument_size_in_bytes
    + m.output_size_in_bytes
    - m.alias_size_in_bytes
    + m.temp_size_in_bytes
  )


@dataclasses.dataclass
class Timer:
  """One implementation's meta-step, compiled and run once, ready to time.

  Attributes:
    step: runs one synchronised meta-step (device work finished on return).
    info: row fields known before timing (compile and first-step time, peak
      memory, ...).
    finish: returns row fields known after timing (e.g. the final loss).
  """

  step: Callable[[], None]
  info: dict[str, Any]
  finish: Callable[[], dict[str, Any]] = lambda: {}


def start_jax_timer(
  config: BenchConfig,
  algorithm: str,
  conv_impl: str,
  init_key: jax.Array,
  tasks: jaxmeta.Task,
  settings: Settings,
) -> Timer:
  """Compiles jaxmeta's jitted meta-step (meta-gradient + Adam, state
  donated) and runs it once."""
  learner, optimizer = jax_setup(config, algorithm, conv_impl)
  chunk = jax_task_chunk_size(config, settings)
  step = jax.jit(
    jaxmeta.make_meta_train_step(learner, optimizer, task_chunk_size=chunk),
    donate_argnums=0,
  )
  carry = {'state': jaxmeta.init_train_state(learner, optimizer, init_key)}
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
    ),
    finish,
  )


# ----------------------------------------------------------------------------
# PyTorch side.


def torch_device_name(requested: str) -> str:
  import torch

  if requested == 'auto':
    return 'cuda' if torch.cuda.is_available() else 'cpu'
  return requested


def set_torch_precision(highest: bool) -> None:
  import torch

  torch.backends.cudnn.allow_tf32 = not highest
  torch.backends.cuda.matmul.allow_tf32 = not highest


def torch_setup(
  tb,
  config: BenchConfig,
  implementation: str,
  algorithm: str,
  params,
  device: str,
  dtype=None,
):
  """A fresh torch `Conv4` at jaxmeta's `params`, and its meta-gradient."""
  model = tb.Conv4(
    config.ways, config.input_shape, config.num_filters, config.num_blocks
  ).to(device=device, dtype=dtype)
  tb.params_from_jax(model, params)  # float32 values, exact in float64
  meta_grad = tb.make_meta_grad(
    implementation.removeprefix('torch_'),
    algorithm,
    config.inner_lr,
    config.inner_steps,
  )
  return model, meta_grad


def torch_meta_gradient(
  tb, model, meta_grad, batch, perturb: bool
) -> dict[str, np.ndarray]:
  """Runs one torch meta-gradient and returns it in jaxmeta's layout."""
  for p in model.parameters():
    p.grad = None
  meta_grad(model, batch)
  grads = tb.grads_to_jax(model)
  if perturb:
    grads = {n: g * (1 + DEBUG_PERTURBATION) for n, g in grads.items()}
  return grads


def torch_meta_gradient_float64(
  tb,
  config: BenchConfig,
  implementation: str,
  algorithm: str,
  params,
  batch,
  device: str,
) -> dict[str, np.ndarray]:
  """One PyTorch implementation's meta-gradient in float64 (same weights)."""
  import torch

  model, meta_grad = torch_setup(
    tb, config, implementation, algorithm, params, device, torch.float64
  )
  batch = tb.TorchBatch(
    *(t.double() if t.is_floating_point() else t for t in batch)
  )
  return torch_meta_gradient(tb, model, meta_grad, batch, perturb=False)


def start_torch_timer(
  tb,
  config: BenchConfig,
  implementation: str,
  algorithm: str,
  params,
  batch,
  device: str,
  settings: Settings,
) -> Timer:
  """A fresh model at `params` and its `zero_grad` + meta-gradient +
  `Adam.step`, run once (its peak memory is this first step's)."""
  import torch

  model, meta_grad = torch_setup(
    tb, config, implementation, algorithm, params, device
  )
  optimizer = torch.optim.Adam(model.parameters(), lr=config.outer_lr)
  meta_step = tb.make_meta_step(meta_grad, model, optimizer)
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)

  def run():
    meta_step(batch)
    sync()

  if device == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  start = time.perf_counter()
  run()
  first_step_s = time.perf_counter() - start
  peak = torch.cuda.max_memory_allocated() if device == 'cuda' else None
  return Timer(
    run,
    dict(
      compile_s=None,
      first_step_s=first_step_s,
      first_run_s=first_step_s,
      peak_memory_bytes=peak,
      peak_memory_source='torch.cuda.max_memory_allocated' if peak else None,
    ),
  )


def time_interleaved(
  timers: Sequence[Timer], settings: Settings, meta_batch: int
) -> list[dict[str, Any]]:
  """Times the implementations of one configuration in interleaved blocks.

  After `warmup_steps` steps of each, the implementations take turns: each
  turn is one untimed step (the others' steps in between leave caches,
  allocators and thread pools cold) and then up to `interleave_block` timed
  steps. A change in the machine's load (large on shared CPUs) then shifts
  every implementation rather than the ratios between them. Turns of a single
  step are not the default: on 2 CPU cores each step paid for the other
  framework's last, and the medians came out far above those of a sequential
  run (benchmarks/README.md). An implementation whose warm-up says it would
  overrun `max_seconds_per_row` leaves the rotation after fewer steps.

  Returns:
    One dict per timer: the row fields, or `{'status': 'error', 'error'}`.
  """
  results = [dict(timer.info) for timer in timers]
  last = [timer.info['first_run_s'] for timer in timers]
  active = list(range(len(timers)))

  def run(k: int) -> float | None:
    try:
      start = time.perf_counter()
      timers[k].step()
      return time.perf_counter() - start
    except Exception as e:
      results[k] = {'status': 'error', 'error': f'{type(e).__name__}: {e}'}
      active.remove(k)
      return None

  for k in list(active):
    for _ in range(settings.warmup_steps):
      seconds = run(k)
      if seconds is None:
        break
      last[k] = seconds
  wanted = {k: timed_count(settings, last[k]) for k in active}
  times = {k: [] for k in active}
  turns = {k: [] for k in active}  # per turn: its timed steps
  block = max(1, settings.interleave_block)
  while any(len(times[k]) < wanted[k] for k in active):
    for k in list(active):
      todo = min(block, wanted[k] - len(times[k]))
      if todo <= 0 or run(k) is None:  # the untimed step
        continue
      turn = []
      for _ in range(todo):
        seconds = run(k)
        if seconds is None:
          break
        turn.append(seconds)
      times[k].extend(turn)
      if turn:
        turns[k].append(turn)
  for k in active:
    results[k].update(
      summarise(times[k], meta_batch),
      status='ok',
      timing=f'interleaved blocks of {block}',
      step_ms=[1e3 * t for t in times[k]],
      turn_median_ms=[1e3 * statistics.median(t) for t in turns[k]],
      **timers[k].finish(),
    )
  return results


def add_paired_speedups(
  rows: Sequence[dict[str, Any]], baseline: str = 'torch_loop'
) -> None:
  """Adds each timed row's speed-up over `baseline`, paired turn by turn.

  The implementations of one configuration and algorithm take turns (see
  `time_interleaved`), so turn `i` of every implementation falls in the same
  round. `paired_x_vs_<baseline>` is the median over rounds of (the
  baseline's median step time in that round / this row's), with the first
  and third quartiles in `..._quartiles`. A burst of load that hits a few
  turns moves it less than it moves the ratio of the two overall medians
  (`x vs torch loop` in the table): on this 2-core CPU two runs ten minutes
  apart gave MAML ratios of medians of 0.94 and 1.08.

  Args:
    rows: the result rows (modified in place); rows without
      `turn_median_ms` (not timed) are left alone.
    baseline: the implementation to compare against.
  """
  key = f'paired_x_vs_{baseline}'
  base = {
    (r['config'], r['algorithm']): r['turn_median_ms']
    for r in rows
    if r['implementation'] == baseline and r.get('turn_median_ms')
  }
  for r in rows:
    base_turns = base.get((r['config'], r['algorithm']))
    if not base_turns or not r.get('turn_median_ms'):
      continue
    ratios = [b / t for b, t in zip(base_turns, r['turn_median_ms'])]
    r[key] = statistics.median(ratios)
    if len(ratios) > 1:
      q1, _, q3 = statistics.quantiles(ratios, n=4, method='inclusive')
    else:
      q1 = q3 = r[key]
    r[key + '_quartiles'] = [q1, q3]


# ----------------------------------------------------------------------------
# The run.


def resolve_conv_impls(conv_impls: Sequence[str]) -> tuple[str, ...]:
  """Expands 'all' (alias 'both') and keeps the order, without duplicates."""
  out = []
  for impl in conv_impls:
    for i in ALL_CONV_IMPLS if impl in ('all', 'both') else (impl,):
      if i not in jaxmeta.models.CONV_IMPLS:
        raise BenchmarkError(
          f'Unknown conv impl {i!r}; choose from '
          f'{jaxmeta.models.CONV_IMPLS} or all.'
        )
      if i not in out:
        out.append(i)
  return tuple(out)


def check_counts(settings: Settings) -> None:
  """Refuses counts and tolerances that cannot time or check anything.

  Raises:
    BenchmarkError: naming the flag, its value and what it must be.
  """
  bounds = (
    ('num_steps', 1, 'the timings are medians over the timed steps'),
    ('warmup_steps', 0, 'untimed steps after the first'),
    ('interleave_block', 1, 'timed steps per turn'),
    ('task_chunk_size', 0, '0: the default'),
    ('seed', 0, 'a PRNG seed'),
  )
  for name, lowest, why in bounds:
    value = getattr(settings, name)
    if not isinstance(value, int) or value < lowest:
      raise BenchmarkError(
        f'--{name}={value} must be an integer >= {lowest} ({why}). Fix: '
        f'pass --{name}={max(lowest, 1)} or more.'
      )
  if not (
    math.isfinite(settings.max_seconds_per_row)
    and settings.max_seconds_per_row >= 0
  ):
    raise BenchmarkError(
      f'--max_seconds_per_row={settings.max_seconds_per_row} must be a '
      'finite number >= 0 (0: no limit). Fix: pass --max_seconds_per_row=0.'
    )
  if not (math.isfinite(settings.check_tol) and settings.check_tol > 0):
    raise BenchmarkError(
      f'--check_tol={settings.check_tol} must be a finite number > 0. Fix: '
      'pass --check_tol=1e-4 (the default).'
    )


def run_benchmark(settings: Settings) -> tuple[dict[str, Any], bool]:
  """Runs the cross-checks and the timings, writing outputs as it goes.

  Returns:
    `(results, ok)`: the content of `benchmark.json` and whether every
    cross-check passed and every implementation ran.

  Raises:
    BenchmarkError: settings that cannot run, before any compilation.
  """
  check_counts(settings)
  for name, known in (
    (settings.configs, CONFIGS),
    (settings.algorithms, ALGORITHMS),
    (settings.implementations, IMPLEMENTATIONS),
  ):
    unknown = [n for n in name if n not in known]
    if unknown:
      raise BenchmarkError(f'Unknown {unknown}; choose from {sorted(known)}.')
  if os.path.exists(settings.out) and not os.path.isdir(settings.out):
    raise BenchmarkError(
      f'--out={settings.out} is an existing file; name a folder.'
    )
  for name in settings.configs:
    meta_batch = CONFIGS[name].meta_batch
    chunk = settings.task_chunk_size
    if 0 < chunk < meta_batch and meta_batch % chunk:
      raise BenchmarkError(
        f'--task_chunk_size={chunk} must divide the '
        f'meta-batch size of {name} ({meta_batch}).'
      )
  conv_impls = resolve_conv_impls(settings.conv_impls)
  torch_impls = [
    i for i in settings.implementations if i in TORCH_IMPLEMENTATIONS
  ]
  tb = device = None
  if torch_impls:
    tb = import_torch_baselines()
    import torch

    device = torch_device_name(settings.torch_device)
    torch.set_default_dtype(torch.float32)
    set_torch_precision(True)
  os.makedirs(settings.out, exist_ok=True)
  results = {
    'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds'
    ),
    'command': ' '.join(sys.argv),
    'environment': environment(device),
    'settings': dataclasses.asdict(settings),
    'data': (
      'random [0, 1] images (Bernoulli(0.2) strokes for 1 channel, '
      'uniform for 3) and balanced labels from '
      f'jax.random.key({settings.seed}); weights: jaxmeta.conv4 init '
      'from the same seed, identical for every implementation'
    ),
    'check_precision': 'float32; JAX matmul precision highest; torch TF32 '
    'off' + ('; and float64' if settings.float64_check else ''),
    'timing_precision': settings.timing_precision,
    'cross_checks': [],
    'rows': [],
  }
  ok = True
  for config_name in settings.configs:
    config = CONFIGS[config_name]
    data_key, init_key = jax.random.split(jax.random.key(settings.seed))
    tasks = make_tasks(config, data_key)
    batch = None
    if torch_impls:
      batch = tb.batch_from_numpy(
        *(np.asarray(a) for a in tasks), device=device
      )
    chunk = jax_task_chunk_size(config, settings)
    for algorithm in settings.algorithms:
      # Same initial weights as init_train_state gives the timed JAX step.
      learner, optimizer = jax_setup(config, algorithm, conv_impls[0])
      params = jaxmeta.init_train_state(
        learner, optimizer, init_key
      ).merged_params()

      def jax_grad(conv_impl, float64=False):
        return jax_meta_gradient(
          config,
          algorithm,
          conv_impl,
          params,
          tasks,
          float64=float64,
          task_chunk_size=chunk,
        )

      reference = jax_grad(conv_impls[0])
      # The float64 meta-gradient: what every float32 result approximates.
      truth = (
        jax_grad(conv_impls[0], float64=True)
        if settings.float64_check
        else None
      )
      candidates = [
        ('jaxmeta', c)
        for c in conv_impls[1:]
        if 'jaxmeta' in settings.implementations
      ]
      candidates += [(i, None) for i in torch_impls]
      check = {
        ('jaxmeta', conv_impls[0]): {
          'passed': True,
          'max_rel_err': 0.0,
          'reference': True,
          **float64_errors(truth, reference),
        }
      }
      for impl, conv_impl in candidates:
        entry = {
          'config': config_name,
          'algorithm': algorithm,
          'implementation': impl,
          'conv_impl': conv_impl,
          'reference': f'jaxmeta[{conv_impls[0]}]',
          'jax_task_chunk_size': chunk,
        }
        try:
          if impl == 'jaxmeta':
            got = jax_grad(conv_impl)
          else:
            model, meta_grad = torch_setup(
              tb, config, impl, algorithm, params, device
            )
            got = torch_meta_gradient(
              tb, model, meta_grad, batch, impl in settings.debug_perturb_check
            )
          entry.update(cross_check(reference, got, settings.check_tol))
          entry.update(float64_errors(truth, got))
          if truth is not None:
            if impl == 'jaxmeta':
              got64 = jax_grad(conv_impl, float64=True)
            else:
              got64 = torch_meta_gradient_float64(
                tb, config, impl, algorithm, params, batch, device
              )
            entry['float64_agreement'] = cross_check(truth, got64, FLOAT64_TOL)[
              'max_rel_err'
            ]
          entry['passed'], entry['verdict'] = verdict(
            entry,
            settings.check_tol,
            check[('jaxmeta', conv_impls[0])].get('vs_float64_max_rel_err'),
          )
        except Exception as e:
          entry.update(
            passed=False,
            verdict='error',
            max_rel_err=None,
            problems=[f'{type(e).__name__}: {e}'],
            traceback=traceback.format_exc(),
          )
        results['cross_checks'].append(entry)
        check[(impl, conv_impl)] = entry
        print(
          f'[check] {config_name} {algorithm} {impl}'
          f'{"[" + conv_impl + "]" if conv_impl else ""}: '
          f'{"ok" if entry["passed"] else "MISMATCH"} '
          f'({entry["verdict"]}) '
          f'max_rel_err={entry.get("max_rel_err")} '
          f'({entry.get("worst_tensor")}); vs float64 '
          f'{entry.get("vs_float64_max_rel_err")}, float64 agreement '
          f'{entry.get("float64_agreement")}',
          flush=True,
        )
      timed = (
        [('jaxmeta', c) for c in conv_impls]
        if 'jaxmeta' in settings.implementations
        else []
      )
      timed += [(i, None) for i in torch_impls]
      rows, timers, timed_rows = [], [], []
      if torch_impls:
        set_torch_precision(settings.timing_precision == 'highest')
      for impl, conv_impl in timed:
        entry = check[(impl, conv_impl)]
        row = {
          'config': config_name,
          'algorithm': algorithm,
          'implementation': impl,
          'conv_impl': (
            jaxmeta.resolve_conv_impl(conv_impl) if conv_impl else None
          ),
          'framework': 'jax' if impl == 'jaxmeta' else 'torch',
          'device': (
            results['environment']['jax_device']
            if impl == 'jaxmeta'
            else results['environment']['torch_device']
          ),
          'settings': dict(
            dataclasses.asdict(config),
            outer_optimizer='adam',
            timing_precision=settings.timing_precision,
          ),
          'versions': results['environment']['versions'],
          'cross_check_passed': entry['passed'],
          'cross_check_verdict': entry.get('verdict', 'reference'),
          'cross_check_max_rel_err': entry.get('max_rel_err'),
          'cross_check_vs_float64': entry.get('vs_float64_max_rel_err'),
          'float64_agreement': entry.get('float64_agreement'),
          'load_average_before': load_average(),
        }
        rows.append(row)
        if not entry['passed']:
          row['status'] = 'gradient_mismatch'
          continue
        try:
          if impl == 'jaxmeta':
            timers.append(
              start_jax_timer(
                config, algorithm, conv_impl, init_key, tasks, settings
              )
            )
          else:
            timers.append(
              start_torch_timer(
                tb, config, impl, algorithm, params, batch, device, settings
              )
            )
          timed_rows.append(row)
        except Exception as e:
          row.update(status='error', error=f'{type(e).__name__}: {e}')
      for row, timing in zip(
        timed_rows, time_interleaved(timers, settings, config.meta_batch)
      ):
        row.update(timing)
      add_paired_speedups(rows)
      del timers  # frees the device memory of this configuration's steps
      if torch_impls:
        set_torch_precision(True)
      for row in rows:
        ok = ok and row['status'] == 'ok'
        results['rows'].append(row)
        print(
          f'[time] {config_name} {algorithm} {row["implementation"]}'
          f'{"[" + row["conv_impl"] + "]" if row["conv_impl"] else ""}: '
          + (
            f'median {row["median_ms"]:.1f} ms, min {row["min_ms"]:.1f} '
            f'ms over {row["num_timed_steps"]} steps'
            if row['status'] == 'ok'
            else row['status']
          ),
          flush=True,
        )
      write_outputs(results, settings.out, plot=False)
  results['all_checks_passed'] = ok
  write_outputs(results, settings.out, plot=True)
  return results, ok


# ----------------------------------------------------------------------------
# Outputs.


def row_label(row: dict[str, Any]) -> str:
  if row['implementation'] == 'jaxmeta':
    return f'jaxmeta [{row["conv_impl"]}]'
  return row['implementation'].replace('_', ' ')


def finite_or_null(value: Any) -> Any:
  """`value` with every non-finite float (NaN, +-inf) replaced by None.

  JSON has no NaN or Infinity (Python's `json` writes them, but strict
  parsers refuse the file); null says "no finite value" in every parser.
  """
  if isinstance(value, dict):
    return {k: finite_or_null(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite_or_null(v) for v in value]
  if isinstance(value, (float, np.floating)) and not math.isfinite(value):
    return None
  return value


def write_outputs(results: dict[str, Any], out: str, plot: bool) -> None:
  """Writes benchmark.json and benchmark.md (and benchmark.png if `plot`).

  benchmark.json is strict JSON: non-finite numbers are written as null.
  """
  common.write_json(
    os.path.join(out, 'benchmark.json'),
    finite_or_null(common.to_python(results)),
  )
  with open(os.path.join(out, 'benchmark.md'), 'w') as f:
    f.write(markdown(results))
  if plot:
    plot_rows(results['rows'], os.path.join(out, 'benchmark.png'))


def _fmt(value, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def markdown(results: dict[str, Any]) -> str:
  """The results as a markdown table with the machine and the date."""
  env = results['environment']
  lines = [
    '# jaxmeta meta-step benchmark',
    '',
    f'- Date (UTC): {results["date"]}',
    f'- JAX device: {env["jax_device"]}; CPU: {env["cpu"]} '
    f'({env["cpu_count"]} logical cores)',
    f'- torch device: {env.get("torch_device", "-")}; torch threads: '
    f'{env.get("torch_num_threads", "-")}',
    '- Versions: '
    + ', '.join(f'{k} {v}' for k, v in env['versions'].items() if v),
    f'- GLIBC_TUNABLES: {env.get("glibc_tunables") or "-"}',
    f'- Timed precision: {results["timing_precision"]}; cross-check: '
    f'{results["check_precision"]}, tolerance '
    f'{results["settings"]["check_tol"]:g} relative per tensor',
    f'- Data: {results["data"]}',
    f'- Command: `{results["command"]}`',
    '- ms per meta-step = the whole step (meta-gradient over the meta-batch '
    '+ Adam update); median and min over the timed steps after warm-up. '
    'first step = JAX compile + first run; torch first run.',
    "- x vs torch loop: the loop's median over this row's. paired: the "
    "implementations take turns; the median over turns of the loop's "
    "turn time over this row's in the same round, with its quartiles "
    '(less moved by a burst of load on a shared machine).',
    '- grad check: max relative error per tensor of the float32 '
    'meta-gradient against the reference; vs float64: its error against '
    'the float64 meta-gradient, and in brackets the float64 agreement (that '
    f'implementation in float64 against jaxmeta in float64, <= {FLOAT64_TOL:g} '
    'required). Pass: float64 agreement, and float32 error within the '
    'tolerance or "(f64 rule)": within the reference\'s own float32 error '
    '(its distance from float64) of the reference or of float64.',
    '',
    '| config | algorithm | implementation | median ms | min ms | steps | '
    'tasks/s | compile s | first step s | peak MiB | x vs torch loop | '
    'paired x vs loop [quartiles] | '
    'grad check (max rel err) | vs float64 (f64 agreement) |',
    '|' + '---|' * 14,
  ]
  loop_ms = {
    (r['config'], r['algorithm']): r['median_ms']
    for r in results['rows']
    if r['implementation'] == 'torch_loop' and r['status'] == 'ok'
  }
  for r in results['rows']:
    ok = r['status'] == 'ok'
    base = loop_ms.get((r['config'], r['algorithm']))
    speedup = f'{base / r["median_ms"]:.2f}' if ok and base else '-'
    paired = '-'
    if ok and r.get('paired_x_vs_torch_loop') is not None:
      q1, q3 = r['paired_x_vs_torch_loop_quartiles']
      paired = f'{r["paired_x_vs_torch_loop"]:.2f} [{q1:.2f}, {q3:.2f}]'
    peak = (
      r.get('peak_memory_bytes') / BYTES_PER_MIB
      if r.get('peak_memory_bytes')
      else None
    )
    check = (
      'ref'
      if r['implementation'] == 'jaxmeta'
      and r['cross_check_max_rel_err'] == 0.0
      else _fmt(r['cross_check_max_rel_err'], '.1e')
    )
    check = ('pass ' if r['cross_check_passed'] else 'FAIL ') + check
    if r.get('cross_check_verdict') == 'float64':
      check += ' (f64 rule)'
    vs64 = _fmt(r.get('cross_check_vs_float64'), '.1e')
    if r.get('float64_agreement') is not None:
      vs64 += f' ({r["float64_agreement"]:.0e})'
    lines.append(
      f'| {r["config"]} (mb {r["settings"]["meta_batch"]}) | '
      f'{r["algorithm"]} | {row_label(r)} | '
      + (
        ' | '.join(
          [
            _fmt(r.get('median_ms'), '.1f'),
            _fmt(r.get('min_ms'), '.1f'),
            str(r.get('num_timed_steps')),
            _fmt(r.get('tasks_per_s'), '.2f'),
            _fmt(r.get('compile_s'), '.2f'),
            _fmt(r.get('first_step_s'), '.2f'),
            _fmt(peak, '.0f'),
            speedup,
            paired,
          ]
        )
        if ok
        else f'{r["status"]} | | | | | | | | '
      )
      + f' | {check} | {vs64} |'
    )
  return '\n'.join(lines) + '\n'


def plot_rows(rows: Sequence[dict[str, Any]], path: str) -> None:
  """Bar chart: ms per meta-step, one group per config x algorithm."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  ok_rows = [r for r in rows if r['status'] == 'ok']
  groups = list(dict.fromkeys(f'{r["config"]}\n{r["algorithm"]}' for r in rows))
  labels = list(dict.fromkeys(row_label(r) for r in rows))
  width = 0.8 / max(len(labels), 1)
  fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups)), 4.5))
  for j, label in enumerate(labels):
    xs, ys = [], []
    for r in ok_rows:
      if row_label(r) == label:
        xs.append(
          groups.index(f'{r["config"]}\n{r["algorithm"]}')
          + (j - (len(labels) - 1) / 2) * width
        )
        ys.append(r['median_ms'])
    ax.bar(xs, ys, width=width, label=label)
  ax.set_xticks(range(len(groups)))
  ax.set_xticklabels(groups, fontsize=8)
  if ok_rows:
    ax.set_yscale('log')
  ax.set_ylabel('ms per meta-step (median, log scale)')
  ax.set_title('Meta-step time (lower is better)')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def settings_from_flags() -> Settings:
  size = FLAGS.size
  return Settings(
    out=FLAGS.out,
    configs=tuple(FLAGS.configs or DEFAULT_CONFIGS[size]),
    algorithms=tuple(FLAGS.algorithms),
    implementations=tuple(FLAGS.implementations),
    conv_impls=tuple(FLAGS.conv_impls),
    num_steps=(
      FLAGS.num_steps
      if FLAGS.num_steps is not None
      else DEFAULT_NUM_STEPS[size]
    ),
    warmup_steps=(
      FLAGS.warmup_steps
      if FLAGS.warmup_steps is not None
      else DEFAULT_WARMUP_STEPS[size]
    ),
    max_seconds_per_row=FLAGS.max_seconds_per_row,
    timing_precision=FLAGS.timing_precision,
    check_tol=FLAGS.check_tol,
    seed=FLAGS.seed,
    torch_device=FLAGS.torch_device,
    debug_perturb_check=tuple(FLAGS.debug_perturb_check),
    task_chunk_size=FLAGS.task_chunk_size,
    float64_check=FLAGS.float64_check,
    interleave_block=FLAGS.interleave_block,
  )


def main(argv: Sequence[str]) -> None:
  del argv
  try:
    _, ok = run_benchmark(settings_from_flags())
  except BenchmarkError as e:
    sys.exit(f'benchmark: error: {e}')
  if not ok:
    print(
      'FAILED: a meta-gradient cross-check failed or an implementation '
      'raised; see benchmark.json.',
      file=sys.stderr,
    )
    sys.exit(1)


if __name__ == '__main__':
  common.reexec_with_huge_pages()
  define_flags()
  app.run(main, flags_parser=common.parse_flags)
