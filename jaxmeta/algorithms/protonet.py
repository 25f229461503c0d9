"""Prototypical Networks (Snell, Swersky & Zemel 2017)."""

from typing import Callable

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import closed_form_learner
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import require_embed
from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.models import norms
from jaxmeta.models.base import Model
from jaxmeta.models.base import split_head
from jaxmeta.types import Array


def prototypes(
  features: Array, labels: Array, num_classes: int
) -> tuple[Array, Array]:
  """Class means of support embeddings.

  Args:
    features: `[support_size, d]`.
    labels: `[support_size]` int in `[0, num_classes)`.
    num_classes: a static bound on the classes.

  Returns:
    `(prototypes [num_classes, d], counts [num_classes])`; a class without
    support examples has a zero prototype and count 0.
  """
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=features.dtype)
  counts = jnp.sum(one_hot, axis=0)
  sums = one_hot.T @ features
  return sums / jnp.maximum(counts, 1)[:, None], counts


def prototype_logits(
  query_features: Array, protos: Array, counts: Array
) -> Array:
  """`-|f_q - c_k|^2` for every query and class; `-inf` for a class without
  support examples (never predicted)."""
  distances = jnp.sum(
    jnp.square(query_features[:, None, :] - protos[None, :, :]), axis=-1
  )
  return jnp.where(counts[None, :] > 0, -distances, -jnp.inf)


def protonet(
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float | None = None,
  num_inner_steps: int = 0,
) -> MetaLearner:
  """Prototypical Networks (Snell et al. 2017).

  A task's classes are the means `c_k` of their support embeddings, a query's
  logits `-|f(x) - c_k|^2` (Section 2.2); no inner loop, nothing depends on
  the ways. The meta-parameters are the body's; the support set must hold
  every label in `[0, support_size)`.

  Args:
    model: a `Model` with `embed`.
    make_loss: `make_loss(apply) -> loss_fn` (classification), applied to
      the logits.
    inner_lr: unused; accepted for the uniform signature.
    num_inner_steps: unused, must be >= 0.

  Returns:
    A `MetaLearner` named 'protonet'; `adapt` returns `{'body', 'prototypes':
    [classes, d], 'counts': [classes]}`.

  References:
    Snell, Swersky & Zemel 2017, "Prototypical Networks for Few-shot
    Learning", Algorithm 1.
  """
  del inner_lr
  require_embed(model, 'protonet')
  check_num_steps(num_inner_steps)
  support_embed = norms.self_normalised(model).embed

  def init(key):
    body, _ = split_head(model.init(key))
    return body

  def adapt(body, support_x, support_y, num_steps=0, key=None):
    del num_steps
    check_batch(support_x, support_y, 'support')
    protos, counts = prototypes(
      support_embed(body, support_x, key=key), support_y, support_x.shape[0]
    )
    return {'body': body, 'prototypes': protos, 'counts': counts}

  def predict(adapted, x, key=None):
    return prototype_logits(
      model.embed(adapted['body'], x, key=key),
      adapted['prototypes'],
      adapted['counts'],
    )

  return closed_form_learner('protonet', model, make_loss, init, adapt, predict)
