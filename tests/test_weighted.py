"""SoftPool, LP/GeM and LIP against an independent float64 NumPy reference (loops over windows)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpool

# (window, strides, padding, input (H, W)): odd and non-square inputs, overlap, SAME, explicit.
GEOMETRIES = [
    (2, None, "VALID", (5, 4)),
    (3, 2, "SAME", (5, 6)),
    ((3, 2), 1, "VALID", (4, 5)),
    (3, 2, 1, (7, 6)),
    ((3, 3), 2, (1, 0), (5, 4)),
]


def _pads(window, strides, padding, hw):
    """(pad_top, pad_left, Ho, Wo), worked out independently of jaxpool."""
    kh, kw = (window, window) if isinstance(window, int) else window
    strides = (kh, kw) if strides is None else strides
    sh, sw = (strides, strides) if isinstance(strides, int) else strides
    h, w = hw
    if padding == "VALID":
        return 0, 0, (h - kh) // sh + 1, (w - kw) // sw + 1, (kh, kw), (sh, sw)
    if padding == "SAME":
        ho, wo = -(-h // sh), -(-w // sw)
        pt = max((ho - 1) * sh + kh - h, 0) // 2
        pl = max((wo - 1) * sw + kw - w, 0) // 2
        return pt, pl, ho, wo, (kh, kw), (sh, sw)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return ph, pw, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1, (kh, kw), (sh, sw)


def _reference(x, geometry, reduce):
    """``reduce(values (n_real, C), index list)`` over the real elements of every window."""
    window, strides, padding, _ = geometry
    n, h, w, c = x.shape
    pt, pl, ho, wo, (kh, kw), (sh, sw) = _pads(window, strides, padding, (h, w))
    out = np.zeros((n, ho, wo, c))
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                where = [
                    (r, q)
                    for r in range(i * sh - pt, i * sh - pt + kh)
                    for q in range(j * sw - pl, j * sw - pl + kw)
                    if 0 <= r < h and 0 <= q < w
                ]
                out[b, i, j] = reduce(b, where)
    return out


def _input(hw, seed=0, channels=2):
    return np.random.default_rng(seed).normal(size=(2, *hw, channels)) * 2.0


def _numeric_grad(f, x, eps=1e-5):
    """Central differences of a float64 NumPy function of ``x`` (summed against fixed weights)."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[idx] = eps
        g[idx] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


def ref_soft_pool(x, geometry):
    def reduce(b, where):
        v = np.stack([x[b, r, q] for r, q in where])  # (n, C)
        e = np.exp(v - v.max(axis=0))
        return (e * v).sum(axis=0) / e.sum(axis=0)

    return _reference(x, geometry, reduce)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_soft_pool_matches_reference_values_and_gradients(geometry):
    window, strides, padding, hw = geometry
    x = _input(hw)
    y = jaxpool.soft_pool(jnp.asarray(x, jnp.float32), window, strides, padding)
    np.testing.assert_allclose(y, ref_soft_pool(x, geometry), rtol=1e-5, atol=1e-6)
    weights = np.random.default_rng(1).normal(size=y.shape)
    grad = jax.grad(lambda v: (jaxpool.soft_pool(v, window, strides, padding) * weights).sum())(
        jnp.asarray(x, jnp.float32)
    )
    expected = _numeric_grad(lambda v: (ref_soft_pool(v, geometry) * weights).sum(), x)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def test_soft_pool_is_stable_for_large_activations_and_lies_in_the_window():
    x = jnp.array([[[[1000.0], [999.0]], [[-1000.0], [0.0]]]])  # (1, 2, 2, 1)
    y = jaxpool.soft_pool(x)
    e = np.exp([0.0, -1.0])
    np.testing.assert_allclose(y[0, 0, 0, 0], (1000 * e[0] + 999 * e[1]) / e.sum(), rtol=1e-6)
    z = jax.random.normal(jax.random.key(0), (3, 6, 6, 4)) * 50
    pooled = jaxpool.soft_pool(z)
    windows = z.reshape(3, 3, 2, 3, 2, 4)
    assert np.isfinite(pooled).all()
    assert (pooled <= windows.max(axis=(2, 4)) + 1e-4).all()
    assert (pooled >= windows.min(axis=(2, 4)) - 1e-4).all()


