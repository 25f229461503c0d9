"""Smoke test of the sampler benchmark at tiny size (asserts no speed)."""

import json

from experiments.studies import sampler_benchmark


def test_sampler_benchmark_writes_its_figures(tmp_path, omniglot_data_dir):
  results = sampler_benchmark.run(
    str(tmp_path),
    num_tasks=4,
    ways=3,
    shots=1,
    queries=1,
    num_filters=4,
    repeats=1,
    sample_repeats=2,
    data_dir=omniglot_data_dir,
    task_chunk_size=2,
  )
  on_disk = json.loads((tmp_path / 'sampler_benchmark.json').read_text())
  assert on_disk == json.loads(json.dumps(results))
  assert on_disk['num_classes'] == 4112  # Vinyals train, with rotations.
  assert on_disk['sample_median_ms'] > 0 and on_disk['meta_step_median_ms'] > 0
  assert on_disk['sample_fraction_of_meta_step'] == (
    on_disk['sample_median_ms'] / on_disk['meta_step_median_ms']
  )
