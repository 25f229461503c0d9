"""Rematerialisation: a `Model` whose activations are recomputed, not kept,
trading compute for the memory of second-order MAML
(`benchmarks/scaling/NOTES.md`)."""

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
  """`model` whose activations are recomputed in the backward pass, not kept.

  `apply` and `embed` become `jax.custom_vjp`s with a `jax.checkpoint`ed
  backward pass: a derivative of any order keeps only each pass's inputs and
  cotangents, so a scanned inner loop stores a few parameter-sized values per
  step (`jax.jvp` raises). `forward` is left as it is (a normaliser may
  record statistics): only 'transductive' models are rematerialised.

  Args:
    model: a `Model` whose `apply` (and `embed`) take `x` as a float array.
    policy: a name in `REMAT_POLICIES` ('full': keep nothing) or a
      `jax.checkpoint_policies` policy.

  Returns:
    A `Model` with the same fields but `apply` and `embed`, e.g.
    `jaxmeta.models.rematerialised(jaxmeta.resnet12(num_classes=5))`.
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