def ref_lp_pool(x, p, geometry, eps=1e-6):
    def reduce(b, where):
        v = np.maximum(np.stack([x[b, r, q] for r, q in where]), eps)
        return np.mean(v**p, axis=0) ** (1.0 / p)

    return _reference(x, geometry, reduce)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_lp_pool_matches_reference_values_and_gradients(geometry):
    window, strides, padding, hw = geometry
    x = _input(hw, seed=2)
    p = np.array([2.5, 4.0])  # per channel
    y = jaxpool.lp_pool(jnp.asarray(x, jnp.float32), p, window, strides, padding)
    np.testing.assert_allclose(y, ref_lp_pool(x, p, geometry), rtol=1e-5, atol=1e-6)
    weights = np.random.default_rng(3).normal(size=y.shape)
    gx, gp = jax.grad(
        lambda v, q: (jaxpool.lp_pool(v, q, window, strides, padding) * weights).sum(), (0, 1)
    )(jnp.asarray(x, jnp.float32), jnp.asarray(p, jnp.float32))
    ex = _numeric_grad(lambda v: (ref_lp_pool(v, p, geometry) * weights).sum(), x)
    ep = _numeric_grad(lambda q: (ref_lp_pool(x, q, geometry) * weights).sum(), p)
    np.testing.assert_allclose(gx, ex, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(gp, ep, rtol=1e-3, atol=1e-4)


def test_infinite_and_huge_inputs_take_their_limits():
    """SoftPool: a -inf element has weight e^-inf = 0 and adds nothing, a +inf one takes all the
    weight; values near the float32 maximum do not overflow the weighted sum. LP: a window max
    above 1/tiny (where XLA's reciprocal of it flushes to 0) still gives m (mean (c/m)^p)^(1/p)."""

    def window(*values):
        return jnp.array(values, jnp.float32).reshape(1, 2, 2, 1)

    e = np.exp([1.0, 2.0, 3.0])
    expected = (e * [1, 2, 3]).sum() / e.sum()
    np.testing.assert_allclose(jaxpool.soft_pool(window(-np.inf, 1, 2, 3)), [[[[expected]]]], 1e-6)
    assert jaxpool.soft_pool(window(np.inf, 1, 2, 3)) == np.inf
    assert jaxpool.soft_pool(window(-np.inf, -np.inf, -np.inf, -np.inf)) == -np.inf
    assert np.isnan(jaxpool.soft_pool(window(np.nan, 1, 2, 3)))
    grad = jax.grad(lambda v: jaxpool.soft_pool(v).sum())(window(-np.inf, 1, 2, 3))
    assert np.isfinite(grad).all() and grad[0, 0, 0, 0] == 0
    big = np.float32(3e38)
    assert jaxpool.soft_pool(window(big, big, big, big)) == big
    y = jaxpool.lp_pool(window(1e38, 1e38, 1, 0), 3.0)
    np.testing.assert_allclose(y, [[[[np.float32(1e38) * 0.5 ** (1 / 3)]]]], rtol=1e-6)
    # LIP: an element of -inf with a logit of -inf is left out as SoftPool's.
    lip = jaxpool.lip_pool(window(-np.inf, 1, 2, 3), window(-np.inf, 0, 0, 0), 2, 2, 0)
    np.testing.assert_allclose(lip, [[[[2.0]]]], rtol=1e-6)


def test_lp_pool_limits_are_average_and_max():
    x = jnp.abs(jax.random.normal(jax.random.key(0), (2, 6, 4, 3))) + 0.01
    np.testing.assert_allclose(jaxpool.lp_pool(x, 1.0), jaxpool.avg_pool(x), rtol=1e-5, atol=1e-6)
    # (mean v^p)^(1/p) >= max v * K^(-1/p): within 0.4% of the max for K = 4, p = 400
    np.testing.assert_allclose(jaxpool.lp_pool(x, 400.0), jaxpool.max_pool(x), rtol=4e-3)
    # a p this large overflows x^p in float32 unless the window max is factored out
    assert np.isfinite(jaxpool.lp_pool(x * 100, 400.0)).all()


def ref_lip_logits(x, kernel, scale, bias, coefficient=12.0, epsilon=1e-5):
    n, h, w, c = x.shape
    kh, kw = kernel.shape[:2]
    pt, pl = (kh - 1) // 2, (kw - 1) // 2
    padded = np.zeros((n, h + kh - 1, w + kw - 1, c))
    padded[:, pt : pt + h, pl : pl + w] = x
    z = np.zeros((n, h, w, c))
    for i in range(h):
        for j in range(w):
            patch = padded[:, i : i + kh, j : j + kw, :]  # (n, kh, kw, C)
            z[:, i, j] = np.einsum("nabc,abcd->nd", patch, kernel)
    mean = z.mean(axis=(1, 2), keepdims=True)
    var = z.var(axis=(1, 2), keepdims=True)
    normalised = (z - mean) / np.sqrt(var + epsilon) * scale + bias
    return coefficient / (1.0 + np.exp(-normalised))


def ref_lip_pool(x, logits, geometry):
    def reduce(b, where):
        v = np.stack([x[b, r, q] for r, q in where])
        g = np.stack([logits[b, r, q] for r, q in where])
        e = np.exp(g)
        return (e * v).sum(axis=0) / e.sum(axis=0)

    return _reference(x, geometry, reduce)


@pytest.mark.parametrize("geometry", [(3, 2, 1, (7, 6)), (2, None, "SAME", (5, 5))])
def test_lip_matches_reference_values_and_gradients(geometry):
    window, strides, padding, hw = geometry
    rng = np.random.default_rng(4)
    x = _input(hw, seed=5)
    kernel = rng.normal(size=(3, 3, 2, 2)) * 0.3
    scale, bias = rng.normal(size=2), rng.normal(size=2)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    with jax.default_matmul_precision("highest"):  # float32 convolutions on every backend
        logits = jaxpool.lip_logits(f32(x), f32(kernel), f32(scale), f32(bias))
        ref_logits = ref_lip_logits(x, kernel, scale, bias)
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)
        y = jaxpool.lip_pool(f32(x), f32(ref_logits), window, strides, padding)
        np.testing.assert_allclose(y, ref_lip_pool(x, ref_logits, geometry), rtol=1e-5, atol=1e-5)

        def full(v, k):
            lg = jaxpool.lip_logits(v, k, f32(scale), f32(bias))
            return (jaxpool.lip_pool(v, lg, window, strides, padding) * weights).sum()

        def ref_full(v, k):
            return (ref_lip_pool(v, ref_lip_logits(v, k, scale, bias), geometry) * weights).sum()

        weights = rng.normal(size=y.shape)
        gx, gk = jax.grad(full, (0, 1))(f32(x), f32(kernel))
    np.testing.assert_allclose(
        gx, _numeric_grad(lambda v: ref_full(v, kernel), x), rtol=2e-3, atol=2e-3
    )
    np.testing.assert_allclose(
        gk, _numeric_grad(lambda k: ref_full(x, k), kernel), rtol=2e-3, atol=2e-3
    )


