"""Publishes a trained run as a model of `benchmarks/reproduction/`.

  python benchmarks/reproduction/publish.py WORKDIR NAME \
      --command="python -m experiments.main ..." \
      --published=98.8 --source="Snell et al. 2017, Table 1"

`NAME/` becomes a workdir holding only what `--mode=eval` and
`experiments.load_run` read: `config.json`, the best-validation checkpoint
(`checkpoints/STEP/`, Orbax) without the optimiser's state (with Adam's two
moments it would be three times the size), and the run's `results.json` and
`metrics.jsonl`; beside them `curve.png` and `model.json`, the card: the
command that trained it, the paper's figure, the minutes of training, the
SHA-256 of every file, and the accuracy on the first `--check_tasks` test
tasks (`num_eval_tasks`), which `tests/experiments/test_published_models.py`
recomputes.
"""

import argparse
import hashlib
import json
import pathlib
import re
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from experiments import train  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
KEPT = ('config.json', 'results.json', 'metrics.jsonl')
# Written by `--mode=eval` and `load_run` into the folder, or describing
# the model: not the model.
NOT_HASHED = ('lock', 'eval.json', 'model.json', 'curve.png')


def digests(folder: pathlib.Path) -> dict[str, str]:
  """SHA-256 of every file under `folder` but `NOT_HASHED`, by path."""
  return {
    str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(folder.rglob('*'))
    if p.is_file() and p.name not in NOT_HASHED
  }


def drop_optimiser_state(step_dir: pathlib.Path) -> None:
  """Rewrites the train state saved in `step_dir` without `opt_state`."""
  state_dir = step_dir / 'state'
  handler = ocp.PyTreeCheckpointHandler()
  saved = handler.metadata(state_dir).tree
  handler.close()
  as_numpy = ocp.RestoreArgs(restore_type=np.ndarray)
  with ocp.PyTreeCheckpointer() as checkpointer:
    state = checkpointer.restore(
      state_dir,
      args=ocp.args.PyTreeRestore(
        restore_args=jax.tree.map(lambda _: as_numpy, saved)
      ),
    )
  del state['opt_state']
  shutil.rmtree(state_dir)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(state_dir, state)


def eval_command(command: str, name: str) -> str:
  """The training `command` as `--mode=eval` of the published folder `name`:
  evaluation takes the run's own config, overrides included."""
  workdir = f'--workdir=benchmarks/reproduction/{name}'
  found = re.subn(r'--workdir=\S+', workdir, command)
  if found[1] != 1:
    raise ValueError(f'The command needs one --workdir=...: {command}')
  return f'{found[0]} --mode=eval'


def check_scores(folder: pathlib.Path, num_tasks: int) -> dict[str, float]:
  """Test accuracy of the model in `folder` on its first `num_tasks` test
  tasks, scored on a copy (evaluation writes into its workdir)."""
  with tempfile.TemporaryDirectory() as tmp:
    copy = pathlib.Path(tmp) / folder.name
    shutil.copytree(folder, copy)
    config = ml_collections.ConfigDict(
      json.loads((copy / 'config.json').read_text())
    )
    config.num_eval_tasks = num_tasks
    results = train.evaluate(config, str(copy))
  return {k: results[k] for k in ('test_accuracy', 'test_accuracy_alone')}


def plot_curve(folder: pathlib.Path, title: str, published: float) -> None:
  """`curve.png`: training and validation accuracy, the test figure."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  records = [
    json.loads(line)
    for line in (folder / 'metrics.jsonl').read_text().splitlines()
    if line.strip()
  ]
  results = json.loads((folder / 'results.json').read_text())
  fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
  config = results['config']
  train = np.array(
    [(r['step'], r['train/accuracy']) for r in records if 'train/accuracy' in r]
  )
  ax.plot(*train.T, lw=0.5, alpha=0.3, color='C0')
  window = min(20, len(train))  # 20 logs (every `log_every` steps).
  smooth = np.convolve(train[:, 1], np.ones(window) / window, mode='valid')
  ax.plot(
    train[window - 1 :, 0],
    smooth,
    color='C0',
    label=f'training tasks ({config["train_ways"] or config["ways"]}-way),'
    f' mean of {window} logs',
  )
  val = [(r['step'], r['val/accuracy']) for r in records if 'val/accuracy' in r]
  val_label = f'validation ({config["num_val_tasks"]} tasks)'
  if config.get('train_split') == 'trainval':
    val_label += ', classes trained on'  # Not held out: no estimate.
  ax.plot(*zip(*val), 'o-', color='C1', ms=3, label=val_label)
  ax.errorbar(
    [results['best_step']],
    [results['test_accuracy']],
    yerr=[results['test_ci95']],
    fmt='s',
    color='k',
    capsize=4,
    label=f'test, {results["num_test_tasks"]} tasks: '
    f'{100 * results["test_accuracy"]:.2f}% +- {100 * results["test_ci95"]:.2f}%',
  )
  ax.axhline(
    published / 100, color='r', ls='--', lw=1, label=f'published {published}%'
  )
  low = min(0.9, results['test_accuracy'] - 0.05, min(v for _, v in val) - 0.05)
  tasks = config['meta_batch_size']
  xlabel = 'episode' if tasks == 1 else f'meta-step ({tasks} tasks)'
  ax.set(xlabel=xlabel, ylabel='accuracy', ylim=(low, 1.0), title=title)
  ax.legend(loc='lower right', fontsize=8)
  fig.tight_layout()
  fig.savefig(folder / 'curve.png')
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdir', type=pathlib.Path)
  parser.add_argument('name')
  parser.add_argument('--command', required=True)
  parser.add_argument('--published', type=float, required=True)
  parser.add_argument('--source', required=True)
  parser.add_argument(
    '--training_minutes',
    type=float,
    required=True,
    help='wall-clock minutes of the training command',
  )
  parser.add_argument('--check_tasks', type=int, default=20)
  args = parser.parse_args()

  results = json.loads((args.workdir / 'results.json').read_text())
  out = HERE / args.name
  if out.exists():
    shutil.rmtree(out)
  (out / 'checkpoints').mkdir(parents=True)
  for name in KEPT:
    shutil.copy(args.workdir / name, out / name)
  step = str(results['best_step'])
  shutil.copytree(
    args.workdir / 'checkpoints' / step, out / 'checkpoints' / step
  )
  drop_optimiser_state(out / 'checkpoints' / step)
  files = digests(out)  # Before evaluation writes its lock and eval.json.
  check = check_scores(out, args.check_tasks)
  for name in ('lock', 'eval.json'):
    (out / name).unlink(missing_ok=True)
  preset = results['preset']
  plot_curve(
    out,
    f'{preset}, trained {args.training_minutes:.0f} min on 2 CPU cores',
    args.published,
  )
  card = {
    'config': preset,
    'command': args.command,
    'eval_command': eval_command(args.command, args.name),
    'published': {'test_accuracy': args.published / 100, 'source': args.source},
    'test': {
      k: results[k]
      for k in (
        'test_accuracy',
        'test_ci95',
        'test_accuracy_alone',
        'test_ci95_alone',
        'num_test_tasks',
        'best_step',
        'iterations',
      )
    },
    'training_minutes': args.training_minutes,
    'check': {'num_eval_tasks': args.check_tasks, **check},
    'sha256': files,
  }
  (out / 'model.json').write_text(json.dumps(card, indent=2) + '\n')
  print(json.dumps({k: card[k] for k in ('config', 'test', 'check')}, indent=2))


if __name__ == '__main__':
  main()
