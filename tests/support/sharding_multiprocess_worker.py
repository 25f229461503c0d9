"""A multi-process sharded run on this machine (CPU, gloo).

Started by `tests/training/test_sharding.py`: `python
sharding_multiprocess_worker.py NUM_PROCESSES LOCAL_DEVICES OUT_DIR` forks the
processes (`tests/support/forked.py`) and reports their exit statuses and
outputs, as one run. Each process joins the run on a free port of 127.0.0.1,
takes three sharded meta-steps that sample their tasks on the devices and
writes the parameters to OUT_DIR/process_<id>.npz; process 0 also writes those
of the same three steps taken by `make_meta_train_step` on its default
one-device mesh. It also builds a global meta-batch from each process's own
half of the tasks, and one from keys every process holds whole, and checks
which rows each process's devices hold.
"""

import functools
import sys


def main(port, process_id, num_processes, local_devices, out_dir):
  import jax

  jax.config.update('jax_num_cpu_devices', local_devices)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  from jaxmeta import distributed
  from jaxmeta import sharding

  assert distributed.initialize_distributed(
    f'127.0.0.1:{port}', num_processes, process_id, initialization_timeout=60
  )

  import jax.numpy as jnp
  import numpy as np
  import optax
  import jaxmeta
  from jaxmeta.data import episodes

  assert jax.process_count() == num_processes
  assert jax.device_count() == num_processes * local_devices
  assert distributed.is_main_process() == (process_id == 0)

  shape = dict(ways=3, shots=2, queries=2)
  meta_batch = 2 * jax.device_count()
  images = jax.random.randint(
    jax.random.key(7), (10, 5, 4, 4, 1), 0, 256, jnp.int32
  ).astype(jnp.uint8)
  model = jaxmeta.mlp((16, 8, shape['ways']))
  learner = jaxmeta.maml(
    model,
    jaxmeta.classification_loss,
    inner_lr=0.3,
    num_inner_steps=2,
  )
  optimizer = optax.adam(0.05)
  state = jaxmeta.init_train_state(learner, optimizer, jax.random.key(0))

  mesh = sharding.make_mesh()
  sample_tasks = lambda key, im: episodes.sample_tasks(
    key, im, meta_batch, **shape
  )
  sampling_step = jax.jit(
    jaxmeta.make_meta_train_step(
      learner, optimizer, sample_tasks, task_chunk_size=1, mesh=mesh
    )
  )

  sharded = sharding.replicate(state, mesh)
  sharded_images = sharding.replicate(images, mesh)
  for _ in range(3):
    sharded, metrics = sampling_step(sharded, sharded_images)
  # A meta-batch from per-process data: each process passes only its half.
  tasks = episodes.sample_tasks(jax.random.key(5), images, meta_batch, **shape)
  tasks = jax.tree.map(np.asarray, tasks)
  half = meta_batch // num_processes
  local = jax.tree.map(
    lambda v: v[process_id * half : (process_id + 1) * half], tasks
  )
  global_tasks = sharding.tasks_from_process_local(local, mesh)
  assert global_tasks.support_x.shape == tasks.support_x.shape
  assert global_tasks.support_x.sharding == sharding.task_sharding(mesh)
  for shard in global_tasks.support_x.addressable_shards:
    np.testing.assert_array_equal(shard.data, tasks.support_x[shard.index])
  # Evaluation keys, the same on every process, split over all devices.
  keys = episodes.eval_task_keys(0, 2 * jax.device_count())
  sharded_keys = sharding.shard_tasks(keys, mesh)
  key_data = np.asarray(jax.random.key_data(keys))
  for shard in sharded_keys.addressable_shards:
    np.testing.assert_array_equal(
      jax.random.key_data(shard.data), key_data[shard.index[0]]
    )
  flat = lambda tree: {
    jax.tree_util.keystr(path): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }
  np.savez(
    f'{out_dir}/process_{process_id}.npz',
    **flat(sharded.params),
    loss=np.asarray(metrics['loss']),
  )

  if process_id == 0:
    reference = jax.jit(
      jaxmeta.make_meta_train_step(learner, optimizer, sample_tasks)
    )
    for _ in range(3):
      state, metrics = reference(state, images)
    np.savez(
      f'{out_dir}/reference.npz',
      **flat(state.params),
      loss=np.asarray(metrics['loss']),
    )
  jax.distributed.shutdown()


if __name__ == '__main__':
  import forked

  # Imported once, before the processes fork (tests/support/forked.py).
  import jaxmeta  # noqa: F401

  num_processes, local_devices = int(sys.argv[1]), int(sys.argv[2])
  port = forked.free_port()
  forked.report(  # One run.
    [
      forked.run(
        [
          functools.partial(
            main, port, i, num_processes, local_devices, sys.argv[3]
          )
          for i in range(num_processes)
        ],
        timeout=180,
      )
    ]
  )
