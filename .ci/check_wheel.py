"""Checks an installed jaxmeta from outside the checkout (run by .ci/run).

The package data (split lists), the experiment programs and their config
files must come from the installed package, not from a checkout; the
programs install as `jaxmeta_experiments`, so `import experiments` finds a
user's own folder of that name, or nothing; `jaxmeta-train` runs a config by
name. Environment: CHECKOUT (the repository), SCRIPTS (the folder of the
installed console scripts), WORK (a scratch folder outside the checkout).
"""

import os
import subprocess
import sys

import jaxmeta
from jaxmeta.data import cub_tfds
from jaxmeta.data import miniimagenet_tfds
from jaxmeta.data import omniglot
from jaxmeta.data import tieredimagenet_tfds
import jaxmeta_experiments
from jaxmeta_experiments import configs

checkout = os.environ['CHECKOUT']
scripts = os.environ['SCRIPTS']
work = os.environ['WORK']
for module in (jaxmeta, jaxmeta_experiments):
  path = os.path.abspath(module.__file__)
  assert 'site-packages' in path or '/wheel_site/' in path, path
  assert not path.startswith(checkout), path
assert omniglot.DEFAULT_SOURCE_DIR is None, omniglot.DEFAULT_SOURCE_DIR
sizes = [
  len(omniglot._read_vinyals_list(n, None))
  for n in ('train', 'trainval', 'test')
]
assert sizes == [1028, 1200, 423], sizes
assert len(miniimagenet_tfds.read_split_list('test')) == 20
assert len(tieredimagenet_tfds.read_split_list('test')) == 160
assert len(tieredimagenet_tfds.read_words()) == 642  # words.tsv
assert len(cub_tfds.read_split_list('train')) == 100
assert configs.load('maml_omniglot:5w1s').preset == 'maml_omniglot:5w1s'


def run(*args: str, cwd: str = work) -> subprocess.CompletedProcess:
  return subprocess.run(
    args, cwd=cwd, capture_output=True, text=True, check=False
  )


# No top-level `experiments`: nothing to import, or the user's own.
done = run(sys.executable, '-c', 'import experiments')
assert done.returncode != 0 and 'ModuleNotFoundError' in done.stderr, done
mine = os.path.join(work, 'mine')
os.makedirs(os.path.join(mine, 'experiments'), exist_ok=True)
with open(os.path.join(mine, 'experiments', '__init__.py'), 'w') as f:
  f.write("OWNER = 'user'\n")
done = run(
  sys.executable, '-c', 'import experiments; print(experiments.OWNER)', cwd=mine
)
assert done.returncode == 0 and done.stdout == 'user\n', done

train = os.path.join(scripts, 'jaxmeta-train')
done = run(train, '--list_configs')
assert done.returncode == 0 and 'maml_omniglot: 5w1s (default)' in done.stdout
done = run(train, '--config=maml_omniglot:5w1s', '--print_config')
assert done.returncode == 0 and 'ways = 5\n' in done.stdout, done
done = run(train, '--config=maml_omniglot:5w1s', '--config.bogus_field=1')
assert done.returncode == 1, done
assert done.stderr.startswith("Error: --config: unknown config field 'bogus")
# A config by name, trained for two steps at a tiny size, with the
# repository's Omniglot zips as the source.
run_dir = os.path.join(work, 'run')
done = run(
  train,
  '--config=maml_omniglot:5w1s',
  f'--workdir={run_dir}',
  f'--data_dir={os.path.join(work, "tfds")}',
  f'--source_dir={os.path.join(checkout, "data", "omniglot")}',
  '--config.num_iterations=2',
  '--config.eval_every=2',
  '--config.checkpoint_every=2',
  '--config.model.num_filters=8',
  '--config.meta_batch_size=2',
  '--config.queries=2',
  '--config.num_val_tasks=4',
  '--config.num_eval_tasks=4',
  '--config.eval_batch_size=4',
  '--config.eval_inner_steps=1',
  '--noprogress',
)
assert done.returncode == 0, done.stderr[-2000:]
assert os.path.isfile(os.path.join(run_dir, 'results.json')), done
# The benchmark and the studies come with the programs.
done = run(sys.executable, '-m', 'jaxmeta_experiments.benchmark', '--help')
assert '--conv_impls' in done.stdout, done  # absl's --help exits 1.
recipe = os.path.join(
  os.path.dirname(jaxmeta_experiments.__file__), 'studies', 'compare_recipes.py'
)
assert configs.load(f'{recipe}:protonet').train_ways == 60
print(
  f'installed jaxmeta {jaxmeta.__version__} from '
  f'{os.path.dirname(jaxmeta.__file__)}: split lists {sizes}, configs '
  f'{configs.CONFIG_DIR}, jaxmeta-train ran maml_omniglot:5w1s',
  file=sys.stdout,
)
