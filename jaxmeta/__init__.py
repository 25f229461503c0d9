"""jaxmeta: gradient-based meta-learning in JAX.

Pure functions for the model, the inner update and the meta-loss, composed
with `jax.grad`, batched over tasks with `jax.vmap` and compiled with
`jax.jit`: one MAML meta-step is one XLA program (README.md has an example).
"""

from jaxmeta.algorithms import ALGORITHMS
from jaxmeta.algorithms import anil
from jaxmeta.algorithms import baseline
from jaxmeta.algorithms import baseline_plus_plus
from jaxmeta.algorithms import fomaml
from jaxmeta.algorithms import imaml
from jaxmeta.algorithms import inner_loop
from jaxmeta.algorithms import make_learner
from jaxmeta.algorithms import maml
from jaxmeta.algorithms import maml_plus_plus
from jaxmeta.algorithms import meta_sgd
from jaxmeta.algorithms import normalised_learner
from jaxmeta.algorithms import MetaLearner
from jaxmeta.algorithms import pretrain
from jaxmeta.algorithms import protonet
from jaxmeta.algorithms import r2d2
from jaxmeta.algorithms import register_algorithm
from jaxmeta.algorithms import reptile
from jaxmeta.algorithms import score_alone
from jaxmeta.losses import classification_loss
from jaxmeta.losses import LossFn
from jaxmeta.losses import regression_loss
from jaxmeta.models import BACKBONES
from jaxmeta.models import conv4
from jaxmeta.models import mlp
from jaxmeta.models import Model
from jaxmeta.models import register_backbone
from jaxmeta.models import rematerialised
from jaxmeta.models import resnet12
from jaxmeta.models import resolve_conv_impl
from jaxmeta.models.norms import merge_model_state
from jaxmeta.models.norms import split_model_state
from jaxmeta.training import default_task_chunk_size
from jaxmeta.training import init_train_state
from jaxmeta.training import make_evaluate
from jaxmeta.training import make_meta_train_step
from jaxmeta.training import mean_and_ci95
from jaxmeta.training import meta_gradient
from jaxmeta.training import meta_train_step
from jaxmeta.training import model_key
from jaxmeta.training import MetaTrainState
from jaxmeta.types import Array
from jaxmeta.types import Params
from jaxmeta.types import PRNGKey
from jaxmeta.types import Task

__version__ = '0.2.0'
