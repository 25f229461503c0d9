"""The table and figure of the published models, from their cards.

  python benchmarks/reproduction/report.py

Reads every `benchmarks/reproduction/*/model.json` (written by `publish.py`)
and writes `table.md` and `figure.png` beside them: the paper's test
accuracy against ours with its 95% CI (600 test tasks, every query scored
with the others and alone), and the minutes of training on 2 CPU cores.
"""

import json
import pathlib

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
  cards = [
    (p.parent.name, json.loads(p.read_text()))
    for p in sorted(HERE.glob('*/model.json'))
  ]
  rows = [
    '| model | published | jaxmeta (alone) | training | command |',
    '|-|-|-|-|-|',
  ]
  for name, card in cards:
    test, paper = card['test'], card['published']
    tasks = json.loads((HERE / name / 'config.json').read_text())[
      'meta_batch_size'
    ]
    steps = 'episodes' if tasks == 1 else f'meta-steps of {tasks} tasks'
    rows.append(
      f'| `{name}` | {100 * paper["test_accuracy"]:.1f} ({paper["source"]}) '
      f'| {100 * test["test_accuracy"]:.2f} +- {100 * test["test_ci95"]:.2f} '
      f'({100 * test["test_accuracy_alone"]:.2f}) '
      f'| {card["training_minutes"]:.0f} min, {test["iterations"]:,} '
      f'{steps} | `{card["command"]}` |'
    )
  (HERE / 'table.md').write_text('\n'.join(rows) + '\n')

  fig, ax = plt.subplots(figsize=(6, 1.2 + 0.7 * len(cards)), dpi=120)
  for i, (name, card) in enumerate(cards):
    test = card['test']
    first = i == 0
    ax.errorbar(
      100 * test['test_accuracy'],
      i,
      xerr=100 * test['test_ci95'],
      fmt='o',
      color='C0',
      capsize=4,
      label='jaxmeta, 600 tasks, 95% CI' if first else None,
    )
    ax.plot(
      100 * card['published']['test_accuracy'],
      i,
      'x',
      color='C3',
      ms=9,
      label='published' if first else None,
    )
    ax.annotate(
      f'{card["training_minutes"]:.0f} min',
      (100 * test['test_accuracy'], i),
      textcoords='offset points',
      xytext=(0, 8),
      ha='center',
      fontsize=8,
    )
  ax.set_yticks(range(len(cards)), [name for name, _ in cards])
  ax.set_ylim(-0.6, len(cards) - 0.4)
  ax.set_xlabel('test accuracy (%), trained on 2 CPU cores')
  ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.3), ncol=2, fontsize=8)
  fig.tight_layout()
  fig.savefig(HERE / 'figure.png')


if __name__ == '__main__':
  main()
