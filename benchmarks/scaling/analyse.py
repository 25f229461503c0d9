"""XLA's cost and memory analysis of the sharded MAML step (no timing).

Compiles, on 8 virtual CPU devices, the sharded second-order MAML step of
`jaxmeta.sharding` for Conv-4 on Omniglot 5-way 1-shot (28x28x1, 64 filters,
1 inner step, meta-batch per device 1 and 4) and on miniImageNet 5-way 1-shot
(84x84x3, 32 filters, 5 inner steps, 1 and 2 per device), and one task's
meta-gradient alone. It records per device: FLOPs (XLA's cost model), the
bytes of the gradient all-reduce and the count of collectives in the
optimised HLO, and the temporary memory of the program and of one task.
XLA counts the FLOPs of a loop body once, so the inner steps after the first
are added from one task compiled with 1 and with 0 inner steps.
Then, with the interconnect and peak figures below, the meta-batch per
device at which the all-reduce is under 5% of a step.

  python benchmarks/scaling/analyse.py --out=benchmarks/scaling/analysis.json

These are XLA:CPU compilations: buffer assignment and fusion differ on GPU
and TPU, so memory is an estimate of the same program's needs there.
"""

import argparse
import json
import math
import platform
import time

import jax

NUM_DEVICES = 8
jax.config.update('jax_num_cpu_devices', NUM_DEVICES)

import jax.numpy as jnp
import optax

import jaxmeta
from jaxmeta import sharding
from experiments.benchmark import xla_costs

CONFIGS = {
  # Finn et al. 2017: inner lr 0.4, 1 step, meta-batch 32, 15 queries.
  'omniglot_5w1s_conv4_64': dict(
    input_shape=(28, 28, 1),
    num_filters=64,
    ways=5,
    shots=1,
    queries=15,
    inner_steps=1,
    inner_lr=0.4,
    tasks_per_device=(1, 4),
    measured_h200_ms_per_task=8.5 / 32,
  ),
  # Finn et al. 2017 miniImageNet: 32 filters, 5 steps, meta-batch 4.
  'miniimagenet_5w1s_conv4_32': dict(
    input_shape=(84, 84, 3),
    num_filters=32,
    ways=5,
    shots=1,
    queries=15,
    inner_steps=5,
    inner_lr=0.01,
    tasks_per_device=(1, 2),
    measured_h200_ms_per_task=12.7 / 4,
  ),
}

# Interconnects: bytes per second one device can send (and, at the same
# time, receive) in an all-reduce, i.e. half the bidirectional figure.
PLATFORMS = {
  'h200_nvlink4': dict(
    link_bytes_per_s=450e9,
    source='NVIDIA H200 (and H100 SXM) datasheet: NVLink 900 GB/s '
    'bidirectional per GPU (NVLink 4, 18 links x 50 GB/s), via '
    'NVSwitch to every GPU of an 8-GPU HGX board',
    peak_flops=494.7e12,
    peak_source='H100/H200 SXM TF32 tensor core, dense (989 TFLOPS with '
    'sparsity); JAX on GPU runs float32 convolutions and '
    'matmuls in TF32 by default',
  ),
  'tpu_v5e_ici': dict(
    link_bytes_per_s=200e9,
    source='Cloud TPU v5e documentation (cloud.google.com/tpu/docs/v5e):'
    ' bidirectional inter-chip interconnect 400 GBps per chip '
    '(1,600 Gbps), 4 ICI ports, 2D torus',
    peak_flops=197e12,
    peak_source='Cloud TPU v5e documentation: 197 TFLOPs bf16 per chip '
    '(default-precision float32 matmuls run as bf16 passes)',
  ),
}
# Fixed cost of one small all-reduce (launch and synchronisation), assumed,
# not measured here: the bandwidth term alone is sub-microsecond.
LATENCIES_S = (0.0, 10e-6, 30e-6)
COMM_FRACTION = 0.05


def _learner(cfg, inner_steps=None, conv_impl='auto'):
  model = jaxmeta.conv4(
    cfg['ways'],
    cfg['input_shape'],
    num_filters=cfg['num_filters'],
    conv_impl=conv_impl,
  )
  return model, jaxmeta.maml(
    model,
    jaxmeta.classification_loss,
    inner_lr=cfg['inner_lr'],
    num_inner_steps=(
      cfg['inner_steps'] if inner_steps is None else inner_steps
    ),
  )


def _task_struct(cfg, num_tasks=None):
  lead = () if num_tasks is None else (num_tasks,)
  support, query = cfg['ways'] * cfg['shots'], cfg['ways'] * cfg['queries']
  f32 = lambda *s: jax.ShapeDtypeStruct(lead + s, jnp.float32)
  i32 = lambda *s: jax.ShapeDtypeStruct(lead + s, jnp.int32)
  return jaxmeta.Task(
    f32(support, *cfg['input_shape']),
    i32(support),
    f32(query, *cfg['input_shape']),
    i32(query),
  )


