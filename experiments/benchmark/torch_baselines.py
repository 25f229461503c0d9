"""PyTorch baselines for the meta-learning benchmark, written as users write them.

A torch Conv-4 that computes the same function as `jaxmeta.conv4`, and three
ways of writing one meta-step of MAML, first-order MAML and Reptile:

* `loop`: the per-task loop of learn2learn / `higher`-style code: a
  functional forward on a list of tensors, inner steps by
  `torch.autograd.grad` (with `create_graph` for MAML), one `backward()` per
  task.
* `func`: `torch.func`: `functional_call` + `grad`, `vmap` over the tasks.
* `higher`: `higher.innerloop_ctx` around the `torch.nn` Conv-4 and an SGD
  inner optimiser.

Every implementation is a `meta_grad(model, batch)` that leaves the mean
meta-gradient (Reptile: the mean pseudo-gradient `theta - phi`) in the
`.grad` of `model.parameters()`, which the benchmark compares with
`jaxmeta.meta_gradient` before it times anything.

Layout: torch is NCHW / OIHW, jaxmeta NHWC / HWIO; the torch model flattens
its last feature map in NHWC order, so that its head weight is jaxmeta's
`head/w` transposed. `params_from_jax` and `grads_to_jax` convert.
"""

from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


# torch.nn.BatchNorm2d's default epsilon is also jaxmeta.models.batch_norm's.
BN_EPS = 1e-5
POOL_SIZE = 2
KERNEL_SIZE = 3

# The library's algorithms that every implementation here writes; the
# benchmark times these.
ALGORITHMS = ('maml', 'fomaml', 'reptile')


class TorchBatch(NamedTuple):
  """A meta-batch as torch tensors (NCHW images, int64 labels).

  Attributes:
    support_x: `[tasks, ways * shots, C, H, W]` float32.
    support_y: `[tasks, ways * shots]` int64.
    query_x: `[tasks, ways * queries, C, H, W]` float32.
    query_y: `[tasks, ways * queries]` int64.
  """

  support_x: torch.Tensor
  support_y: torch.Tensor
  query_x: torch.Tensor
  query_y: torch.Tensor


def batch_from_numpy(
  support_x: np.ndarray,
  support_y: np.ndarray,
  query_x: np.ndarray,
  query_y: np.ndarray,
  device: torch.device | str = 'cpu',
) -> TorchBatch:
  """An NHWC numpy meta-batch (jaxmeta's `Task` layout) as a `TorchBatch` on
  `device`: the same fields, images transposed to NCHW."""
  # np.array copies: torch must not share (read-only) jax buffers.
  to_x = lambda a: torch.from_numpy(
    np.array(np.transpose(a, (0, 1, 4, 2, 3)), np.float32, order='C')
  ).to(device)
  to_y = lambda a: torch.from_numpy(np.array(a, np.int64)).to(device)
  return TorchBatch(
    to_x(support_x), to_y(support_y), to_x(query_x), to_y(query_y)
  )


