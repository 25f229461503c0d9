"""Types shared across jaxmeta: tasks, parameters, keys."""

from typing import Any, NamedTuple

import chex
import jax

Array = jax.Array
PRNGKey = chex.PRNGKey
PyTree = Any
Params = PyTree  # A pytree of arrays: a model's (or meta-learner's) parameters.


class Task(NamedTuple):
  """One few-shot task: a support set to adapt on and a query set to score.

  A `Task` is a pytree, so a meta-batch of tasks is the same structure with a
  leading `[tasks]` axis on every leaf (what `jax.vmap` produces and consumes).

  Attributes:
    support_x: inputs of the support set, `[support_size, ...]`, e.g.
      `[ways * shots, 28, 28, 1]` float32 for images, `[k, 1]` for sinusoids.
    support_y: targets of the support set, `[support_size]` int32 class labels
      in `[0, ways)` for classification, `[k, 1]` float32 for regression.
    query_x: inputs of the query set, `[query_size, ...]`.
    query_y: targets of the query set, `[query_size]` or `[query_size, 1]`.
  """

  support_x: Array
  support_y: Array
  query_x: Array
  query_y: Array
