"""Rematerialisation: a `Model` whose activations are recomputed, not kept.

Second-order MAML differentiates through the inner loop, so the backward
pass needs every activation of every inner step's forward and backward
passes; with ResNet-12 at 84x84 that is gigabytes per task
(`benchmarks/scaling`). `rematerialised(model)` makes the
backward pass recompute what it needs from the parameters and the batch,
trading compute for memory (`benchmarks/scaling/NOTES.md` has the numbers).
"""

import functools
from typing import Callable

import jax

from jaxmeta.models.base import Model

# name -> `jax.checkpoint` policy: which intermediate values of the forward
# pass are kept for the backward pass; every other one is recomputed.
REMAT_POLICIES: dict[str, Callable[..., bool]] = {
  # Only the inputs: the whole forward pass runs again in the backward pass.
  'full': jax.checkpoint_policies.nothing_saveable,
  # The outputs of matrix products and convolutions; the elementwise work
  # between them (batch norm, activations) is recomputed.
  'dots': jax.checkpoint_policies.dots_saveable,
  # The outputs of matrix products without batch dimensions (the head, the
  # patch-matrix convolutions); the rest is recomputed.
  'dots_with_no_batch_dims': (
    jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  ),
}


def rematerialised(
  model: Model, policy: str | Callable[..., bool] = 'full'
) -> Model:
  """`model` whose forward and backward passes are recomputed, not kept.

  `apply` and `embed` become functions whose derivative is a
  `jax.checkpoint`ed vector-Jacobian product: a backward pass through them
  keeps only their inputs (parameters and batch) and recomputes the forward
  pass; a second derivative through that backward pass (second-order MAML
  differentiating the inner gradient) keeps only the parameters, the batch
  and the incoming cotangent of each inner step, and recomputes that step's
  forward and backward passes. A scanned inner loop then stores a few
  parameter-sized values per step instead of every activation of it. The
  policy picks intermediate values to keep inside each recomputation.

  The derivatives are those of `model`, up to floating-point reassociation.
  Only reverse-mode differentiation is defined (`jax.grad`, `jax.vjp`, of
  any order): the functions are `jax.custom_vjp`s, so `jax.jvp` of them
  raises.

  `forward` (the batch-norm hook of `jaxmeta.models.norms`) is left as it
  is: a normaliser may record the statistics it sees (`norms.given_support`
  does), and a recomputed function cannot hand those out. The batch-norm
  modes other than 'transductive', whose training passes go through
  `forward`, are therefore not rematerialised.

  Args:
    model: a `Model` whose `apply(params, x, *, key=None, step=None)` (and
      `embed`) take `x` as a float array.
    policy: a name in `REMAT_POLICIES` ('full': keep nothing) or a
      `jax.checkpoint_policies` policy.

  Returns:
    A `Model` with the same fields but `apply` and `embed`.

  Example::

    model = jaxmeta.models.rematerialised(jaxmeta.resnet12(num_classes=5))
  """
  if isinstance(policy, str):
    if policy not in REMAT_POLICIES:
      raise ValueError(
        f'Unknown rematerialisation policy {policy!r}; choose one of '
        f'{tuple(REMAT_POLICIES)}.'
      )
    policy = REMAT_POLICIES[policy]
  if not callable(policy):
    raise ValueError(
      f'policy must be a name in {tuple(REMAT_POLICIES)} or a '
      f'jax.checkpoint_policies policy, got {policy!r}.'
    )

  def recomputed(fn):
    def wrapped(params, x, *, key=None, step=None):
      # The key and the step index are closed over: they select the forward
      # pass (dropout masks, per-step parameters) and carry no derivative.
      f = lambda p, inputs: fn(p, inputs, key=key, step=step)

      @jax.custom_vjp
      def g(p, inputs):
        return f(p, inputs)

      def g_forward(p, inputs):
        return jax.checkpoint(f, policy=policy)(p, inputs), (p, inputs)

      # Checkpointing the backward pass too is what saves memory in second
      # order: differentiating it keeps only its inputs.
      @functools.partial(jax.checkpoint, policy=policy)
      def g_backward(residuals, cotangent):
        return jax.vjp(f, *residuals)[1](cotangent)

      g.defvjp(g_forward, g_backward)
      return g(params, x)

    return wrapped

  embed = None if model.embed is None else recomputed(model.embed)
  return model._replace(apply=recomputed(model.apply), embed=embed)
