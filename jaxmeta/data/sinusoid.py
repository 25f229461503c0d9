"""The sinusoid regression family of Finn et al. 2017 (Section 5.1).

A task is `y = A * sin(x - phi)` with amplitude `A ~ U[0.1, 5]`, phase
`phi ~ U[0, pi]` and inputs `x ~ U[-5, 5]`. Sampling is pure JAX, so it runs
inside jit and vmap.
"""

import jax
import jax.numpy as jnp

from jaxmeta.types import Array, PRNGKey, Task

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, jnp.pi)
INPUT_RANGE = (-5.0, 5.0)


def sample_task_params(key: PRNGKey) -> tuple[Array, Array]:
  """Draws `(amplitude, phase)` of one task, both float32 scalars."""
  k_amp, k_phase = jax.random.split(key)
  amplitude = jax.random.uniform(k_amp, (), jnp.float32, *AMPLITUDE_RANGE)
  phase = jax.random.uniform(k_phase, (), jnp.float32, *PHASE_RANGE)
  return amplitude, phase


def sinusoid(x: Array, amplitude: Array, phase: Array) -> Array:
  """The task's function, `amplitude * sin(x - phase)`."""
  return amplitude * jnp.sin(x - phase)


def sample_task(key: PRNGKey, shots: int, queries: int) -> Task:
  """Draws one task: `shots` support points and `queries` query points.

  Args:
    key: PRNG key.
    shots: support points K (5 or 10 in the paper).
    queries: query points.

  Returns:
    A `Task` with `support_x, support_y` of shape `[shots, 1]` and
    `query_x, query_y` of shape `[queries, 1]`, float32.
  """
  k_task, k_support, k_query = jax.random.split(key, 3)
  amplitude, phase = sample_task_params(k_task)
  draw = lambda k, n: jax.random.uniform(k, (n, 1), jnp.float32, *INPUT_RANGE)
  support_x, query_x = draw(k_support, shots), draw(k_query, queries)
  return Task(
    support_x,
    sinusoid(support_x, amplitude, phase),
    query_x,
    sinusoid(query_x, amplitude, phase),
  )


def sample_tasks(
  key: PRNGKey, num_tasks: int, shots: int, queries: int
) -> Task:
  """A meta-batch of `num_tasks` tasks, every leaf `[num_tasks, n, 1]`."""
  keys = jax.random.split(key, num_tasks)
  return jax.vmap(sample_task, in_axes=(0, None, None))(keys, shots, queries)
