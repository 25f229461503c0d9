"""`Model`, the pair of pure functions every backbone returns, and the
registry of backbones by name."""

from typing import Callable, NamedTuple

from jaxmeta.types import Array, Params, PRNGKey

# name -> `builder(num_outputs, input_shape, **options) -> Model`, filled by
# `register_backbone`; the experiment harness builds backbones by name.
BACKBONES: dict[str, Callable[..., 'Model']] = {}


def register_backbone(name: str):
  """Decorator: `@register_backbone('conv4')` adds a builder to `BACKBONES`.

  A builder takes the number of outputs (the ways, or 1 for regression), the
  shape of one input without the batch axis, and its own keyword options.
  The model's `apply(params, x, *, key=None)` must accept a key: the
  training program passes one in meta-training (dropout, DropBlock) and none
  at evaluation; a deterministic model ignores it.
  """

  def add(builder):
    if name in BACKBONES and BACKBONES[name] is not builder:
      raise ValueError(f'Backbone {name!r} is already registered.')
    BACKBONES[name] = builder
    return builder

  return add


class Model(NamedTuple):
  """A model as a pair of pure functions.

  Attributes:
    init: `init(key) -> params`, a dict pytree of float32 arrays.
    apply: `apply(params, x, *, key=None) -> outputs` for one batch `x` of
      one task. `key` feeds the model's randomness in training (dropout,
      DropBlock); with None the model is deterministic (evaluation). The
      losses of `jaxmeta.losses` pass `key=` only when they have one, so an
      `apply(params, x)` without it works wherever no key is given.
  """

  init: Callable[[PRNGKey], Params]
  apply: Callable[[Params, Array], Array]
