"""The machine's matmul peak, and where each timed row stands under it."""

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

DTYPES = ('float32', 'bfloat16')
# Timed runs of each matmul after the warm-up one (compilation, allocation).
MATMUL_REPEATS = 3


def matmul_gflops(size: int, seconds: float) -> float:
  """GFLOP/s of one `[size, size] @ [size, size]` in `seconds`: 2 n^3 / t."""
  return 2 * size**3 / seconds / 1e9


def best_seconds(run: Callable[[], None], repeats: int) -> float:
  """The shortest of `repeats` timed calls of `run` after one untimed."""
  run()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return min(times)


def xla_matmul(size: int, dtype: str) -> Callable[[], None]:
  """One synchronised jitted matmul of two random square matrices, with
  float32 accumulation and output: as PyTorch's bf16 matmul accumulates in
  float32, and XLA:CPU's bf16-output matmul took a path 6x slower than this
  one on AMX (benchmarks/cpu/NOTES.md)."""
  a, b = jax.random.normal(jax.random.key(0), (2, size, size), dtype)
  matmul = jax.jit(
    lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32)
  )
  return lambda: matmul(a, b).block_until_ready()


def matmul_peaks(
  size: int,
  highest: bool,
  torch_step: Any = None,
  torch_device: str | None = None,
) -> list[dict[str, Any]]:
  """Times a square matmul by XLA, and by PyTorch if `torch_step` is given.

  Args:
    size: the matrices' side n; 0: measure nothing.
    highest: float32 at full precision (the timed steps' `--timing_precision
      =highest`), else the frameworks' defaults (TF32 allowed on GPUs).
    torch_step: the `torch_step` module, or None (no PyTorch).
    torch_device: PyTorch's device.

  Returns:
    One dict per framework and dtype of `DTYPES`: `framework`, `dtype`,
    `size`, `seconds` (the best of `MATMUL_REPEATS`) and `gflops` (2 n^3 /
    seconds, in 1e9 FLOP/s).
  """
  if size <= 0:
    return []
  runners = {'xla': xla_matmul}
  if torch_step:
    torch_step.set_precision(highest)
    runners['torch'] = lambda n, dtype: torch_step.matmul(
      n, dtype, torch_device
    )
  peaks = []
  # The precision is fixed when the matmul is traced, at its first call.
  with jax.default_matmul_precision('highest' if highest else None):
    for framework, make in runners.items():
      for dtype in DTYPES:
        seconds = best_seconds(make(size, dtype), MATMUL_REPEATS)
        peaks.append(
          dict(
            framework=framework,
            dtype=dtype,
            size=size,
            seconds=seconds,
            gflops=matmul_gflops(size, seconds),
          )
        )
  if torch_step:
    torch_step.set_precision(True)
  return peaks


def fp32_peak(peaks: Sequence[dict[str, Any]]) -> float | None:
  """The best float32 GFLOP/s of `matmul_peaks`, or None."""
  return max(
    (p['gflops'] for p in peaks if p['dtype'] == 'float32'), default=None
  )


def add_achieved(rows: Sequence[dict[str, Any]], peak: float | None) -> None:
  """Adds `achieved_gflops` (flops / median step time) and
  `fraction_of_fp32_peak` (of `peak` GFLOP/s) to each timed row with
  `flops` (in place)."""
  for row in rows:
    if row['status'] == 'ok' and row.get('flops'):
      row['achieved_gflops'] = row['flops'] / row['median_ms'] / 1e6
      row['fraction_of_fp32_peak'] = (
        row['achieved_gflops'] / peak if peak else None
      )
