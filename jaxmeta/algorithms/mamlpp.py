"""MAML++ (Antoniou, Edwards & Storkey 2019): MAML with its training tricks,
each switchable on its own."""

import itertools
from typing import Callable

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import check_inner_lr
from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import learned_inner_learner
from jaxmeta.algorithms.base import learned_sgd
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import model_losses
from jaxmeta.algorithms.base import task_inner_loop
from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.models.base import BATCH_NORM_LEAVES
from jaxmeta.models.base import Model
from jaxmeta.models.base import per_step_batch_norm
from jaxmeta.types import Array


def multi_step_loss_weights(
  global_step: Array, num_steps: int, anneal_iterations: int
) -> Array:
  """The per-step weights of MAML++'s multi-step loss at `global_step`.

  Equal (`1/N`) at first; over `anneal_iterations` the first `N-1` fall
  linearly to `0.03/N` and the last rises to `1 - (N-1) * 0.03/N` (the
  reference code's schedule, per iteration); then the last step's alone.

  Args:
    global_step: the meta-iteration, an int scalar (traced).
    num_steps: inner steps `N` >= 1.
    anneal_iterations: iterations of the annealing, >= 1.

  Returns:
    `[num_steps]` float32 weights summing to 1.
  """
  n = num_steps
  frac = jnp.clip(jnp.asarray(global_step, float) / anneal_iterations, 0, 1)
  early = jnp.maximum((1.0 - frac) / n, 0.03 / n)
  last = jnp.minimum(1.0 / n + frac * (n - 1) / n, 1.0 - (n - 1) * 0.03 / n)
  weights = jnp.concatenate([jnp.full((n - 1,), early), last[None]])
  final = jax.nn.one_hot(n - 1, n, dtype=frac.dtype)
  return jnp.where(global_step < anneal_iterations, weights, final)


