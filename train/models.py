"""The standard CNN of the reference study, with any registry pooler in its three pool slots."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
from flax import linen as nn

import jaxpool

POOL_PREFIX = "pool"  # parameter subtrees of the pool slots are named pool1, pool2, pool3


class PoolSlot(nn.Module):
    """One pool slot: a registry pooler under a stable name (``pool1``...).

    Attributes:
      pooler: registry name, one of ``jaxpool.available()``.
      pooler_kwargs: keyword arguments for ``jaxpool.create``.
    """

    pooler: str
    pooler_kwargs: Mapping[str, Any]

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        pool = jaxpool.create(self.pooler, **dict(self.pooler_kwargs))
        return pool(x, deterministic=deterministic)


class CNN(nn.Module):
    """conv3x3(16)-ReLU-pool, conv3x3(32)-ReLU-pool, conv3x3(64)-ReLU-pool, dense(128)-ReLU, dense.

    Input sizes are inferred: the convolutions are "SAME", the pools follow the pooler's own
    stride/padding, and the flatten adapts to what is left.

    Attributes:
      num_classes: outputs of the last dense layer.
      pooler: registry name of the pooler used in every pool slot.
      pooler_kwargs: keyword arguments for ``jaxpool.create(pooler, ...)``.

    Example::

      >>> model = CNN(num_classes=10, pooler="max")
      >>> x = jnp.zeros((2, 28, 28, 1))
      >>> variables = model.init(jax.random.key(0), x, deterministic=True)
      >>> model.apply(variables, x, deterministic=True).shape
      (2, 10)
    """

    num_classes: int
    pooler: str = "max"
    pooler_kwargs: Mapping[str, Any] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        kwargs = dict(self.pooler_kwargs or {})
        for i, features in enumerate((16, 32, 64), start=1):
            x = nn.Conv(features, (3, 3), padding="SAME", name=f"conv{i}")(x)
            x = nn.relu(x)
            x = PoolSlot(self.pooler, kwargs, name=f"{POOL_PREFIX}{i}")(x, deterministic)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(128, name="dense1")(x))
        return nn.Dense(self.num_classes, name="head")(x)


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))


def pooler_subtrees(params: Mapping[str, Any]) -> dict[str, Any]:
    """The pool slots' parameter subtrees ``{"pool1": {...}, ...}`` (parameter-free: absent)."""
    return {k: v for k, v in params.items() if k.startswith(POOL_PREFIX)}