class Conv4(nn.Module):
  """Conv-4 as a torch.nn module, the same function as `jaxmeta.conv4`.

  Each block: 3x3 conv (with a bias, as in the reference implementation;
  `params_from_jax` zeroes it, batch norm cancels it) -> batch norm with the
  batch's statistics -> ReLU -> 2x2 max-pool.

  Args:
    num_classes: outputs of the head.
    input_shape: `(height, width, channels)` of one image (jaxmeta's order).
    num_filters: filters of every conv layer.
    num_blocks: number of conv blocks.
  """

  def __init__(
    self,
    num_classes: int,
    input_shape: Sequence[int],
    num_filters: int,
    num_blocks: int,
  ):
    super().__init__()
    height, width, channels = (int(s) for s in input_shape)
    blocks = []
    c_in = channels
    for _ in range(num_blocks):
      blocks.append(
        nn.Sequential(
          nn.Conv2d(c_in, num_filters, KERNEL_SIZE, padding=KERNEL_SIZE // 2),
          nn.BatchNorm2d(
            num_filters, eps=BN_EPS, affine=True, track_running_stats=False
          ),
          nn.ReLU(),
          nn.MaxPool2d(POOL_SIZE),
        )
      )
      c_in = num_filters
      height, width = height // POOL_SIZE, width // POOL_SIZE
    self.blocks = nn.Sequential(*blocks)
    self.num_blocks = num_blocks
    self.head = nn.Linear(height * width * num_filters, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Maps `[batch, C, H, W]` to logits `[batch, num_classes]`."""
    h = self.blocks(x)
    return self.head(h.permute(0, 2, 3, 1).flatten(1))


def conv4_functional(
  params: Sequence[torch.Tensor], x: torch.Tensor, num_blocks: int
) -> torch.Tensor:
  """Conv-4 forward on an explicit parameter list (learn2learn style).

  Args:
    params: tensors in the order of `Conv4.parameters()`: per block conv
      weight `[F, Cin, 3, 3]`, conv bias, bn weight, bn bias; then head weight
      `[classes, feat]` and head bias.
    x: `[batch, C, H, W]`.
    num_blocks: number of conv blocks.

  Returns:
    Logits `[batch, classes]`.
  """
  h = x
  for i in range(num_blocks):
    w, b, scale, offset = params[4 * i : 4 * i + 4]
    h = F.conv2d(h, w, b, padding=KERNEL_SIZE // 2)
    h = F.batch_norm(h, None, None, scale, offset, training=True, eps=BN_EPS)
    h = F.max_pool2d(F.relu(h), POOL_SIZE)
  head_w, head_b = params[4 * num_blocks :]
  return F.linear(h.permute(0, 2, 3, 1).flatten(1), head_w, head_b)


# The axes of a jaxmeta parameter in torch's order, by kind: conv HWIO ->
# OIHW, dense `[in, out]` -> `[out, in]`; None: the torch conv bias, which
# jaxmeta's Conv-4 does not have.
_TO_TORCH = {'conv': (3, 2, 0, 1), 'dense': (1, 0), 'vec': (0,), 'bias': None}


def _jax_param_layout(num_blocks: int) -> list[tuple[str, str]]:
  """`('module/leaf', kind)` in the order of `Conv4.parameters()`."""
  kinds = (('w', 'conv'), ('b', 'bias'), ('scale', 'vec'), ('offset', 'vec'))
  layout = [
    (f'conv{i}/{leaf}', kind) for i in range(num_blocks) for leaf, kind in kinds
  ]
  return layout + [('head/w', 'dense'), ('head/b', 'vec')]


def params_from_jax(model: Conv4, jax_params) -> None:
  """Copies jaxmeta conv4 parameters into the torch model (in place).

  Args:
    model: the torch `Conv4`.
    jax_params: jaxmeta's params dict (numpy or jax arrays): conv `w` HWIO
      `[3, 3, Cin, F]` becomes OIHW, head `w` `[feat, classes]` is transposed.
  """
  with torch.no_grad():
    for p, (name, kind) in zip(
      model.parameters(), _jax_param_layout(model.num_blocks)
    ):
      if _TO_TORCH[kind] is None:  # Cancelled by batch norm; zero.
        p.zero_()
        continue
      module, leaf = name.split('/')
      value = np.transpose(
        np.asarray(jax_params[module][leaf], np.float32), _TO_TORCH[kind]
      )
      if tuple(value.shape) != tuple(p.shape):
        raise ValueError(
          f'{name}: jax shape {value.shape} does not fit '
          f'torch shape {tuple(p.shape)}.'
        )
      p.copy_(torch.from_numpy(np.array(value, order='C')))


def grads_to_jax(model: Conv4) -> dict[str, np.ndarray]:
  """The `.grad` of the model's parameters in jaxmeta layout.

  Returns:
    `{'conv0/w': [3, 3, Cin, F] array, ...}`, numpy; the conv biases, which
    jaxmeta's Conv-4 does not have (their gradient is zero in exact
    arithmetic), are left out.
  """
  layout = _jax_param_layout(model.num_blocks)
  return {
    name: np.transpose(
      p.grad.detach().cpu().numpy(), np.argsort(_TO_TORCH[kind])
    )
    for p, (name, kind) in zip(model.parameters(), layout)
    if _TO_TORCH[kind] is not None
  }


MetaGradFn = Callable[[Conv4, TorchBatch], None]


def _accumulate(
  params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], weight: float
) -> None:
  """`p.grad += weight * g` for every parameter (allocating if None)."""
  for p, g in zip(params, grads):
    if p.grad is None:
      p.grad = weight * g.detach()
    else:
      p.grad.add_(g.detach(), alpha=weight)


def _accumulate_reptile(
  theta: Sequence[torch.Tensor], phi: Sequence[torch.Tensor], weight: float
) -> None:
  """Adds `weight * (theta - phi)`, one task's Reptile pseudo-gradient."""
  _accumulate(theta, [th - ph for th, ph in zip(theta, phi)], weight)


def make_loop_meta_grad(
  algorithm: str, inner_lr: float, num_inner_steps: int
) -> MetaGradFn:
  """Per-task loop; leaves the mean meta-gradient in `.grad`."""
  reptile = algorithm == 'reptile'

  def meta_grad(model: Conv4, batch: TorchBatch) -> None:
    theta = list(model.parameters())
    num_tasks = batch.support_x.shape[0]
    forward = lambda p, x: conv4_functional(p, x, model.num_blocks)
    for t in range(num_tasks):
      # Reptile adapts a copy and never differentiates through the steps.
      fast = [p.detach().requires_grad_() for p in theta] if reptile else theta
      for _ in range(num_inner_steps):
        loss = F.cross_entropy(
          forward(fast, batch.support_x[t]), batch.support_y[t]
        )
        # Without create_graph the inner gradients are constants: first-order
        # MAML, the query gradient flows back through `p - lr * g` unchanged.
        grads = torch.autograd.grad(
          loss, fast, create_graph=algorithm == 'maml'
        )
        fast = [p - inner_lr * g for p, g in zip(fast, grads)]
        if reptile:
          fast = [p.detach().requires_grad_() for p in fast]
      if reptile:
        _accumulate_reptile(theta, fast, 1.0 / num_tasks)
        continue
      query_loss = F.cross_entropy(
        forward(fast, batch.query_x[t]), batch.query_y[t]
      )
      (query_loss / num_tasks).backward()

  return meta_grad


def make_func_meta_grad(
  algorithm: str, inner_lr: float, num_inner_steps: int
) -> MetaGradFn:
  """torch.func, `vmap` over tasks; leaves the mean meta-gradient in `.grad`."""
  from torch import func as tfunc

  def meta_grad(model: Conv4, batch: TorchBatch) -> None:
    names = [n for n, _ in model.named_parameters()]

    def loss(params, x, y):
      return F.cross_entropy(tfunc.functional_call(model, params, (x,)), y)

    def adapt(params, x, y):
      for _ in range(num_inner_steps):
        grads = tfunc.grad(loss)(params, x, y)
        params = {n: params[n] - inner_lr * grads[n] for n in names}
      return params

    def task_grad(params, sx, sy, qx, qy):
      if algorithm == 'maml':
        return tfunc.grad(lambda p: loss(adapt(p, sx, sy), qx, qy))(params)
      phi = adapt(params, sx, sy)
      if algorithm == 'fomaml':
        return tfunc.grad(loss)(phi, qx, qy)
      return {n: params[n] - phi[n] for n in names}  # Reptile

    params = {n: p.detach() for n, p in model.named_parameters()}
    per_task = tfunc.vmap(task_grad, in_dims=(None, 0, 0, 0, 0))(
      params, *batch
    )  # every leaf [tasks, ...]
    for n, p in model.named_parameters():
      p.grad = per_task[n].mean(dim=0)

  return meta_grad


def make_higher_meta_grad(
  algorithm: str, inner_lr: float, num_inner_steps: int
) -> MetaGradFn:
  """`higher.innerloop_ctx` implementation; leaves the mean meta-gradient."""
  import higher

  def meta_grad(model: Conv4, batch: TorchBatch) -> None:
    theta = list(model.parameters())
    num_tasks = batch.support_x.shape[0]
    inner_opt = torch.optim.SGD(theta, lr=inner_lr)
    for t in range(num_tasks):
      with higher.innerloop_ctx(
        model,
        inner_opt,
        copy_initial_weights=False,
        track_higher_grads=(algorithm == 'maml'),
      ) as (fmodel, diffopt):
        for _ in range(num_inner_steps):
          diffopt.step(
            F.cross_entropy(fmodel(batch.support_x[t]), batch.support_y[t])
          )
        if algorithm == 'reptile':
          _accumulate_reptile(theta, fmodel.parameters(), 1.0 / num_tasks)
          continue
        query_loss = F.cross_entropy(fmodel(batch.query_x[t]), batch.query_y[t])
        if algorithm == 'maml':
          (query_loss / num_tasks).backward()
        else:
          # track_higher_grads=False detaches the adapted weights from theta:
          # first-order MAML is the query gradient at the adapted weights.
          grads = torch.autograd.grad(query_loss, list(fmodel.parameters()))
          _accumulate(theta, grads, 1.0 / num_tasks)

  return meta_grad


META_GRAD_FACTORIES = {
  'loop': make_loop_meta_grad,
  'func': make_func_meta_grad,
  'higher': make_higher_meta_grad,
}
IMPLEMENTATIONS = tuple(META_GRAD_FACTORIES)


def make_meta_grad(
  implementation: str, algorithm: str, inner_lr: float, num_inner_steps: int
) -> MetaGradFn:
  """Returns `meta_grad(model, batch)` of one implementation and algorithm."""
  if algorithm not in ALGORITHMS:
    raise ValueError(
      f'No PyTorch baseline for algorithm {algorithm!r}; '
      f'choose from {ALGORITHMS}.'
    )
  if implementation not in META_GRAD_FACTORIES:
    raise ValueError(
      f'Unknown torch implementation {implementation!r}; '
      f'choose from {IMPLEMENTATIONS}.'
    )
  return META_GRAD_FACTORIES[implementation](
    algorithm, inner_lr, num_inner_steps
  )