def maml_plus_plus(
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float,
  num_inner_steps: int,
  *,
  per_step_lr: bool = True,
  multi_step_loss: bool = True,
  msl_iterations: int = 5000,
  first_order_iterations: int = 0,
  per_step_bn: bool = True,
  per_step_bn_stats: bool = False,
) -> MetaLearner:
  """MAML++ (Antoniou et al. 2019), each trick switchable.

  LSLR (`per_step_lr`): learned inner rates per parameter tensor and step,
  `{'inner': {'lr': tree of [num_inner_steps]}}` from `inner_lr` (later
  steps reuse the last). MSL (`multi_step_loss`): the query losses after
  every step, weighted by `multi_step_loss_weights`. DOA
  (`first_order_iterations`): first order at first, then second order (one
  `lax.switch`). BNWB (`per_step_bn`): per-step batch-norm weights and
  biases (`per_step_batch_norm`), left unchanged by the inner loop as in the
  reference code. BNRS (`per_step_bn_stats`): per-step running statistics
  (`normalised_learner`). The cosine-annealed meta learning rate is the
  outer optimiser's schedule. With every trick off the gradient is MAML's.

  Args:
    model: the `Model` (batch-norm leaves named `BATCH_NORM_LEAVES`).
    make_loss: `make_loss(apply) -> loss_fn`.
    inner_lr: the inner learning rate (the initial value of the learned ones).
    num_inner_steps: inner steps during meta-training, >= 1.
    per_step_lr: LSLR.
    multi_step_loss: MSL.
    msl_iterations: meta-iterations of MSL's annealing.
    first_order_iterations: DOA's first-order iterations.
    per_step_bn: BNWB.
    per_step_bn_stats: BNRS; needs `model.batch_norm == 'running'`.

  Returns:
    A `MetaLearner` named 'maml_plus_plus' over `{'model': params, 'inner':
    {...}}`.

  References:
    Antoniou, Edwards & Storkey 2019, "How to train your MAML", Section 4.
  """
  num_inner_steps = check_num_steps(num_inner_steps)
  check_inner_lr(inner_lr)
  if num_inner_steps < 1:
    raise ValueError('maml_plus_plus needs num_inner_steps >= 1.')
  for name, value in (
    ('msl_iterations', msl_iterations),
    ('first_order_iterations', first_order_iterations),
  ):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f'{name} must be an int >= 0, got {value!r}.')
  if multi_step_loss and msl_iterations < 1:
    raise ValueError('multi_step_loss needs msl_iterations >= 1.')
  if per_step_bn_stats and model.batch_norm != 'running':
    raise ValueError(
      'per_step_bn_stats (BNRS) keeps running statistics: it needs a model '
      f"with batch_norm='running', got {model.batch_norm!r}."
    )
  if per_step_bn or per_step_bn_stats:
    model = per_step_batch_norm(
      model, num_inner_steps, per_step_bn, per_step_bn_stats
    )
  loss_fn, support_loss = model_losses(make_loss, model)
  last = num_inner_steps - 1

  def init(key):
    params = model.init(key)
    inner = {}
    if per_step_lr:
      inner['lr'] = jax.tree.map(
        lambda _: jnp.full((num_inner_steps,), inner_lr, float), params
      )
    return {'model': params, 'inner': inner}

  def is_bn(path):
    return getattr(path[-1], 'key', None) in BATCH_NORM_LEAVES

  def optimizer(meta):
    def rates(i):
      if per_step_lr:
        rate = lambda path, lr: lr[jnp.minimum(i, last)]
        tree = meta['inner']['lr']
      else:
        rate = lambda path, v: inner_lr
        tree = meta['model']
      if not per_step_bn:
        return jax.tree_util.tree_map_with_path(rate, tree)
      return jax.tree_util.tree_map_with_path(
        lambda path, v: 0.0 if is_bn(path) else rate(path, v), tree
      )

    return learned_sgd(rates)

  def meta_loss(meta, task, key, global_step, msl, first_order):
    adapted, trace, query_key = task_inner_loop(
      loss_fn,
      support_loss,
      meta['model'],
      task,
      num_inner_steps,
      optimizer(meta),
      key,
      first_order=first_order,
      query=(task.query_x, task.query_y) if msl else None,
    )
    if msl:
      weights = multi_step_loss_weights(
        global_step, num_inner_steps, msl_iterations
      )
      loss = jnp.sum(weights * trace['query_loss'])
      metrics = {
        k[len('query_') :]: v[-1]
        for k, v in trace.items()
        if k.startswith('query_')
      }
      return loss, metrics
    return loss_fn(
      adapted,
      task.query_x,
      task.query_y,
      key=query_key,
      step=jnp.asarray(last, jnp.int32),
    )

  # The phases of the schedule, (MSL on, first order), for each reachable
  # pair; phase `msl * len(first_orders) + first_order` of the switch.
  first_orders = (False, True) if first_order_iterations else (False,)
  phases = list(
    itertools.product(
      (False, True) if multi_step_loss else (False,), first_orders
    )
  )

  def task_update(meta, task, key=None, global_step=None):
    check_batch(task.query_x, task.query_y, 'query')
    step = jnp.zeros((), jnp.int32) if global_step is None else global_step
    branches = [
      lambda meta, task, key, msl=msl, fo=fo: jax.grad(meta_loss, has_aux=True)(
        meta, task, key, step, msl, fo
      )
      for msl, fo in phases
    ]
    if len(branches) == 1:
      return branches[0](meta, task, key)
    msl_on = multi_step_loss & (step < msl_iterations)
    fo_on = (first_order_iterations > 0) & (step < first_order_iterations)
    index = msl_on.astype(jnp.int32) * len(first_orders) + fo_on
    return jax.lax.switch(index, branches, meta, task, key)

  return learned_inner_learner(
    'maml_plus_plus', model, init, loss_fn, support_loss, optimizer, task_update
  )