def _sharded_step_costs(cfg, tasks_per_device, mesh):
  model, learner = _learner(cfg)
  optimizer = optax.adam(1e-3)
  state = jax.eval_shape(
    lambda k: jaxmeta.init_train_state(learner, optimizer, k), jax.random.key(0)
  )
  rep, tsk = sharding.replicated(mesh), sharding.task_sharding(mesh)
  state = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), state
  )
  tasks = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=tsk),
    _task_struct(cfg, tasks_per_device * NUM_DEVICES),
  )
  step = jax.jit(jaxmeta.make_meta_train_step(learner, optimizer, mesh=mesh))
  start = time.perf_counter()
  compiled = step.lower(state, tasks).compile()
  costs = xla_costs.compiled_costs(compiled)
  costs['compile_s'] = round(time.perf_counter() - start, 1)
  params = jax.eval_shape(model.init, jax.random.key(0))
  costs['param_bytes'] = sum(
    p.size * p.dtype.itemsize for p in jax.tree.leaves(params)
  )
  return costs


def _min_tasks_per_device(
  allreduce_bytes, task_s, link_bytes_per_s, latency_s, num_devices=NUM_DEVICES
):
  """Smallest b with t_comm / (t_comm + b * task_s) < COMM_FRACTION.

  t_comm of a ring all-reduce: latency + 2 (n - 1) / n * bytes / link.
  """
  t_comm = latency_s + (
    2 * (num_devices - 1) / num_devices * allreduce_bytes / link_bytes_per_s
  )
  need = t_comm * (1 - COMM_FRACTION) / COMM_FRACTION / task_s
  return t_comm, max(1, math.floor(need) + 1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='benchmarks/scaling/analysis.json')
  args = parser.parse_args()
  mesh = sharding.make_mesh()
  results = {
    'jax': jax.__version__,
    'backend': jax.default_backend(),
    'machine': platform.machine(),
    'num_devices': NUM_DEVICES,
    'comm_fraction': COMM_FRACTION,
    'platforms': PLATFORMS,
    'latencies_s': LATENCIES_S,
    'configs': {},
  }
  for name, cfg in CONFIGS.items():
    model, learner = _learner(cfg)
    params = jax.eval_shape(model.init, jax.random.key(0))
    task = xla_costs.task_costs(learner, params, _task_struct(cfg))
    # The convolution each platform's 'auto' picks: channels-first patches
    # on GPUs, XLA's convolution on TPUs (the CPU's is in `task`).
    task_by_conv_impl = {
      impl: xla_costs.task_costs(
        _learner(cfg, conv_impl=impl)[1], params, _task_struct(cfg)
      )
      for impl in ('patches_cf', 'xla')
    }
    steps = {
      b: _sharded_step_costs(cfg, b, mesh) for b in cfg['tasks_per_device']
    }
    (b1, s1), (b2, s2) = sorted(steps.items())
    flops_per_task = (s2['flops'] - s1['flops']) / (b2 - b1)
    # XLA's cost model counts a while loop's body once, whatever its trip
    # count: the inner-loop scan's steps after the first are added from the
    # difference between one task with 1 and with 0 inner steps.
    inner_step_flops = 0.0
    if cfg['inner_steps'] > 1:
      one, zero = (
        xla_costs.task_costs(_learner(cfg, k)[1], params, _task_struct(cfg))[
          'flops'
        ]
        for k in (1, 0)
      )
      inner_step_flops = one - zero
    xla_flops_per_task = flops_per_task
    flops_per_task += (cfg['inner_steps'] - 1) * inner_step_flops
    entry = dict(
      cfg,
      task=task,
      task_by_conv_impl=task_by_conv_impl,
      conv_impl_cpu=jaxmeta.resolve_conv_impl('auto'),
      sharded_step=steps,
      flops_per_task=flops_per_task,
      xla_flops_per_task=xla_flops_per_task,
      inner_step_flops=inner_step_flops,
      fixed_flops_per_step=s1['flops'] - b1 * xla_flops_per_task,
      allreduce_bytes=s1['all_reduce_bytes'],
      param_bytes=s1['param_bytes'],
      tasks_per_device_needed={},
    )
    for platform_name, p in PLATFORMS.items():
      task_times = {'at_peak': flops_per_task / p['peak_flops']}
      if platform_name.startswith('h200'):
        task_times['measured_h200'] = cfg['measured_h200_ms_per_task'] / 1e3
      for basis, task_s in task_times.items():
        for latency in LATENCIES_S:
          t_comm, b = _min_tasks_per_device(
            entry['allreduce_bytes'], task_s, p['link_bytes_per_s'], latency
          )
          entry['tasks_per_device_needed'][
            f'{platform_name}/{basis}/latency_{latency * 1e6:g}us'
          ] = dict(task_s=task_s, comm_s=t_comm, tasks_per_device=b)
    results['configs'][name] = entry
    print(
      name,
      json.dumps(
        {k: v for k, v in entry.items() if k not in ('sharded_step',)},
        indent=1,
        default=str,
      ),
      flush=True,
    )
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=1, default=str)


if __name__ == '__main__':
  main()
