"""Tests of train/core/conv.py: values and both gradients equal lax.conv_general_dilated / nn.Conv."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train.core import conv

SHAPES = [  # (x shape NHWC, kernel (kh, kw), out channels)
    ((2, 7, 6, 3), (3, 3), 4),
    ((3, 8, 8, 2), (2, 2), 5),
    ((1, 5, 9, 4), (3, 1), 3),
    ((2, 4, 4, 1), (5, 5), 2),  # kernel larger than the input
    ((4, 6, 6, 8), (1, 1), 8),
]


def _reference(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize(("x_shape", "kernel", "features"), SHAPES)
def test_values_and_gradients_equal_lax_conv(x_shape, kernel, features):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape)
    w = jax.random.normal(kw, (*kernel, x_shape[-1], features))
    y, vjp = jax.vjp(conv.conv_same, x, w)
    y_ref, vjp_ref = jax.vjp(_reference, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    cotangent = jax.random.normal(kg, y.shape)
    for ours, theirs in zip(vjp(cotangent), vjp_ref(cotangent), strict=True):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_gradients_inside_a_jitted_loop_equal_lax_conv():
    # The reason for the module: the same gradients when XLA compiles them inside a while loop.
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    w = jax.random.normal(jax.random.key(2), (3, 3, 3, 6))

    def descend(fn):
        def body(_, w):
            return w - 0.01 * jax.grad(lambda v: jnp.sum(fn(x, v) ** 2))(w)

        return jax.jit(lambda w: jax.lax.fori_loop(0, 3, body, w))(w)

    np.testing.assert_allclose(descend(conv.conv_same), descend(_reference), rtol=1e-5, atol=1e-5)


def test_module_equals_flax_conv_with_the_same_parameters():
    x = jax.random.normal(jax.random.key(3), (2, 9, 9, 3))
    ours = conv.ConvSame(5, (3, 3))
    theirs = nn.Conv(5, (3, 3), padding="SAME")
    variables = theirs.init(jax.random.key(4), x)
    assert jax.tree_util.tree_map(jnp.shape, ours.init(jax.random.key(4), x)) == (
        jax.tree_util.tree_map(jnp.shape, variables)
    )
    variables = jax.tree_util.tree_map(lambda v: v + 0.1, variables)  # a non-zero bias too
    np.testing.assert_allclose(
        ours.apply(variables, x), theirs.apply(variables, x), rtol=1e-5, atol=1e-5
    )


def test_module_refuses_non_nhwc_input():
    with pytest.raises(ValueError, match=r"ConvSame expects NHWC input \(4 dims\), got shape"):
        conv.ConvSame(2).init(jax.random.key(0), jnp.zeros((8, 8, 3)))


def _numpy_conv_same(x, w):
    """Direct float64 correlation with lax's "SAME" split: independent of XLA's kernels."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    kh, kw = w.shape[:2]
    pads = (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2))
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    n, h, wd, _ = x.shape
    out = np.zeros((n, h, wd, w.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,co->nhwo", xp[:, i : i + h, j : j + wd], w[i, j])
    return out


@pytest.mark.parametrize(("x_shape", "kernel", "features"), SHAPES)
def test_values_and_gradients_match_a_float64_numpy_reference(x_shape, kernel, features):
    # Whatever kernel library XLA:CPU uses (train.core.xla_cpu picks XNNPACK), float32 accuracy holds.
    # "highest": a GPU computes float32 convolutions in TF32 (10-bit mantissa) by default.
    with jax.default_matmul_precision("highest"):
        _check_against_numpy(x_shape, kernel, features)


def _check_against_numpy(x_shape, kernel, features):
    kx, kw = jax.random.split(jax.random.key(5))
    x = jax.random.normal(kx, x_shape)
    w = jax.random.normal(kw, (*kernel, x_shape[-1], features))
    np.testing.assert_allclose(conv.conv_same(x, w), _numpy_conv_same(x, w), rtol=1e-4, atol=1e-4)
    # Gradients of sum(y * c): d/dw_ijco = sum x_pad c, checked through the float64 forward.
    c = np.random.default_rng(0).standard_normal((*x_shape[:3], features))
    dx, dw = jax.grad(lambda a, b: jnp.sum(conv.conv_same(a, b) * c), argnums=(0, 1))(x, w)
    eps = 1e-3
    for idx in [(0, 0, 0, 0), tuple(s - 1 for s in w.shape)]:
        step = np.zeros(w.shape)
        step[idx] = eps
        num = (_numpy_conv_same(x, w + step) * c).sum() - (_numpy_conv_same(x, w - step) * c).sum()
        np.testing.assert_allclose(dw[idx], num / (2 * eps), rtol=1e-3, atol=1e-3)
    for idx in [(0, 0, 0, 0), tuple(s - 1 for s in x.shape)]:
        step = np.zeros(x.shape)
        step[idx] = eps
        num = (_numpy_conv_same(x + step, w) * c).sum() - (_numpy_conv_same(x - step, w) * c).sum()
        np.testing.assert_allclose(dx[idx], num / (2 * eps), rtol=1e-3, atol=1e-3)
