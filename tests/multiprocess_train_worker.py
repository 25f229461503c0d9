"""One process of a multi-process run of the training program (CPU, gloo).

Started by `tests/test_sharding.py`: `python multiprocess_train_worker.py PORT
PROCESS_ID NUM_PROCESSES LOCAL_DEVICES WORKDIR NUM_ITERATIONS`. With
NUM_PROCESSES = 1 it is the one-process reference. Every process runs
`experiments.train.train_and_evaluate` on a tiny sinusoid configuration in
the shared WORKDIR and prints its results as a JSON line after `RESULTS `.
"""

import json
import sys


def main(port, process_id, num_processes, local_devices, workdir, iterations):
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update('jax_num_cpu_devices', local_devices)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  from jaxmeta import sharding  # pylint: disable=g-import-not-at-top

  if num_processes > 1:
    assert sharding.initialize_distributed(
      f'127.0.0.1:{port}', num_processes, process_id, initialization_timeout=60
    )
  from experiments import train  # pylint: disable=g-import-not-at-top
  from experiments.configs import sinusoid  # pylint: disable=g-import-not-at-top

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
  main(
    int(sys.argv[1]),
    int(sys.argv[2]),
    int(sys.argv[3]),
    int(sys.argv[4]),
    sys.argv[5],
    int(sys.argv[6]),
  )
