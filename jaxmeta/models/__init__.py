"""Models as pure functions: `Model(init, apply, embed, feature_dim)`.

The parameters are an explicit dict pytree, the input of every forward pass
that `jax.grad` differentiates and the inner loop rewrites; methods build on
the body/head split (`Model.embed`, `split_head`), the step index
(`per_step_batch_norm`) and the batch-norm modes (`norms`), transformations
of a `Model`. `apply` sees one batch of one task; callers vmap over tasks.
"""

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
