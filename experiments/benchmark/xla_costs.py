"""What XLA says a compiled program costs: FLOPs, memory, collective bytes.

Read from the compiler, not measured: `cost_analysis()`, `memory_analysis()`
and the collective instructions of the optimised HLO. Used to size
meta-batches per device and to judge the cost of the meta-gradient
all-reduce (`benchmarks/scaling/`).

Example::

  learner = jaxmeta.maml(model, jaxmeta.classification_loss, 0.4, 1)
  task = jaxmeta.Task(jax.ShapeDtypeStruct((5, 28, 28, 1), jnp.float32), ...)
  task_costs(learner, jax.eval_shape(model.init, key), task)['temp_bytes']
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from jaxmeta.algorithms import MetaLearner
from jaxmeta.types import Params, Task

_COLLECTIVES = (
  'all-reduce all-gather reduce-scatter collective-permute all-to-all '
  'collective-broadcast'
).split()
# `%name = <result shape> <opcode>(`; async forms end in -start.
_INSTRUCTION = re.compile(
  r'=\s*(?P<shape>.*?)\s+(?P<op>' + '|'.join(_COLLECTIVES) + r')(?:-start)?\('
)
_ARRAY_SHAPE = re.compile(r'\b([a-z]+\d*)\[([\d,]*)\]')
# An element type's bits: pred, or the number ending its name (s8, bf16, c64).
_BITS = re.compile(r'pred|[a-z]+?(\d+)')


def shape_bytes(hlo_shape: str) -> int:
  """Bytes of an HLO shape string, e.g. `(f32[4,5]{1,0}, f32[])` -> 84."""
  total = 0
  for dtype, dims in _ARRAY_SHAPE.findall(hlo_shape):
    bits = _BITS.fullmatch(dtype)
    if not bits:
      continue
    size = int(np.prod([int(d) for d in dims.split(',') if d], dtype=np.int64))
    total += size * (int(bits.group(1)) // 8 if bits.group(1) else 1)
  return total


def collectives(hlo_text: str) -> list[tuple[str, int]]:
  """`(opcode, bytes of its result)` of every collective instruction of an
  HLO module, each counted once (also inside a `while` body)."""
  return [
    (m.group('op'), shape_bytes(m.group('shape')))
    for m in _INSTRUCTION.finditer(hlo_text)
  ]


def cost_dict(cost: Any) -> dict[str, float]:
  """A `cost_analysis()` result as one dict (older JAX: one per program)."""
  return cost[0] if isinstance(cost, (list, tuple)) else cost


def compiled_costs(compiled: Any) -> dict[str, float]:
  """FLOPs, memory and collective bytes of a compiled (`.compile()`) program.

  Args:
    compiled: a `jax.stages.Compiled`, e.g. `jax.jit(f).lower(*args)
      .compile()`. For an SPMD program (`shard_map`, sharded `jit`) every
      number is per device.

  Returns:
    A dict: `flops` and `bytes_accessed` (XLA's cost model, which counts a
    loop body once whatever its trip count: see `unrolled_flops`),
    `temp_bytes`, `argument_bytes`, `output_bytes`, `generated_code_bytes`
    (buffer assignment), `all_reduce_count`, `all_reduce_bytes` and
    `other_collective_count`.
  """
  cost = cost_dict(compiled.cost_analysis())
  memory = compiled.memory_analysis()
  ops = collectives(compiled.as_text())
  all_reduce = [b for op, b in ops if op == 'all-reduce']
  return {
    'flops': float(cost.get('flops', 0.0)),
    'bytes_accessed': float(cost.get('bytes accessed', 0.0)),
    'temp_bytes': int(memory.temp_size_in_bytes),
    'argument_bytes': int(memory.argument_size_in_bytes),
    'output_bytes': int(memory.output_size_in_bytes),
    'generated_code_bytes': int(memory.generated_code_size_in_bytes),
    'all_reduce_count': len(all_reduce),
    'all_reduce_bytes': int(sum(all_reduce)),
    'other_collective_count': len(ops) - len(all_reduce),
  }


def task_costs(
  learner: MetaLearner, params: Params, task: Task
) -> dict[str, float]:
  """`compiled_costs` of one task's meta-gradient, `learner.task_update`.

  `temp_bytes` is the working memory of one task (second-order MAML: every
  activation of the inner loop); `b` tasks vmapped at once need about `b`
  times that.

  Args:
    learner: the algorithm.
    params: meta-parameters, arrays or `jax.ShapeDtypeStruct`s.
    task: ONE task (no task axis), arrays or `jax.ShapeDtypeStruct`s.

  Returns:
    See `compiled_costs`.
  """
  return compiled_costs(
    jax.jit(learner.task_update).lower(params, task).compile()
  )


def unrolled_flops(fn: Any, *args: Any) -> float:
  """XLA's FLOP count of `jax.jit(fn)(*args)` with every loop unrolled.

  XLA's cost analysis counts the body of a `while` loop (`lax.scan`,
  `lax.map`) once; traced under `jax.disable_jit`, those loops run in Python,
  so the program counted does every iteration. Lowered only, not compiled.
  """
  with jax.disable_jit():
    cost = jax.jit(fn).lower(*args).cost_analysis()
  return float(cost_dict(cost).get('flops', 0.0))