def test_lip_with_equal_logits_is_average_pooling():
    x = jax.random.normal(jax.random.key(1), (2, 7, 6, 3))
    y = jaxpool.lip_pool(x, jnp.full(x.shape, 6.0), 3, 2, "SAME")
    np.testing.assert_allclose(y, jaxpool.avg_pool(x, 3, 2, "SAME"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: jaxpool.soft_pool(x, 3, 2, 2), r"between 0 and half the window \(1"),
        (
            lambda x: jaxpool.soft_pool(x, 2, None, "FULL"),
            r"padding must be 'VALID', 'SAME', an int or a pair of ints .*got 'FULL'",
        ),
        (lambda x: jaxpool.lp_pool(x, 3.0, padding="full"), r"'SAME', an int or a pair of ints"),
        (lambda x: jaxpool.lip_pool(x, x, padding="FULL"), r"'SAME', an int or a pair of ints"),
        (lambda x: jaxpool.soft_pool(x, 2, None, (1, 1, 1)), r"an int or a pair of ints"),
        (lambda x: jaxpool.lp_pool(x, jnp.ones(3)), r"p must have shape \(\) or \(C,\) = \(2,\)"),
        (lambda x: jaxpool.lp_pool(x, 3.0, eps=0.0), r"eps must be finite and > 0"),
        (lambda x: jaxpool.lp_pool(x, "3"), r"p must be a number or an array of numbers"),
        (lambda x: jaxpool.lp_pool(x, True), r"p must be a real number or array; got dtype bool"),
        (lambda x: jaxpool.lp_pool(x, 3.0, eps=np.inf), r"eps must be finite and > 0"),
        (lambda x: jaxpool.lp_pool(x, 3.0, eps=1e-40), r"eps must be at least 1.175e-38"),
        *(
            (
                lambda x, e=epsilon: jaxpool.lip_logits(
                    x, jnp.zeros((3, 3, 2, 2)), jnp.ones(2), jnp.zeros(2), epsilon=e
                ),
                r"epsilon must be (finite and > 0|at least 1.175e-38) \(the variance floor\)",
            )
            for epsilon in (0.0, -1.0, np.inf, 1e-40)
        ),
        (lambda x: jaxpool.lip_pool(x, x[..., :1]), r"logits must have the shape of x"),
        (
            lambda x: jaxpool.lip_logits(x, jnp.zeros((3, 3, 2, 3)), jnp.ones(2), jnp.zeros(2)),
            r"kernel must have shape \(kh, kw, C, C\) = \(kh, kw, 2, 2\)",
        ),
    ],
)
def test_bad_arguments_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(jnp.ones((1, 6, 6, 2)))


@pytest.mark.parametrize("kernel_shape", [(3, 3, 2, 4), (2, 3, 2, 1)])
def test_conv_same_equals_lax_convolution(kernel_shape):
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 2))
    kernel = jax.random.normal(jax.random.key(1), kernel_shape)
    with jax.default_matmul_precision("highest"):
        expected = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        np.testing.assert_allclose(
            jaxpool.functional.conv_same(x, kernel), expected, rtol=1e-5, atol=1e-5
        )
