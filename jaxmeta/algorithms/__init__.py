"""Meta-learning algorithms as bundles of pure per-task functions.

Every algorithm is a `MetaLearner` (see `base`), a NamedTuple of pure
functions in the style of optax's `GradientTransformation`, hyperparameters
closed over, each written for ONE task; the meta-step (`jaxmeta.training`)
vmaps them over the meta-batch. `MetaLearner.task_update(meta_params, task)`
returns a gradient-like pytree with the structure of `meta_params`, which
the meta-step averages over tasks and hands to any optax optimiser, so every
algorithm shares one training loop and one compiled step:

* MAML / first-order MAML (`maml`): the gradient of the query loss after
  adaptation w.r.t. the initialisation.
* Reptile (`reptile`): the pseudo-gradient `meta_params - adapted_params`.
* ANIL (`anil`): MAML adapting the head only, on embeddings computed once.
* Meta-SGD (`metasgd`), MAML++ (`mamlpp`): learned inner rates live beside
  the model, `{'model': ..., 'inner': ...}`.
* Prototypical Networks (`protonet`): no inner loop, class means.
* Baseline / Baseline++ (`baseline`), 'pretrain': ordinary training, then a
  fine-tuned head (Baseline) or the whole model (pretrain) per task.

`REGISTRY` maps each name to a builder `builder(model, make_loss, inner_lr,
num_inner_steps, **options)`; `make_learner` calls it.
"""

import inspect
from typing import Callable

import optax

from jaxmeta.algorithms.anil import anil
from jaxmeta.algorithms.base import inner_loop
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import STATISTICS_METRIC
from jaxmeta.algorithms.base import sgd_loop
from jaxmeta.algorithms.baseline import baseline
from jaxmeta.algorithms.baseline import baseline_plus_plus
from jaxmeta.algorithms.maml import fomaml
from jaxmeta.algorithms.maml import maml
from jaxmeta.algorithms.mamlpp import maml_plus_plus
from jaxmeta.algorithms.mamlpp import multi_step_loss_weights
from jaxmeta.algorithms.metasgd import meta_sgd
from jaxmeta.algorithms.normalised import normalised_learner
from jaxmeta.algorithms.normalised import score_alone
from jaxmeta.algorithms.normalised import with_scoring_alone
from jaxmeta.algorithms.pretrain import pretrain
from jaxmeta.algorithms.protonet import protonet
from jaxmeta.algorithms.reptile import reptile
from jaxmeta.losses import LossFn
from jaxmeta.models.base import Model

# The algorithms of the JAX-against-PyTorch benchmark.
ALGORITHMS = ('maml', 'fomaml', 'reptile')
BASELINES = ('pretrain',)


def _on_loss(builder: Callable[..., MetaLearner]) -> Callable[..., MetaLearner]:
  """A builder over `(init_fn, loss_fn, ...)` as one over `(model,
  make_loss, ...)`: for the algorithms that need no more of the model."""

  def build(model, make_loss, inner_lr, num_inner_steps, **options):
    learner = builder(
      model.init, make_loss(model.apply), inner_lr, num_inner_steps, **options
    )
    return learner._replace(
      predict=lambda adapted, x: model.apply(adapted, x), model=model
    )

  build.options = tuple(inspect.signature(builder).parameters)[4:]
  build.__doc__ = builder.__doc__
  return build


# name -> builder(model, make_loss, inner_lr, num_inner_steps, **options).
REGISTRY: dict[str, Callable[..., MetaLearner]] = {
  'maml': _on_loss(maml),
  'fomaml': _on_loss(fomaml),
  'reptile': _on_loss(reptile),
  'pretrain': _on_loss(pretrain),
  'anil': anil,
  'meta_sgd': meta_sgd,
  'maml_plus_plus': maml_plus_plus,
  'protonet': protonet,
  'baseline': baseline,
  'baseline_plus_plus': baseline_plus_plus,
}


def options(name: str) -> tuple[str, ...]:
  """The keyword options the builder of `name` takes."""
  builder = REGISTRY[name]
  if hasattr(builder, 'options'):
    return builder.options
  return tuple(inspect.signature(builder).parameters)[4:]


def make_learner(
  name: str,
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float,
  num_inner_steps: int,
  inner_optimizer: optax.GradientTransformation | None = None,
  **kwargs,
) -> MetaLearner:
  """Builds the algorithm `name` of `REGISTRY`.

  Args:
    name: a key of `REGISTRY`.
    model: the `Model`.
    make_loss: `make_loss(apply) -> loss_fn`, e.g.
      `jaxmeta.classification_loss`.
    inner_lr: the inner learning rate.
    num_inner_steps: inner steps during meta-training.
    inner_optimizer: only for the algorithms whose builder takes one
      (Reptile); MAML's inner step is plain gradient descent with
      `inner_lr`, which its second-order derivative differentiates.
    **kwargs: the builder's other options (see `options(name)`).

  Raises:
    ValueError: for an unknown name or an option the builder does not take.
  """
  if name not in REGISTRY:
    raise ValueError(
      f'Unknown algorithm {name!r}; choose one of {sorted(REGISTRY)}.'
    )
  if inner_optimizer is not None:
    if 'inner_optimizer' not in options(name):
      raise ValueError(
        f'{name} uses plain SGD with inner_lr in its inner '
        'loop; inner_optimizer applies to '
        f'{[n for n in REGISTRY if "inner_optimizer" in options(n)]} only.'
      )
    kwargs['inner_optimizer'] = inner_optimizer
  unknown = sorted(set(kwargs) - set(options(name)))
  if unknown:
    raise ValueError(
      f'{name} takes no option {unknown}; its options are '
      f'{list(options(name))}.'
    )
  return REGISTRY[name](model, make_loss, inner_lr, num_inner_steps, **kwargs)


__all__ = [
  'ALGORITHMS',
  'BASELINES',
  'MetaLearner',
  'REGISTRY',
  'anil',
  'baseline',
  'baseline_plus_plus',
  'fomaml',
  'inner_loop',
  'make_learner',
  'maml',
  'maml_plus_plus',
  'meta_sgd',
  'multi_step_loss_weights',
  'options',
  'pretrain',
  'protonet',
  'reptile',
  'sgd_loop',
]
