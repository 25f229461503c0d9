"""MAML++ (Antoniou, Edwards & Storkey 2019): MAML with its training tricks,
each switchable on its own."""

import itertools
from typing import Callable

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import check_inner_lr
from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import gradient_adaptation
from jaxmeta.algorithms.base import inner_loop
from jaxmeta.algorithms.base import learned_sgd
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import model_losses
from jaxmeta.algorithms.base import split_task_key
from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.models.base import BATCH_NORM_LEAVES
from jaxmeta.models.base import Model
from jaxmeta.models.base import per_step_batch_norm
from jaxmeta.types import Array


def multi_step_loss_weights(
  global_step: Array, num_steps: int, anneal_iterations: int
) -> Array:
  """The per-step weights of MAML++'s multi-step loss (MSL) at `global_step`.

  They start equal (`1/N` each, `N = num_steps`); over `anneal_iterations`
  meta-iterations the weights of steps `1..N-1` fall linearly to their floor
  `0.03/N` and the last step's rises to `1 - (N-1) * 0.03/N` (the reference
  code's schedule, which moves per epoch; here it moves per iteration). From
  `anneal_iterations` on, all the weight is on the last step, as the
  reference code switches to the last step's loss alone.

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

  * LSLR (`per_step_lr`): a learned inner learning rate per parameter tensor
    and per step, `{'inner': {'lr': tree of [num_inner_steps]}}` beside the
    model's parameters in the meta-parameters, starting at `inner_lr`.
    Evaluation past the last trained step reuses the last step's rates.
  * MSL (`multi_step_loss`): the query loss after EVERY inner step, weighted
    by `multi_step_loss_weights(global_step, ...)`, for the first
    `msl_iterations` meta-iterations; then the last step's loss alone.
  * DOA (`first_order_iterations`): first-order meta-gradients for the first
    `first_order_iterations` meta-iterations, second order after (0: second
    order throughout). The phases are branches of one compiled program
    (`lax.switch` on the global step), each computing only its own terms.
  * BNWB (`per_step_bn`): per-step batch-norm weights and biases
    (`jaxmeta.models.per_step_batch_norm`); the support loss of step `i` and
    the query loss after it use set `i`. As in the reference code, they are
    learned by the outer loop only: the inner loop leaves them unchanged
    (their learned rates, with LSLR, are unused).
  * Cosine annealing of the meta learning rate is the outer optimiser's
    schedule (`optax.cosine_decay_schedule`; the harness's
    `meta_lr_schedule='cosine'`).

  * BNRS (`per_step_bn_stats`): per-step running statistics, one set per
    inner step (`per_step_batch_norm(..., statistics=True)`), for a model
    in the 'running' batch-norm mode (`jaxmeta.models.norms`): meta-training
    averages the statistics of inner step `i` into set `i`, and evaluation
    normalises step `i` with set `i` (see `normalised_learner`).

  With every trick off (`per_step_lr=False, multi_step_loss=False,
  per_step_bn=False`, `first_order_iterations=0`) the model's gradient is
  MAML's; the meta-parameters are then `{'model': params, 'inner': {}}`.

  Args:
    model: the `Model` (conv4 and resnet12 name their batch-norm leaves as
      `per_step_batch_norm` expects).
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
    A `MetaLearner` named 'maml_plus_plus'.

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

  def adaptation(meta):  # `(adapt, evaluate)` of the model's parameters.
    return gradient_adaptation(loss_fn, optimizer(meta), support_loss)

  def adapt(meta, support_x, support_y, num_steps):
    return adaptation(meta)[0](meta['model'], support_x, support_y, num_steps)

  def meta_loss(meta, task, key, global_step, msl, first_order):
    inner_key, query_key = split_task_key(key)
    adapted, trace = inner_loop(
      loss_fn,
      meta['model'],
      task.support_x,
      task.support_y,
      num_inner_steps,
      optimizer(meta),
      first_order=first_order,
      query=(task.query_x, task.query_y) if msl else None,
      key=inner_key,
      support_loss=support_loss,
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

  # The phases of the schedule: (MSL on, first order) for each reachable pair.
  phases = list(
    itertools.product(
      (True, False) if multi_step_loss else (False,),
      (True, False) if first_order_iterations else (False,),
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
    # (MSL on, first order) -> branch index.
    table = jnp.array(
      [
        [phases.index((m, f)) if (m, f) in phases else 0 for f in (False, True)]
        for m in (False, True)
      ],
      jnp.int32,
    )
    return jax.lax.switch(
      table[msl_on.astype(jnp.int32), fo_on.astype(jnp.int32)],
      branches,
      meta,
      task,
      key,
    )

  def evaluate(meta, task, num_steps):
    return adaptation(meta)[1](meta['model'], task, num_steps)

  return MetaLearner(
    'maml_plus_plus',
    init,
    adapt,
    task_update,
    evaluate,
    predict=model.apply,
    model=model,
  )
