"""jaxpool: learnable and stochastic pooling layers for JAX/Flax (NHWC)."""

from jaxpool.functional import (
    avg_pool,
    gated_pool,
    gumbel_softmax,
    max_pool,
    mixed_pool,
    s3_pool,
    stochastic_pool,
    tdgs_pool,
    tree_pool,
)
from jaxpool.modules import (
    AvgPool,
    GatedPool,
    MaxPool,
    MixedPool,
    S3Pool,
    StochasticPool,
    TDGSPool,
    TreePool,
)
from jaxpool.registry import available, create, hyperparameters

__version__ = "0.1.0"

__all__ = [
    "AvgPool",
    "GatedPool",
    "MaxPool",
    "MixedPool",
    "S3Pool",
    "StochasticPool",
    "TDGSPool",
    "TreePool",
    "available",
    "avg_pool",
    "create",
    "gated_pool",
    "gumbel_softmax",
    "hyperparameters",
    "max_pool",
    "mixed_pool",
    "s3_pool",
    "stochastic_pool",
    "tdgs_pool",
    "tree_pool",
]
