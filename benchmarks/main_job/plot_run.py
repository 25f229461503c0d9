"""Plots a run's learning curve from its workdir: `python plot_run.py DIR OUT`.

Reads `DIR/metrics.jsonl` (training query accuracy every `log_every` steps,
validation accuracy at every evaluation) and `DIR/results.json` (the test
accuracy of the best-validation checkpoint) and writes a PNG.
"""

import json
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def main(workdir: str, out: str) -> None:
  with open(f'{workdir}/metrics.jsonl') as f:
    records = [json.loads(line) for line in f if line.strip()]
  with open(f'{workdir}/results.json') as f:
    results = json.load(f)
  train = [
    (r['step'], r['train/accuracy']) for r in records if 'train/accuracy' in r
  ]
  val = [(r['step'], r['val/accuracy']) for r in records if 'val/accuracy' in r]
  fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
  ax.plot(
    *zip(*train),
    lw=1,
    alpha=0.7,
    label='training tasks (query accuracy after adaptation)',
  )
  ax.plot(*zip(*val), 'o-', label='validation (100 tasks)')
  ci = results['test_ci95']
  ax.errorbar(
    [results['best_step']],
    [results['test_accuracy']],
    yerr=[ci],
    fmt='s',
    color='k',
    capsize=4,
    label=f'test, 600 tasks: {100 * results["test_accuracy"]:.1f}% '
    f'+- {100 * ci:.1f}%',
  )
  ax.axhline(1 / results['ways'], color='gray', ls=':', label='chance')
  ax.set(
    xlabel='meta-iteration',
    ylabel='5-way 1-shot accuracy',
    ylim=(0, 1),
    title=f'{results["algorithm"]} on Omniglot ({results["split"]} '
    'split), the main job',
  )
  ax.legend(loc='lower right', fontsize=8)
  fig.tight_layout()
  fig.savefig(out)


if __name__ == '__main__':
  main(*sys.argv[1:])
