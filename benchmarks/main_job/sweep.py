r"""Recipes for the main job, each run as a user runs it, timed end to end.

  python benchmarks/main_job/sweep.py --out=benchmarks/main_job/sweep.json

Each recipe is `python -m experiments.omniglot` with `--config.*` overrides
in a fresh process and workdir (the Omniglot cache already prepared); the
wall-clock time of the whole command is measured around it. The choice
between recipes is made on validation accuracy (`best_val_accuracy`); the
test accuracy is reported, never used to choose. Writes the JSON and a
figure of test accuracy against wall-clock time.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# name -> --config overrides (on top of experiments/configs/default.py).
RECIPES = {
  'default': {},
  'mb8_2400_lr1e-3': {
    'num_iterations': 2400,
    'eval_every': 800,
    'checkpoint_every': 800,
  },
  'mb8_2400_lr2e-3_decay': {
    'num_iterations': 2400,
    'eval_every': 800,
    'checkpoint_every': 800,
    'meta_lr': 2e-3,
    'meta_lr_final': 0.0,
  },
  'mb4_4000_lr1e-3_decay': {
    'num_iterations': 4000,
    'meta_batch_size': 4,
    'eval_every': 1000,
    'checkpoint_every': 1000,
    'meta_lr_final': 0.0,
  },
  'mb8_2400_lr2e-3_decay_eval5': {
    'num_iterations': 2400,
    'eval_every': 800,
    'checkpoint_every': 800,
    'meta_lr': 2e-3,
    'meta_lr_final': 0.0,
    'eval_inner_steps': 5,
  },
}


def run(name, overrides, root):
  workdir = os.path.join(root, name)
  args = [f'--config.{k}={v}' for k, v in overrides.items()]
  command = [
    sys.executable,
    '-m',
    'experiments.omniglot',
    f'--workdir={workdir}',
    '--noprogress',
    *args,
  ]
  start = time.time()
  proc = subprocess.run(command, capture_output=True, text=True, check=False)
  wall = time.time() - start
  if proc.returncode:
    raise RuntimeError(f'{name} failed:\n{proc.stderr[-3000:]}')
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  return {
    'recipe': name,
    'command': ' '.join(['python -m experiments.omniglot', *args]),
    'wall_seconds': wall,
    **{
      k: results[k]
      for k in (
        'iterations',
        'train_seconds',
        'compile_seconds',
        'steps_per_second',
        'best_step',
        'best_val_accuracy',
        'test_accuracy',
        'test_ci95',
        'test_accuracy_by_step',
      )
    },
  }


def plot(rows, out):
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=120)
  for r in rows:
    ax.errorbar(
      [r['wall_seconds'] / 60],
      [100 * r['test_accuracy']],
      yerr=[100 * r['test_ci95']],
      fmt='o',
      capsize=3,
      label=f'{r["recipe"]} (val {100 * r["best_val_accuracy"]:.1f})',
    )
  quiet = getattr(plot, 'quiet', None)
  if quiet:
    ax.errorbar(
      [quiet['wall_seconds'] / 60],
      [100 * quiet['test_accuracy']],
      yerr=[100 * quiet['test_ci95']],
      fmt='*',
      ms=10,
      color='k',
      capsize=3,
      label=f'{quiet["recipe"]}, alone on the machine',
    )
  ax.axvline(5, color='gray', ls=':')
  ax.set(
    xlabel='wall-clock minutes, whole command',
    ylabel='test accuracy %',
    title='Main job recipes: Omniglot 5-way 1-shot, 2 CPU cores',
  )
  ax.legend(fontsize=7, loc='lower right')
  fig.tight_layout()
  fig.savefig(out)


def replot(path):
  """Redraws the figure of a sweep JSON (with its quiet re-run, if any)."""
  with open(path) as f:
    sweep = json.load(f)
  plot.quiet = sweep.get('quiet_rerun')
  plot(sweep['rows'], path.replace('.json', '.png'))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--out', required=True)
  parser.add_argument('--recipes', default=','.join(RECIPES))
  parser.add_argument(
    '--replot',
    action='store_true',
    help='Only redraw the figure of an existing --out.',
  )
  flags = parser.parse_args()
  if flags.replot:
    replot(flags.out)
    return
  rows = []
  with tempfile.TemporaryDirectory() as root:
    for name in flags.recipes.split(','):
      rows.append(run(name, RECIPES[name], root))
      print(json.dumps(rows[-1]), flush=True)
      with open(flags.out, 'w') as f:
        json.dump(
          {'machine': f'{os.cpu_count()} CPU cores', 'rows': rows}, f, indent=2
        )
  plot(rows, flags.out.replace('.json', '.png'))


if __name__ == '__main__':
  main()
