"""Fully connected ReLU networks (sinusoid regression, MNIST-like inputs)."""

import math
from typing import Sequence

import jax

from jaxmeta.models.base import Model
from jaxmeta.models.base import register_backbone
from jaxmeta.models.layers import _glorot_dense
from jaxmeta.types import Array, Params, PRNGKey


def mlp(layer_sizes: Sequence[int], log_softmax_output: bool = False) -> Model:
  """A fully connected ReLU network.

  Args:
    layer_sizes: widths from input to output, e.g. `(1, 40, 40, 1)`.
    log_softmax_output: if True, the output is a log-softmax.

  Returns:
    A `Model` without a body/head split mapping `[batch, ...]` (flattened to
    `[batch, layer_sizes[0]]`) to `[batch, layer_sizes[-1]]`.
  """
  layer_sizes = tuple(int(s) for s in layer_sizes)
  if len(layer_sizes) < 2 or min(layer_sizes) < 1:
    raise ValueError(f'mlp needs >= 2 positive layer sizes, got {layer_sizes}.')

  def init(key: PRNGKey) -> Params:
    keys = jax.random.split(key, len(layer_sizes) - 1)
    return {
      f'dense{i}': _glorot_dense(k, n_in, n_out)
      for i, (k, n_in, n_out) in enumerate(
        zip(keys, layer_sizes[:-1], layer_sizes[1:])
      )
    }

  def apply(
    params: Params,
    x: Array,
    *,
    key: PRNGKey | None = None,
    step: Array | None = None,
  ) -> Array:
    del key, step  # Deterministic, no per-step parameters.
    if math.prod(x.shape[1:]) != layer_sizes[0]:
      raise ValueError(
        f'mlp was built for inputs of {layer_sizes[0]} values (layer_sizes'
        f'[0]), got an array of shape {tuple(x.shape)} ('
        f'{math.prod(x.shape[1:])} values per example): give inputs '
        f'[batch, {layer_sizes[0]}], or build the mlp for this size.'
      )
    h = x.reshape(x.shape[0], -1)  # [batch, layer_sizes[0]]
    num_layers = len(layer_sizes) - 1
    for i in range(num_layers):
      layer = params[f'dense{i}']
      h = h @ layer['w'] + layer['b']
      if i < num_layers - 1:
        h = jax.nn.relu(h)
    return jax.nn.log_softmax(h) if log_softmax_output else h

  return Model(init, apply)


@register_backbone('mlp')
def mlp_backbone(
  num_outputs: int, input_shape: Sequence[int], hidden: Sequence[int] = (40, 40)
) -> Model:
  """`mlp((prod(input_shape), *hidden, num_outputs))`, the backbone signature.

  Args:
    num_outputs: width of the output layer.
    input_shape: shape of one input (flattened to its size).
    hidden: widths of the hidden ReLU layers.

  Returns:
    A `Model`.
  """
  return mlp((math.prod(int(s) for s in input_shape), *hidden, num_outputs))
