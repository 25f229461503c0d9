"""Baseline and Baseline++ (Chen et al. 2019): pretrain a classifier on all
training classes, then fit a new head on each task's support set."""

from typing import Callable

import jax
import optax

from jaxmeta.algorithms.base import check_inner_lr
from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import gradient_task_update
from jaxmeta.algorithms.base import head_adaptation
from jaxmeta.algorithms.base import head_apply
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import require_embed
from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.models import norms
from jaxmeta.models.base import cosine_logits
from jaxmeta.models.base import init_linear_head
from jaxmeta.models.base import join_head
from jaxmeta.models.base import linear_head
from jaxmeta.models.base import Model
from jaxmeta.models.base import split_head

HEADS = ('linear', 'cosine')
# The fine-tuned head starts from a fixed draw: evaluation is deterministic.
_HEAD_SEED = 0


def cosine_scale(num_classes: int) -> float:
  """Baseline++'s temperature: 2, or 10 above 200 classes (Chen et al.'s
  code)."""
  return 2.0 if num_classes <= 200 else 10.0


def baseline(
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float,
  num_inner_steps: int = 0,
  *,
  num_classes: int | None = None,
  head: str = 'linear',
  momentum: float = 0.9,
) -> MetaLearner:
  """Baseline (`head='linear'`) and Baseline++ (`head='cosine'`).

  Training is classification of minibatches of all `num_classes` training
  classes (`train_batches`). A task is classified by a new head of the
  model's head width, trained on the frozen body's support embeddings with
  `num_steps` full-batch steps of SGD (`inner_lr`, `momentum`) from a fixed
  Glorot-uniform draw (Chen et al.: minibatches of 4, weight decay 1e-3).
  Baseline++'s head is `cosine_logits` with `cosine_scale`.

  Args:
    model: a `Model` with `embed`; its head width is the evaluation ways.
    make_loss: `make_loss(apply) -> loss_fn` (classification).
    inner_lr: the fine-tuning learning rate.
    num_inner_steps: unused in training, >= 0.
    num_classes: the number of training classes (pretraining head width).
    head: 'linear' (Baseline) or 'cosine' (Baseline++).
    momentum: the fine-tuning SGD momentum.

  Returns:
    A `MetaLearner` named 'baseline' or 'baseline_plus_plus' over the body
    and the pretraining head.

  References:
    Chen, Liu, Kira, Wang & Huang 2019, "A Closer Look at Few-shot
    Classification", Section 3.
  """
  require_embed(model, 'baseline')
  check_num_steps(num_inner_steps)
  check_inner_lr(inner_lr)
  if head not in HEADS:
    raise ValueError(f'head must be one of {HEADS}, got {head!r}.')
  if isinstance(num_classes, bool) or not isinstance(num_classes, int):
    raise ValueError(
      'baseline needs num_classes, the number of training classes (an int).'
    )
  if num_classes < 2:
    raise ValueError(f'num_classes must be >= 2, got {num_classes}.')
  ways = jax.eval_shape(model.init, jax.random.key(0))['head']['b'].shape[0]

  def classifier(width):
    if head == 'linear':
      return linear_head
    scale = cosine_scale(width)
    return lambda h, f: cosine_logits(h, f, scale)

  train_loss = make_loss(head_apply(classifier(num_classes)))
  task_loss = make_loss(head_apply(classifier(ways)))
  optimizer = optax.sgd(inner_lr, momentum=momentum or None)
  support_embed = norms.self_normalised(model).embed

  def init(key):
    body_key, head_key = jax.random.split(key)
    body, _ = split_head(model.init(body_key))
    return join_head(
      body, init_linear_head(head_key, model.feature_dim, num_classes)
    )

  def new_head(params):
    del params  # Every task's head starts from the same draw.
    return init_linear_head(jax.random.key(_HEAD_SEED), model.feature_dim, ways)

  adapt, evaluate = head_adaptation(model, task_loss, optimizer, new_head)

  def minibatch_loss(params, task, key):
    check_batch(task.support_x, task.support_y, 'minibatch')
    body, h = split_head(params)
    # A minibatch of all classes has no queries: it normalises itself.
    return train_loss(
      h, support_embed(body, task.support_x, key=key), task.support_y
    )

  task_classifier = classifier(ways)

  def predict(adapted, x):
    body, h = split_head(adapted)
    return task_classifier(h, model.embed(body, x))

  name = 'baseline' if head == 'linear' else 'baseline_plus_plus'
  task_update = gradient_task_update(minibatch_loss)
  return MetaLearner(name, init, adapt, task_update, evaluate, predict, model)


def baseline_plus_plus(
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float,
  num_inner_steps: int = 0,
  *,
  num_classes: int | None = None,
  momentum: float = 0.9,
) -> MetaLearner:
  """Baseline++: `baseline(..., head='cosine')`."""
  return baseline(
    model,
    make_loss,
    inner_lr,
    num_inner_steps,
    num_classes=num_classes,
    head='cosine',
    momentum=momentum,
  )
