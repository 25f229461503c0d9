"""experiments.benchmark.xla_costs against hand-computed sizes and FLOPs."""

import jax
import jax.numpy as jnp

from experiments.benchmark import xla_costs


def test_shape_bytes_of_arrays_and_tuples():
  assert xla_costs.shape_bytes('f32[4,5]{1,0}') == 80
  assert (
    xla_costs.shape_bytes('(f32[4,5]{1,0}, f32[], /*index=2*/bf16[3])')
    == 80 + 4 + 6
  )
  assert xla_costs.shape_bytes('u8[2,3,1]') == 6


def test_collectives_counts_each_instruction_with_its_payload():
  hlo = '\n'.join(
    [
      '%all-reduce = (f32[5]{0}, f32[]) all-reduce(%a, %b), channel_id=1',
      '%ag = f32[8,2]{1,0} all-gather-start(%c), dimensions={0}',
      '%x = f32[3]{0} add(%d, %e)',
    ]
  )
  assert xla_costs.collectives(hlo) == [('all-reduce', 24), ('all-gather', 64)]


def test_compiled_costs_of_a_matmul():
  a = jax.ShapeDtypeStruct((8, 16), jnp.float32)
  b = jax.ShapeDtypeStruct((16, 4), jnp.float32)
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  costs = xla_costs.compiled_costs(compiled)
  assert costs['flops'] == 2 * 8 * 16 * 4
  assert costs['argument_bytes'] == (8 * 16 + 16 * 4) * 4
  assert costs['output_bytes'] == 8 * 4 * 4
  assert costs['all_reduce_count'] == 0
  assert costs['other_collective_count'] == 0


def test_unrolled_flops_counts_every_loop_iteration():
  def power(x):
    return jax.lax.scan(lambda c, _: (c @ x, None), x, None, length=10)[0]

  x = jnp.ones((8, 8), jnp.float32)
  one_matmul = 2 * 8**3
  assert xla_costs.unrolled_flops(power, x) == 10 * one_matmul
  # XLA's count of the compiled loop: its body once (and the counter).
  compiled = jax.jit(power).lower(x).compile()
  assert xla_costs.compiled_costs(compiled)['flops'] < 2 * one_matmul
