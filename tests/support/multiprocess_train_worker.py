"""Multi-process runs of the training program (CPU, gloo), one after another.

Started by `tests/training/test_sharding.py`: `python
multiprocess_train_worker.py RUN [RUN ...]`, each RUN
`NUM_PROCESSES,LOCAL_DEVICES,NUM_ITERATIONS,WORKDIR`, forks the processes of
each run in turn (`tests/support/forked.py`) and reports their exit statuses
and outputs, run by run. With NUM_PROCESSES = 1 a run is the one-process
reference. Every process runs `experiments.train.train_and_evaluate` on a tiny
sinusoid configuration in the shared WORKDIR and prints its results as a JSON
line after `RESULTS `.
"""

import json
import sys


def main(port, process_id, num_processes, local_devices, workdir, iterations):
  import jax

  jax.config.update('jax_num_cpu_devices', local_devices)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  from jaxmeta import distributed

  if num_processes > 1:
    assert distributed.initialize_distributed(
      f'127.0.0.1:{port}', num_processes, process_id, initialization_timeout=60
    )
  from experiments import train
  from experiments.configs import sinusoid

  config = sinusoid.get_config()
  config.model.hidden = (8,)
  config.update(
    num_iterations=iterations,
    eval_every=2,
    checkpoint_every=2,
    log_every=1,
    num_val_tasks=4,
    num_eval_tasks=8,
    eval_batch_size=4,
    meta_batch_size=4,
  )
  results = train.train_and_evaluate(config, workdir, progress=False)
  print('RESULTS ' + json.dumps(results), flush=True)


if __name__ == '__main__':
  import functools
  import forked

  # Imported once, before the processes fork (tests/support/forked.py).
  from experiments import train  # noqa: F401

  reports = []
  for run in sys.argv[1:]:
    num_processes, local_devices, iterations, workdir = run.split(',', 3)
    port = forked.free_port()
    reports.append(
      forked.run(
        [
          functools.partial(
            main,
            port,
            i,
            int(num_processes),
            int(local_devices),
            workdir,
            int(iterations),
          )
          for i in range(int(num_processes))
        ],
        timeout=240,
      )
    )
  forked.report(reports)
