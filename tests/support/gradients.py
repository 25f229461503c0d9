"""Independent references for gradients: central finite differences along a
random direction."""

import jax
import jax.numpy as jnp


def tree_dot(a, b):
  """The inner product of two pytrees of the same structure."""
  return sum(
    jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def check_directional_derivative(grad, f, params, key, eps=1e-6):
  """`(<grad, d>, (f(params + eps d) - f(params - eps d)) / (2 eps))` for a
  random normal direction `d` drawn with `key`: the two should agree."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  direction = treedef.unflatten(
    [jax.random.normal(k, v.shape, v.dtype) for k, v in zip(keys, leaves)]
  )
  plus = jax.tree.map(lambda p, d: p + eps * d, params, direction)
  minus = jax.tree.map(lambda p, d: p - eps * d, params, direction)
  return tree_dot(grad, direction), (f(plus) - f(minus)) / (2 * eps)
