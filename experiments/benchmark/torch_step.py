"""PyTorch's side: the same weights and batch, the checked and the timed step.

Imports torch: `run` loads it where torch is installed (for the matmul peak)
and refuses PyTorch implementations where it is not.
"""

import time
from typing import Callable

import ml_collections
import numpy as np
import torch

from . import torch_baselines
from .timing import Timer

Config = ml_collections.ConfigDict
# How much `--debug_perturb_check` scales a torch gradient tensor by.
DEBUG_PERTURBATION = 1e-3


def device_name(requested: str) -> str:
  """'cuda' or 'cpu' for `--torch_device` ('auto': cuda if available)."""
  if requested == 'auto':
    return 'cuda' if torch.cuda.is_available() else 'cpu'
  return requested


def set_precision(highest: bool) -> None:
  """Full float32 matmuls and convolutions (no TF32), or TF32 allowed."""
  torch.backends.cudnn.allow_tf32 = not highest
  torch.backends.cuda.matmul.allow_tf32 = not highest


def synchronize(device: str) -> None:
  """Waits for `device`'s queued work (CUDA runs asynchronously)."""
  if device == 'cuda':
    torch.cuda.synchronize()


def matmul(size: int, dtype: str, device: str) -> Callable[[], None]:
  """One synchronised `torch.matmul` of two random square matrices."""
  generator = torch.Generator().manual_seed(0)
  a, b = torch.randn(2, size, size, generator=generator).to(
    device, getattr(torch, dtype)
  )

  def run():
    torch.matmul(a, b)
    synchronize(device)

  return run


def batch_from_tasks(tasks, device: str) -> torch_baselines.TorchBatch:
  """jaxmeta's `Task` meta-batch as a `TorchBatch` on `device`."""
  return torch_baselines.batch_from_numpy(
    *(np.asarray(a) for a in tasks), device=device
  )


def torch_setup(
  config: Config,
  implementation: str,
  algorithm: str,
  params,
  device: str,
  dtype: torch.dtype | None = None,
):
  """A fresh torch `Conv4` at jaxmeta's `params`, and its meta-gradient."""
  model = torch_baselines.Conv4(
    config.ways, config.input_shape, config.num_filters, config.num_blocks
  ).to(device=device, dtype=dtype)
  # float32 values, exact in float64.
  torch_baselines.params_from_jax(model, params)
  meta_grad = torch_baselines.make_meta_grad(
    implementation.removeprefix('torch_'),
    algorithm,
    config.inner_lr,
    config.inner_steps,
  )
  return model, meta_grad


def torch_meta_gradient(
  config: Config,
  implementation: str,
  algorithm: str,
  params,
  batch: torch_baselines.TorchBatch,
  device: str,
  float64: bool = False,
  perturb: bool = False,
) -> dict[str, np.ndarray]:
  """One PyTorch implementation's meta-gradient at jaxmeta's `params`, in
  jaxmeta's layout; in float64 if asked, scaled by `1 + DEBUG_PERTURBATION`
  if `perturb`."""
  dtype = torch.float64 if float64 else None
  model, meta_grad = torch_setup(
    config, implementation, algorithm, params, device, dtype
  )
  if float64:
    batch = torch_baselines.TorchBatch(
      *(t.double() if t.is_floating_point() else t for t in batch)
    )
  meta_grad(model, batch)
  grads = torch_baselines.grads_to_jax(model)
  if perturb:
    grads = {n: g * (1 + DEBUG_PERTURBATION) for n, g in grads.items()}
  return grads


def start_torch_timer(
  config: Config,
  implementation: str,
  algorithm: str,
  params,
  batch: torch_baselines.TorchBatch,
  device: str,
) -> Timer:
  """A fresh model at `params` and its `zero_grad` + meta-gradient +
  `Adam.step`, run once (its peak memory is this first step's)."""
  model, meta_grad = torch_setup(
    config, implementation, algorithm, params, device
  )
  optimizer = torch.optim.Adam(model.parameters(), lr=config.outer_lr)
  cuda = device == 'cuda'

  def run():
    optimizer.zero_grad(set_to_none=True)
    meta_grad(model, batch)
    optimizer.step()
    synchronize(device)

  if cuda:
    torch.cuda.reset_peak_memory_stats()
  start = time.perf_counter()
  run()
  first_step_s = time.perf_counter() - start
  peak = torch.cuda.max_memory_allocated() if cuda else None
  return Timer(
    run,
    dict(
      compile_s=None,
      first_step_s=first_step_s,
      first_run_s=first_step_s,
      peak_memory_bytes=peak,
      peak_memory_source='torch.cuda.max_memory_allocated' if peak else None,
    ),
  )
