"""Meta-learning algorithms as bundles of pure per-task functions.

Every algorithm is a `MetaLearner` (see `base`) whose `task_update` returns a
gradient-like pytree shaped like the meta-parameters, so every algorithm
shares one meta-step and any optax optimiser. Every builder is
`builder(model, make_loss, inner_lr, num_inner_steps, *, **options) ->
MetaLearner`; `ALGORITHMS` maps each name to its builder
(`register_algorithm` adds one), `make_learner` calls it and `traits(name)`
says what the training harness must know of it.
"""

import inspect
from typing import Callable, NamedTuple

import optax

from jaxmeta.algorithms.anil import anil
from jaxmeta.algorithms.base import check_inner_lr
from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import gradient_adaptation
from jaxmeta.algorithms.base import head_apply
from jaxmeta.algorithms.base import inner_loop
from jaxmeta.algorithms.base import learned_sgd
from jaxmeta.algorithms.base import learner_of_model
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import require_embed
from jaxmeta.algorithms.base import split_task_key
from jaxmeta.algorithms.base import STATISTICS_METRIC
from jaxmeta.algorithms.baseline import baseline
from jaxmeta.algorithms.baseline import baseline_plus_plus
from jaxmeta.algorithms.imaml import imaml
from jaxmeta.algorithms.maml import fomaml
from jaxmeta.algorithms.maml import maml
from jaxmeta.algorithms.mamlpp import maml_plus_plus
from jaxmeta.algorithms.mamlpp import multi_step_loss_weights
from jaxmeta.algorithms.metasgd import meta_sgd
from jaxmeta.algorithms.normalised import normalised_learner
from jaxmeta.algorithms.normalised import score_alone
from jaxmeta.algorithms.normalised import score_together
from jaxmeta.algorithms.normalised import scoring_last_step
from jaxmeta.algorithms.normalised import with_scoring_alone
from jaxmeta.algorithms.pretrain import pretrain
from jaxmeta.algorithms.protonet import protonet
from jaxmeta.algorithms.r2d2 import r2d2
from jaxmeta.algorithms.reptile import reptile
from jaxmeta.losses import LossFn
from jaxmeta.models.base import Model

Builder = Callable[..., MetaLearner]


class Traits(NamedTuple):
  """What the training harness must know of an algorithm.

  Attributes:
    options: the builder's keyword-only options.
    train_batches: `task_update` takes a minibatch of all training classes
      in the support set (labels: the classes' indices; no queries) instead of
      an episode: Baseline's pretraining.
    any_ways: training episodes may have more ways than the evaluation ones
      (nothing in the meta-parameters depends on the ways).
  """

  options: tuple[str, ...]
  train_batches: bool = False
  any_ways: bool = False


# name -> builder(model, make_loss, inner_lr, num_inner_steps, *, **options).
ALGORITHMS: dict[str, Builder] = {}
_TRAITS: dict[str, Traits] = {}


def register_algorithm(
  name: str,
  builder: Builder,
  *,
  train_batches: bool = False,
  any_ways: bool = False,
) -> Builder:
  """Adds `builder` to `ALGORITHMS` under `name`, with its `Traits`.

  Args:
    name: the name configs use (`config.algorithm`).
    builder: `builder(model, make_loss, inner_lr, num_inner_steps, *,
      **options) -> MetaLearner`.
    train_batches: see `Traits`.
    any_ways: see `Traits`.

  Returns:
    `builder`.

  Raises:
    ValueError: if `name` is taken, or the builder's positional parameters
      are not the contract's.
  """
  if name in ALGORITHMS and ALGORITHMS[name] is not builder:
    raise ValueError(f'Algorithm {name!r} is already registered.')
  parameters = inspect.signature(builder).parameters.values()
  positional = [p.name for p in parameters if p.kind != p.KEYWORD_ONLY]
  if positional != ['model', 'make_loss', 'inner_lr', 'num_inner_steps']:
    raise ValueError(
      f'The builder of {name!r} must take (model, make_loss, inner_lr, '
      f'num_inner_steps, *, **options), got ({", ".join(positional)}, ...).'
    )
  options = tuple(p.name for p in parameters if p.kind == p.KEYWORD_ONLY)
  ALGORITHMS[name] = builder
  _TRAITS[name] = Traits(options, train_batches, any_ways)
  return builder


register_algorithm('maml', maml)
register_algorithm('fomaml', fomaml)
register_algorithm('reptile', reptile)
register_algorithm('imaml', imaml)
register_algorithm('pretrain', pretrain)
register_algorithm('anil', anil)
register_algorithm('meta_sgd', meta_sgd)
register_algorithm('maml_plus_plus', maml_plus_plus)
register_algorithm('protonet', protonet, any_ways=True)
register_algorithm('r2d2', r2d2, any_ways=True)
register_algorithm('baseline', baseline, train_batches=True, any_ways=True)
register_algorithm(
  'baseline_plus_plus', baseline_plus_plus, train_batches=True, any_ways=True
)


def traits(name: str) -> Traits:
  """The `Traits` of the registered algorithm `name`."""
  if name not in ALGORITHMS:
    raise ValueError(
      f'Unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}.'
    )
  return _TRAITS[name]


def options(name: str) -> tuple[str, ...]:
  """The keyword options the builder of `name` takes."""
  return traits(name).options


def make_learner(
  name: str,
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float,
  num_inner_steps: int,
  inner_optimizer: optax.GradientTransformation | None = None,
  **kwargs,
) -> MetaLearner:
  """Builds the algorithm `name` of `ALGORITHMS`.

  Args:
    name: a key of `ALGORITHMS`.
    model: the `Model`.
    make_loss: `make_loss(apply) -> loss_fn`.
    inner_lr: the inner learning rate.
    num_inner_steps: inner steps during meta-training.
    inner_optimizer: only for the builders that take one (Reptile).
    **kwargs: the builder's other options (see `options(name)`).

  Raises:
    ValueError: for an unknown name or an option the builder does not take.
  """
  known = options(name)
  if inner_optimizer is not None:
    if 'inner_optimizer' not in known:
      raise ValueError(
        f'{name} uses plain SGD with inner_lr in its inner '
        'loop; inner_optimizer applies to '
        f'{[n for n in ALGORITHMS if "inner_optimizer" in options(n)]} only.'
      )
    kwargs['inner_optimizer'] = inner_optimizer
  unknown = sorted(set(kwargs) - set(known))
  if unknown:
    raise ValueError(
      f'{name} takes no option {unknown}; its options are {list(known)}.'
    )
  return ALGORITHMS[name](model, make_loss, inner_lr, num_inner_steps, **kwargs)


__all__ = [
  'ALGORITHMS',
  'MetaLearner',
  'STATISTICS_METRIC',
  'Traits',
  'anil',
  'baseline',
  'baseline_plus_plus',
  'check_inner_lr',
  'check_num_steps',
  'fomaml',
  'gradient_adaptation',
  'head_apply',
  'imaml',
  'inner_loop',
  'learned_sgd',
  'learner_of_model',
  'make_learner',
  'maml',
  'maml_plus_plus',
  'meta_sgd',
  'multi_step_loss_weights',
  'normalised_learner',
  'options',
  'pretrain',
  'protonet',
  'r2d2',
  'register_algorithm',
  'reptile',
  'require_embed',
  'score_alone',
  'score_together',
  'scoring_last_step',
  'split_task_key',
  'traits',
  'with_scoring_alone',
]
