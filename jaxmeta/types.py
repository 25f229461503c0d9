"""Types shared across jaxmeta: tasks, parameters, keys."""

from typing import Any, NamedTuple

import chex
import jax

Array = jax.Array
PRNGKey = chex.PRNGKey
PyTree = Any
Params = PyTree  # A pytree of arrays: a model's (or meta-learner's) parameters.


class Task(NamedTuple):
  """One few-shot task, a pytree (a meta-batch adds a leading `[tasks]` axis).

  Attributes:
    support_x: support inputs `[support_size, ...]`, e.g. `[ways * shots,
      28, 28, 1]` float32.
    support_y: support targets: `[support_size]` int32 labels in `[0, ways)`,
      or `[k, 1]` float32 for regression.
    query_x: query inputs, `[query_size, ...]`.
    query_y: query targets, `[query_size]` or `[query_size, 1]`.
  """

  support_x: Array
  support_y: Array
  query_x: Array
  query_y: Array
