"""Tests of train/core/models.py: the standard CNN with every registry pooler."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import pytest

import jaxpool
from train.core import models

# Expected learnable pooler parameters per slot (name -> shape for C channels, Ho x Wo output).
POOLER_PARAMS = {
    "mixed": lambda c, ho, wo: {"alpha": (c,)},
    "gated": lambda c, ho, wo: {"gate_kernel": (2, 2, c), "gate_bias": (c,)},
    "tree": lambda c, ho, wo: {"leaf_kernels": (2, 2, 2, c), "gate_kernel": (2, 2, c)},
    "tdgs": lambda c, ho, wo: {"temperature": (ho, wo, c)},
    "lp": lambda c, ho, wo: {"p": ()},
    "lip": lambda c, ho, wo: {
        "logit_kernel": (3, 3, c, c),
        "norm_scale": (c,),
        "norm_bias": (c,),
    },
}
# Pool outputs on 8x8 digits where they are not 4, 2, 1: fractional floor(N / sqrt 2): 5, 3, 2.
SIDES = {"fractional": (5, 3, 2)}


def _init(pooler: str, shape, num_classes=10):
    """Abstract init (``jax.eval_shape``): shapes without compiling or running anything."""
    model = models.CNN(num_classes=num_classes, pooler=pooler)
    keys = {"params": jax.random.key(0), "pooling": jax.random.key(1)}
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(lambda k, x: model.init(k, x, deterministic=False), keys, x)
    return model, variables, x


def _apply(model, variables, x, **kwargs):
    return jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), variables, x)


@pytest.mark.parametrize("pooler", [name for name in jaxpool.available() if name != "blur"])
def test_cnn_on_digits_sized_input(pooler):
    model, variables, x = _init(pooler, (2, 8, 8, 1))
    y = _apply(model, variables, x, deterministic=True)
    chex.assert_shape(y, (2, 10))
    params = variables["params"]
    chex.assert_shape(params["conv1"]["kernel"], (3, 3, 1, 16))
    # 8 -> 4 -> 2 -> 1 after three 2x2 pools (s3 has stride 2, LIP ceil(N / 2)): 64 features.
    sides = SIDES.get(pooler, (4, 2, 1))
    chex.assert_shape(params["dense1"]["kernel"], (sides[-1] ** 2 * 64, 128))
    pools = models.pooler_subtrees(params)
    if pooler not in POOLER_PARAMS:
        assert pools == {}
        return
    for i, (c, hw) in enumerate(zip((16, 32, 64), sides, strict=True), start=1):
        (leaves,) = pools[f"pool{i}"].values()  # one pooler module per slot
        want = POOLER_PARAMS[pooler](c, hw, hw)
        assert {k: v.shape for k, v in leaves.items()} == want


def test_blur_needs_larger_maps_than_digits_leave():
    # 8 -> 4 -> 2: the third pool's 2x2 max leaves 1 row, too few to reflect-pad by 2
    with pytest.raises(ValueError, match=r"reflect padding of 2 .*pad_mode='edge'"):
        _init("blur", (2, 8, 8, 1))
    model = models.CNN(num_classes=10, pooler="blur", pooler_kwargs={"pad_mode": "edge"})
    x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    keys = {"params": jax.random.key(0), "pooling": jax.random.key(1)}
    variables = jax.eval_shape(lambda k, x: model.init(k, x, deterministic=False), keys, x)
    chex.assert_shape(variables["params"]["dense1"]["kernel"], (64, 128))


@pytest.mark.parametrize("shape", [(1, 28, 28, 1), (1, 32, 32, 3)])
def test_cnn_infers_sizes_and_class_count(shape):
    _, variables, _ = _init("max", shape, num_classes=100)
    params = variables["params"]
    side = shape[1] // 8  # 28 -> 14 -> 7 -> 3 (VALID floors), 32 -> 4
    chex.assert_shape(params["dense1"]["kernel"], (side * side * 64, 128))
    chex.assert_shape(params["head"]["kernel"], (128, 100))


def test_stochastic_pooler_runs_with_and_without_the_pooling_rng():
    model, variables, x = _init("stochastic", (2, 8, 8, 1))
    _apply(model, variables, x, deterministic=True)
    out = _apply(model, variables, x, deterministic=False, rngs={"pooling": jax.random.key(3)})
    chex.assert_shape(out, (2, 10))


def test_count_params():
    _, variables, _ = _init("mixed", (1, 8, 8, 1))
    params = variables["params"]
    assert models.count_params(models.pooler_subtrees(params)) == 16 + 32 + 64
    assert models.count_params(params) > 30_000
