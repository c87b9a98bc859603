"""Tests of train/core/conv.py: values, both gradients and forward mode equal
lax.conv_general_dilated / nn.Conv; the backward pass is forward-form convolutions only."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpool import _windows
from train.core import conv

SHAPES = [  # (x shape NHWC, kernel (kh, kw), out channels)
    ((2, 7, 6, 3), (3, 3), 4),
    ((3, 8, 8, 2), (2, 2), 5),
    ((1, 5, 9, 4), (3, 1), 3),
    ((2, 4, 4, 1), (5, 5), 2),  # kernel larger than the input
    ((4, 6, 6, 8), (1, 1), 8),
]
FORWARD_FORM = jax.lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))
EPS = float(np.finfo(np.float32).eps)


def _reference(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def assert_within(ours, theirs, terms, magnitude):
    """``|ours - theirs| <= 8 * terms * eps * magnitude``, elementwise.

    Each side is a float32 sum of ``terms`` products, off from the exact sum by at most
    ``terms * eps * sum |products|`` (the classic summation bound, gamma_n; ``magnitude`` is that
    sum of absolute values, the same computation on ``|x|``, ``|w|``): the two differ by at most
    twice that.  A further factor 4 leaves room for convolution algorithms that do not sum
    plainly (Winograd, which a GPU may pick).
    """
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape
    bound = 8 * terms * EPS * np.asarray(magnitude, np.float64)
    excess = np.abs(ours - theirs) - bound
    assert excess.max() <= 0, f"worst excess {excess.max():.3g} over the bound"


def _case(x_shape, kernel, features, seed=0):
    kx, kw, kc = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, x_shape)
    w = jax.random.normal(kw, (*kernel, x_shape[-1], features))
    return x, w, jax.random.normal(kc, (*x_shape[:3], features))


@pytest.mark.parametrize(("x_shape", "kernel", "features"), SHAPES)
def test_values_and_gradients_equal_lax_conv(x_shape, kernel, features):
    # "highest": a GPU computes float32 convolutions in TF32 (10-bit mantissa) by default.
    with jax.default_matmul_precision("highest"):
        x, w, cotangent = _case(x_shape, kernel, features)
        y, vjp = jax.vjp(conv.conv_same, x, w)
        y_ref, vjp_ref = jax.vjp(_reference, x, w)
        # The same sums on absolute values bound every term (the vjp is linear in dy).
        y_abs, vjp_abs = jax.vjp(_reference, jnp.abs(x), jnp.abs(w))
        dx, dw = vjp(cotangent)
        dx_ref, dw_ref = vjp_ref(cotangent)
        dx_abs, dw_abs = vjp_abs(jnp.abs(cotangent))
    (n, h, wd, c), (kh, kw) = x_shape, kernel
    assert_within(y, y_ref, kh * kw * c, y_abs)
    assert_within(dx, dx_ref, kh * kw * features, dx_abs)
    assert_within(dw, dw_ref, n * h * wd, dw_abs)


@pytest.mark.parametrize(("x_shape", "kernel", "features"), SHAPES[:2])
def test_forward_mode_equals_lax_conv(x_shape, kernel, features):
    with jax.default_matmul_precision("highest"):
        x, w, _ = _case(x_shape, kernel, features)
        x_dot, w_dot, _ = _case(x_shape, kernel, features, seed=1)
        y, y_dot = jax.jvp(conv.conv_same, (x, w), (x_dot, w_dot))
        y_ref, y_dot_ref = jax.jvp(_reference, (x, w), (x_dot, w_dot))
        abs_x, abs_w = jnp.abs(x), jnp.abs(w)
        magnitude = _reference(jnp.abs(x_dot), abs_w) + _reference(abs_x, jnp.abs(w_dot))
    terms = kernel[0] * kernel[1] * x_shape[-1] + 1  # + 1: the sum of the two terms
    assert_within(y, y_ref, terms, _reference(abs_x, abs_w))
    assert_within(y_dot, y_dot_ref, terms, magnitude)
    # jacfwd and forward-over-reverse run too.
    jac = jax.jacfwd(lambda v: conv.conv_same(v, w).sum())(x)
    assert jac.shape == x.shape
    hvp = jax.jvp(jax.grad(lambda v: (conv.conv_same(x, v) ** 2).sum()), (w,), (w_dot,))[1]
    assert hvp.shape == w.shape


def _nested_jaxprs(value) -> list:
    """The jaxprs in an equation's parameter (a jaxpr, a closed jaxpr or a sequence of them)."""
    if hasattr(value, "eqns"):
        return [value]
    if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        return [value.jaxpr]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _nested_jaxprs(v)]
    return []


