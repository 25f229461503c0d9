"""Models as pure functions: `init(key) -> params` and `apply(params, x) -> y`.

Why plain functions rather than flax modules: meta-learning differentiates
*through* parameter updates, so the parameters must be an explicit input of
every forward pass, the object `jax.grad` differentiates and the inner loop
rewrites. With plain functions the parameters are an ordinary dict pytree that
`jax.grad`, `jax.vmap`, optax and orbax all handle directly; there is no
variable collection to thread through (running batch-norm statistics, where
a mode keeps them, are an entry of the parameters; see `norms`). Methods
build on this without a rewrite: ANIL, Prototypical Networks and the
Baselines use the body/head split (`Model.embed`, `split_head`), MAML++
passes a step index to select per-step batch-norm parameters
(`per_step_batch_norm`), Meta-SGD keeps its learning rates beside the
model's parameters, and the batch-norm modes (`norms`) are transformations
of a `Model`.

Every model is a `Model(init, apply)` pair, the same shape as optax's
`GradientTransformation`. `apply` is written for one batch of inputs of one
task; callers vmap it over tasks.
"""

# The public names of the former single module `jaxmeta.models`, re-exported
# so that every import path keeps working (`jaxmeta.models.conv4` is the
# builder, not its module).
from jaxmeta.models.base import BACKBONES
from jaxmeta.models.base import BATCH_NORM_LEAVES
from jaxmeta.models.base import cosine_logits
from jaxmeta.models.base import init_linear_head
from jaxmeta.models.base import join_head
from jaxmeta.models.base import linear_head
from jaxmeta.models.base import Model
from jaxmeta.models.base import per_step_batch_norm
from jaxmeta.models.base import register_backbone
from jaxmeta.models.base import split_head
from jaxmeta.models.base import with_linear_head
from jaxmeta.models import norms
from jaxmeta.models.conv4 import conv4
from jaxmeta.models.layers import batch_norm
from jaxmeta.models.layers import CONV_IMPLS
from jaxmeta.models.layers import dropblock
from jaxmeta.models.layers import conv2d_3x3_same
from jaxmeta.models.layers import conv2d_3x3_same_cf
from jaxmeta.models.layers import max_pool_2x2
from jaxmeta.models.layers import resolve_conv_impl
from jaxmeta.models.mlp import mlp
from jaxmeta.models.mlp import mlp_backbone
from jaxmeta.models.remat import REMAT_POLICIES
from jaxmeta.models.remat import rematerialised
from jaxmeta.models.resnet12 import resnet12
from jaxmeta.models.resnet12 import resnet12_embed
