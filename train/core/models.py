"""The standard CNN of the reference study (any registry pooler in its pool slots) and a readable
report of the learned pooler parameters."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import linen as nn

import jaxpool
from train.core import conv

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
        self.sow("intermediates", "input", x)  # a no-op unless "intermediates" is mutable
        pool = jaxpool.create(self.pooler, **dict(self.pooler_kwargs))
        return pool(x, deterministic=deterministic)


class CNN(nn.Module):
    """conv3x3(16)-ReLU-pool, conv3x3(32)-ReLU-pool, conv3x3(64)-ReLU-pool, dense(128)-ReLU, dense.

    Input sizes are inferred: the convolutions are "SAME", the pools follow the pooler's own
    stride/padding, and the flatten adapts to what is left.

    ``implementation`` is the poolers' switch (:mod:`jaxpool.functional`) for the whole model:
    the convolutions are ``flax.linen.Conv`` with JAX's autodiff (``'reference'``) or
    :class:`train.core.conv.ConvSame`, with which XLA:CPU runs a training step 16 to 34 times
    faster inside the compiled training loop (``'fast'``; ``'auto'`` takes it on the CPU
    backend only: the measurements are in :mod:`train.core.conv`'s docstring).  Both have the
    same parameters (``conv1/kernel`` HWIO, ``conv1/bias``, ...), so a checkpoint of one loads
    into the other.  The value also goes to the pooler where it takes an ``implementation``
    (the study's first eight) unless ``pooler_kwargs`` sets one, which wins for the pool slots.
    ``'reference'`` is autodiff of plain ``lax`` ops throughout.  Forward mode (``jax.jvp``)
    works on every path.

    Attributes:
      num_classes: outputs of the last dense layer.
      pooler: registry name of the pooler used in every pool slot.
      pooler_kwargs: keyword arguments for ``jaxpool.create(pooler, ...)``.
      implementation: ``'auto'`` (default), ``'reference'`` or ``'fast'``.

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
    implementation: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        fast_conv = conv.use_fast(self.implementation)  # also checks the value
        kwargs = dict(self.pooler_kwargs or {})
        if "implementation" in jaxpool.hyperparameters(self.pooler):
            kwargs.setdefault("implementation", self.implementation)
        for i, features in enumerate((16, 32, 64), start=1):
            if fast_conv:
                x = conv.ConvSame(features, (3, 3), name=f"conv{i}")(x)
            else:
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


def _stats(a: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def _describe(name: str, value: np.ndarray, eps: float) -> dict[str, Any]:
    value = np.asarray(value, np.float64)
    if name == "alpha":
        s = 1.0 / (1.0 + np.exp(-value))
        return {"mixing_weight_s": s.tolist(), **_stats(s), "note": "s = sigmoid(alpha)"}
    if name == "gate_bias":
        g = 1.0 / (1.0 + np.exp(-value))
        return {**_stats(value), "sigmoid": g.tolist(), "sigmoid_mean": float(g.mean())}
    if name == "temperature":
        eff = np.maximum(value, 0.0) + eps
        out = {"note": f"effective temperature = relu(temperature) + {eps}", **_stats(eff)}
        if eff.ndim == 3:
            out["map"] = eff.mean(axis=-1).tolist()  # (Ho, Wo), averaged over channels
        elif eff.ndim == 2:
            out["map"] = eff.tolist()
        return out
    if name == "p":
        return {"p": value.tolist(), **_stats(value), "note": "p = 1: average, large p: max"}
    if name == "leaf_kernels" and value.ndim >= 1:
        return {**_stats(value), "per_leaf": [_stats(leaf) for leaf in value]}
    return {"shape": list(value.shape), **_stats(value)}


def pool_inputs(model: CNN, params: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
    """The input of every pool slot, ``{"pool1": (N, H, W, C), ...}``, for ``images`` (already
    preprocessed) in a deterministic forward pass."""
    _, state = model.apply(
        {"params": params}, images, deterministic=True, mutable=["intermediates"]
    )
    return {slot: v["input"][0] for slot, v in state["intermediates"].items() if "input" in v}


def _lip_logit_stats(
    slot_params: Mapping[str, Any], inputs: jax.Array, kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    layer = jaxpool.create("lip", **dict(kwargs))
    logits = np.asarray(jax.device_get(layer.logits(inputs, slot_params)), np.float64)
    return {
        **_stats(logits),
        "channel_std_mean": float(logits.std(axis=(0, 1, 2)).mean()),
        "note": "importance logits 12 sigmoid(IN(conv(x))) on the probe images; equal logits "
        "are average pooling",
    }


def pooler_report(
    params: Mapping[str, Any],
    pooler: str,
    pooler_kwargs: Mapping[str, Any],
    inputs: Mapping[str, jax.Array] | None = None,
) -> dict[str, Any]:
    """The learned pooler parameters of every pool slot in readable form.

    Args:
      params: the CNN's parameter tree (pool slots under ``pool1``..``pool3``).
      pooler: registry name of the pooler, recorded in the report.
      pooler_kwargs: its keyword arguments (tdgs's ``eps`` sets the temperature floor).
      inputs: the pool slots' inputs on a few images (:func:`pool_inputs`); LIP's layers then
        also describe their importance ``logits`` (mean/std/min/max, mean per-channel std).

    Returns:
      ``{"pooler", "pooler_kwargs", "layers": {"pool1": {param_name: description}, ...}}`` where
      ``alpha`` (mixed) becomes the per-channel mixing weight ``s = sigmoid(alpha)``,
      ``gate_kernel``/``leaf_kernels`` become mean/std/min/max (per leaf for tree), ``gate_bias``
      its stats plus ``sigmoid(bias)``, and ``temperature`` (tdgs) the effective temperature
      ``relu(t) + eps`` (``eps`` 0.1 unless given): its ``map`` (Ho, Wo) averaged over channels
      plus mean/std/min/max; ``p`` (lp) its values and stats.
      Poolers without parameters have empty layers.
    """
    layers = {}
    for i in (1, 2, 3):
        slot = f"{POOL_PREFIX}{i}"
        sub = params.get(slot, {})
        flat = jax.tree_util.tree_flatten_with_path(sub)[0]
        entries, leaves = {}, {}
        for path, leaf in flat:
            name = str(getattr(path[-1], "key", path[-1]))
            leaves[name] = leaf
            eps = float(pooler_kwargs.get("eps", 0.1))  # tdgs's temperature floor
            entries[name] = _describe(name, np.asarray(jax.device_get(leaf)), eps)
        if pooler == "lip" and inputs is not None and slot in inputs:
            entries["logits"] = _lip_logit_stats(leaves, inputs[slot], pooler_kwargs)
        layers[slot] = entries
    return {"pooler": pooler, "pooler_kwargs": dict(pooler_kwargs), "layers": layers}