def _convolutions(jaxpr) -> list:
    """Every conv_general_dilated equation in ``jaxpr`` and the jaxprs nested in it."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            found.append(eqn)
        for param in eqn.params.values():
            for sub in _nested_jaxprs(param):
                found.extend(_convolutions(sub))
    return found


def test_backward_pass_is_forward_form_convolutions():
    # The reason for the module (docstring): XLA:CPU runs forward-form convolutions fast inside
    # a loop, autodiff's backward forms slowly.  This holds as long as JAX transposes the jvp's
    # two convolutions as it does today; a JAX that changes that fails here first.
    x, w, _ = _case((2, 7, 6, 3), (3, 3), 4)

    def backward(fn):
        loss = lambda a, b: jnp.sum(fn(a, b) ** 2)
        return _convolutions(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w).jaxpr)

    ours = backward(conv.conv_same)
    assert len(ours) == 3  # forward, dx, dw
    assert all(e.params["dimension_numbers"] == FORWARD_FORM for e in ours)
    assert all(e.params["lhs_dilation"] == (1, 1) for e in ours)
    theirs = backward(_reference)  # the check can fail: autodiff's forms are other ones
    assert any(e.params["dimension_numbers"] != FORWARD_FORM for e in theirs)


def test_gradients_inside_a_jitted_loop_equal_lax_conv():
    # The same gradients when XLA compiles them inside a while loop (its fast kernels).
    x_shape, kernel, features = (4, 8, 8, 3), (3, 3), 6
    with jax.default_matmul_precision("highest"):
        x, w, cotangent = _case(x_shape, kernel, features, seed=2)

        def in_loop(fn):
            grads = jax.grad(lambda a, b: jnp.sum(fn(a, b) * cotangent), argnums=(0, 1))
            zeros = (jnp.zeros_like(x), jnp.zeros_like(w))
            return jax.jit(lambda: jax.lax.fori_loop(0, 2, lambda i, _: grads(x, w), zeros))()

        dx, dw = in_loop(conv.conv_same)
        dx_ref, dw_ref = jax.grad(
            lambda a, b: jnp.sum(_reference(a, b) * cotangent), argnums=(0, 1)
        )(x, w)
        _, vjp_abs = jax.vjp(_reference, jnp.abs(x), jnp.abs(w))
        dx_abs, dw_abs = vjp_abs(jnp.abs(cotangent))
    assert_within(dx, dx_ref, 9 * features, dx_abs)
    assert_within(dw, dw_ref, 4 * 8 * 8, dw_abs)


def test_module_equals_flax_conv_with_the_same_parameters():
    x = jax.random.normal(jax.random.key(3), (2, 9, 9, 3))
    ours = conv.ConvSame(5, (3, 3))
    theirs = nn.Conv(5, (3, 3), padding="SAME")
    variables = theirs.init(jax.random.key(4), x)
    # The same names, shapes and initial values: a checkpoint of either loads into the other.
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, ours.init(jax.random.key(4), x), variables
    )
    variables = jax.tree_util.tree_map(lambda v: v + 0.1, variables)  # a non-zero bias too
    abs_variables = jax.tree_util.tree_map(jnp.abs, variables)
    with jax.default_matmul_precision("highest"):
        y, y_ref = ours.apply(variables, x), theirs.apply(variables, x)
        magnitude = theirs.apply(abs_variables, jnp.abs(x))
    assert_within(y, y_ref, 9 * 3 + 1, magnitude)


def test_module_refuses_non_nhwc_input():
    with pytest.raises(ValueError, match=r"ConvSame expects NHWC input \(4 dims\), got shape"):
        conv.ConvSame(2).init(jax.random.key(0), jnp.zeros((8, 8, 3)))


def test_use_fast_is_the_poolers_switch():
    assert conv.use_fast("fast") and not conv.use_fast("reference")
    assert conv.use_fast("auto") == _windows.on_measured_backend()
    with pytest.raises(ValueError, match=r"implementation must be one of 'auto', 'reference'"):
        conv.use_fast("quick")


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
