"""The experiment programs of jaxmeta: configs, the training harness, studies.

A folder of the repository, run from a checkout as `python -m
experiments.main`; installed, it is the package `jaxmeta_experiments` (a
name no user's own `experiments` folder shadows), with the commands
`jaxmeta-train`, `jaxmeta-omniglot` and `jaxmeta-sinusoid`. Its modules
import each other relatively, so both names work.

`load_run(workdir)` gives a trained run's learner, parameters and config,
and `classify` predicts new images with them (`experiments.predict`).
"""

# Imported when first used: `python -m experiments.predict` must find the
# module unimported (runpy warns otherwise), and the other programs do not
# need it.
_PREDICT = ('load_run', 'classify')


def __getattr__(name):
  if name in _PREDICT:
    from . import predict

    return getattr(predict, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted([*globals(), *_PREDICT])
