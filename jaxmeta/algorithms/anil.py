"""ANIL (Raghu et al. 2020): MAML whose inner loop adapts only the head."""

from typing import Callable

import optax

from jaxmeta.algorithms.base import check_inner_lr
from jaxmeta.algorithms.base import check_num_steps
from jaxmeta.algorithms.base import gradient_task_update
from jaxmeta.algorithms.base import head_adaptation
from jaxmeta.algorithms.base import head_apply
from jaxmeta.algorithms.base import inner_loop
from jaxmeta.algorithms.base import learner_of_model
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.base import require_embed
from jaxmeta.algorithms.base import split_task_key
from jaxmeta.losses import check_batch
from jaxmeta.losses import LossFn
from jaxmeta.models import norms
from jaxmeta.models.base import linear_head
from jaxmeta.models.base import Model
from jaxmeta.models.base import split_head


def anil(
  model: Model,
  make_loss: Callable[..., LossFn],
  inner_lr: float,
  num_inner_steps: int,
  *,
  first_order: bool = False,
) -> MetaLearner:
  """ANIL, "Almost No Inner Loop" (Raghu et al. 2020).

  MAML whose inner loop adapts only the linear head, on the body's embeddings
  of the support and query sets computed once per task; the body learns
  through the embeddings (and, second order, the head's inner updates).

  Args:
    model: a `Model` with `embed` (conv4, resnet12).
    make_loss: `make_loss(apply) -> loss_fn`, applied to the head alone.
    inner_lr: the head's inner learning rate.
    num_inner_steps: inner steps during meta-training.
    first_order: drop the second-order terms.

  Returns:
    A `MetaLearner` named 'anil' over the model's parameters.

  References:
    Raghu, Raghu, Bengio & Vinyals 2020, "Rapid Learning or Feature Reuse?
    Towards Understanding the Effectiveness of MAML", Section 4.
  """
  require_embed(model, 'anil')
  num_inner_steps = check_num_steps(num_inner_steps)
  check_inner_lr(inner_lr)
  head_loss = make_loss(head_apply(linear_head))
  optimizer = optax.sgd(inner_lr)
  adapt, evaluate = head_adaptation(
    model, head_loss, optimizer, lambda params: split_head(params)[1]
  )
  support_embed = norms.self_normalised(model).embed

  def meta_loss(params, task, key):
    check_batch(task.query_x, task.query_y, 'query')
    body, head = split_head(params)
    support_key, query_key = split_task_key(key)
    support_features = support_embed(body, task.support_x, key=support_key)
    query_features = model.embed(body, task.query_x, key=query_key)
    adapted, _ = inner_loop(
      head_loss,
      head,
      support_features,
      task.support_y,
      num_inner_steps,
      optimizer,
      first_order=first_order,
    )
    return head_loss(adapted, query_features, task.query_y)

  task_update = gradient_task_update(meta_loss)
  return learner_of_model('anil', model, adapt, task_update, evaluate)
