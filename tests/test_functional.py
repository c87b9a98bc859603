"""Known values, invariants and sampling statistics of jaxpool.functional."""

from __future__ import annotations

import functools
import itertools
import json
import math

import chex
import flax.linen as nn
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ref_window_positions, ref_windows, run_on_cpu_devices
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxpool
from jaxpool import _s3, _windows
from jaxpool import functional as F

GRID_1_16 = jnp.arange(1, 17, dtype=jnp.float32).reshape(4, 4, 1)
GEOMETRIES = [  # (window, strides, padding)
    ((2, 2), None, "VALID"),
    ((2, 2), None, "SAME"),
    ((3, 3), (2, 2), "VALID"),
    ((3, 3), (2, 2), "SAME"),
    ((3, 2), (1, 2), "SAME"),
]


def _pair_strides(window, strides):
    return window if strides is None else strides


# ----------------------------------------------------------------------------- known values
def test_mixed_known_value():
    y = F.mixed_pool(GRID_1_16, jnp.zeros(()))
    np.testing.assert_allclose(y[..., 0], [[4.75, 6.75], [12.75, 14.75]])


@pytest.mark.parametrize(("window", "strides", "padding"), GEOMETRIES)
def test_max_avg_equal_flax(window, strides, padding):
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
    s = _pair_strides(window, strides)
    np.testing.assert_array_equal(
        F.max_pool(x, window, strides, padding), nn.max_pool(x, window, s, padding)
    )
    np.testing.assert_allclose(
        F.avg_pool(x, window, strides, padding),
        nn.avg_pool(x, window, s, padding, count_include_pad=False),
        rtol=1e-6,
        atol=1e-6,
    )


def _tied_max_inputs(window, strides, padding):
    """Values 0..2 (many ties) and a distinct weight per output, to tell the outputs' gradients
    apart."""
    x = jnp.asarray(np.random.default_rng(0).integers(0, 3, (2, 7, 6, 3)), jnp.float32)
    out_shape = F.max_pool(x, window, strides, padding).shape
    weights = jnp.arange(1.0, 1.0 + math.prod(out_shape)).reshape(out_shape)
    return x, weights


@pytest.mark.parametrize(("window", "strides", "padding"), GEOMETRIES)
def test_max_gradient_goes_to_the_first_tied_maximum(window, strides, padding):
    x, weights = _tied_max_inputs(window, strides, padding)
    ours = jax.grad(lambda v: jnp.sum(weights * F.max_pool(v, window, strides, padding)))(x)
    s = _pair_strides(window, strides)
    positions, _ = ref_window_positions(*x.shape[1:3], window, s, padding)
    xs, ws, expected = np.asarray(x), np.asarray(weights), np.zeros(x.shape)
    for (i, j), rows_cols in positions.items():
        for n, c in np.ndindex(x.shape[0], x.shape[3]):
            values = [xs[n, row, col, c] for row, col in rows_cols]
            r, q = rows_cols[int(np.argmax(values))]  # np.argmax: the first maximum
            expected[n, r, q, c] += ws[n, i, j, c]
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize(("window", "strides", "padding"), GEOMETRIES)
def test_max_gradient_equals_flax(window, strides, padding):
    x, weights = _tied_max_inputs(window, strides, padding)
    ours = jax.grad(lambda v: jnp.sum(weights * F.max_pool(v, window, strides, padding)))(x)
    s = _pair_strides(window, strides)
    try:  # flax's derivative is a select-and-scatter
        theirs = jax.grad(lambda v: jnp.sum(weights * nn.max_pool(v, window, s, padding)))(x)
    except (NotImplementedError, jax.errors.JaxRuntimeError) as e:
        if "deterministic" not in str(e):
            raise
        pytest.skip("XLA:GPU does not compile select-and-scatter under deterministic ops")
    np.testing.assert_array_equal(ours, theirs)


def test_a_nan_anywhere_in_a_window_makes_its_max_nan():
    """As ``jnp.max`` and flax's max_pool: example i has its NaN at position i of a 4x4 input; every
    max-based pooler's output is NaN exactly where its window (region) holds that position."""
    x = np.zeros((16, 4, 4, 1), np.float32)
    x.reshape(16, 16)[np.arange(16), np.arange(16)] = np.nan
    expected = np.isnan(x.reshape(16, 2, 2, 2, 2).max(axis=(2, 4)))  # 2x2 windows, stride 2

    @jax.jit
    def pooled(v):
        return {
            "reference": F.max_pool(v, 2, implementation="reference"),
            "fast": F.max_pool(v, 2, implementation="fast"),
            "blur": F.max_blur_pool(v, filter_size=1),  # the dense max at even positions
            "fractional": F.fractional_max_pool(v, 1.5, deterministic=True),
        }

    out = jax.tree.map(np.asarray, pooled(jnp.asarray(x)))
    for name in ("reference", "fast", "blur"):
        np.testing.assert_array_equal(np.isnan(out[name][..., 0]), expected, err_msg=name)
    frac = np.isnan(out["fractional"][..., 0]).reshape(16, -1)
    # Its regions cover the first 3 rows and columns whatever the sequence: those NaNs show.
    covered = [i for i in range(16) if i // 4 < 3 and i % 4 < 3]
    assert frac[covered].any(axis=1).all(), frac


@pytest.mark.parametrize("implementation", ["reference", "fast"])
def test_stochastic_poolers_take_the_limits_of_infinite_inputs(implementation):
    """A +inf activation is the limit of a growing one: it takes all the probability (l1 and
    softmax) or all the softmax weight (TDGS). A -inf one has none: never drawn, and no part of the
    expectation (0 * inf is not NaN there). A NaN in a window is the output."""
    windows = np.array(
        [[-np.inf, 1.0, 2.0, 3.0], [np.inf, 1.0, 0.5, 0.0], [1.0, np.nan, 2.0, 3.0]], np.float32
    )
    x = jnp.asarray(windows.reshape(3, 2, 2, 1))
    keys = jax.random.split(jax.random.key(0), 64)
    poolers = {
        "l1": lambda **kw: F.stochastic_pool(x, implementation=implementation, **kw),
        "softmax": lambda **kw: F.stochastic_pool(
            x, mode="softmax", implementation=implementation, **kw
        ),
        "tdgs": lambda **kw: F.tdgs_pool(x, 0.0, eps=1.0, implementation=implementation, **kw),
    }

    @jax.jit
    def run():
        det = {name: pool(deterministic=True)[:, 0, 0, 0] for name, pool in poolers.items()}
        drawn = {
            name: jax.vmap(lambda k, pool=pool: pool(key=k)[:, 0, 0, 0])(keys)
            for name, pool in poolers.items()
        }
        return det, drawn

    det, drawn = jax.tree.map(np.asarray, run())
    e = np.exp([1.0, 2.0, 3.0])
    expected_det = {"l1": 14.0 / 6.0, "softmax": (e * [1, 2, 3]).sum() / e.sum()}
    expected_det["tdgs"] = expected_det["softmax"]  # t = relu(0) + 1
    for name in poolers:
        np.testing.assert_allclose(det[name][0], expected_det[name], rtol=1e-6, err_msg=name)
        assert det[name][1] == np.inf and np.isnan(det[name][2]), (name, det[name])
        assert set(drawn[name][:, 0]) <= {1.0, 2.0, 3.0}, name  # never the -inf
        assert (drawn[name][:, 1] == np.inf).all() and np.isnan(drawn[name][:, 2]).all(), name


def test_stochastic_deterministic_is_sum_sq_over_sum():
    y = F.stochastic_pool(GRID_1_16, deterministic=True)[..., 0]
    windows = np.array([[1, 2, 5, 6], [3, 4, 7, 8], [9, 10, 13, 14], [11, 12, 15, 16]], float)
    expected = (windows**2).sum(1) / windows.sum(1)
    np.testing.assert_allclose(y.reshape(-1), expected, rtol=1e-6)


def test_stochastic_l1_uses_positive_part():
    # window [-3, 1, 2, 0]: a = [0, 1, 2, 0], p = [0, 1/3, 2/3, 0], det = (1 + 4) / 3
    x = jnp.array([[-3.0, 1.0], [2.0, 0.0]])[..., None]
    np.testing.assert_allclose(F.stochastic_pool(x, deterministic=True)[0, 0, 0], 5 / 3, rtol=1e-6)
    samples = jax.vmap(lambda k: F.stochastic_pool(x, key=k))(
        jax.random.split(jax.random.key(0), 200)
    )
    assert set(np.unique(samples).tolist()) == {1.0, 2.0}


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1.0, 1e20, 1e30])
def test_stochastic_deterministic_derivatives_hold_for_tiny_and_huge_mass(scale):
    # window [s, s/2, -1, -2]: a = [s, s/2, 0, 0], y = sum a^2 / sum a = 5s/6 and
    # dy/dx_j = (2 a_j sum a - sum a^2) / (sum a)^2 = [7/9, 1/9, 0, 0] whatever s; (sum a)^2 under-
    # or overflows float32 for the outer scales
    x = jnp.array([[scale, scale / 2], [-1.0, -2.0]], jnp.float32)[..., None]
    f = lambda v: F.stochastic_pool(v, deterministic=True)[0, 0, 0]
    np.testing.assert_allclose(f(x), 5 * scale / 6, rtol=1e-6)
    expected = [[7 / 9, 1 / 9], [0.0, 0.0]]
    np.testing.assert_allclose(jax.grad(f)(x)[..., 0], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.jvp(f, (x,), (jnp.ones_like(x),))[1], 8 / 9, rtol=1e-5)


def test_the_mass_scale_is_an_exact_power_of_two_on_any_backend():
    """The scale is built from its bits: a rounded 2**e (a float pow on an accelerator) made the
    smallest normal 0 and gave NaN for windows of it."""
    from jaxpool._stochastic import _power_of_two

    exponents = np.arange(-130, 131)
    expected = np.ldexp(np.float32(1), np.clip(exponents, -126, 127)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(_power_of_two(jnp.asarray(exponents))), expected)
    tiny = np.finfo(np.float32).tiny
    x = jnp.full((1, 2, 2, 1), tiny, jnp.float32)
    y = F.stochastic_pool(x, deterministic=True)[0, 0, 0, 0]
    assert 0 <= y <= tiny, y  # tiny, or 0 where p * tiny (subnormal) is flushed to zero


def test_traced_positive_scalars_are_accepted_and_legacy_keys_too():
    # tau and eps may be traced (a value jit cannot check); concrete ones are checked (above)
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 2))
    tdgs = jax.jit(lambda x, tau, eps: F.tdgs_pool(x, 1.0, key=jax.random.key(1), tau=tau, eps=eps))
    np.testing.assert_array_equal(
        tdgs(x, 0.5, 0.1), F.tdgs_pool(x, 1.0, key=jax.random.key(1), tau=0.5, eps=0.1)
    )
    lp = jax.jit(lambda x, eps: F.lp_pool(x, 3.0, eps=eps))
    np.testing.assert_allclose(lp(x, 1e-3), F.lp_pool(x, 3.0, eps=1e-3), rtol=1e-6)
    legacy = jax.random.PRNGKey(3)  # raw uint32 keys are still keys
    np.testing.assert_array_equal(
        F.stochastic_pool(x, key=legacy), F.stochastic_pool(x, key=jax.random.wrap_key_data(legacy))
    )


@pytest.mark.parametrize("mode", ["l1", "softmax"])
def test_stochastic_zero_and_negative_windows(mode):
    zeros = jnp.zeros((2, 2, 1))
    negative = -jnp.array([[1.0, 2.0], [3.0, 4.0]])[..., None]
    det_zero = F.stochastic_pool(zeros, deterministic=True, mode=mode)
    np.testing.assert_array_equal(det_zero, 0.0)
    np.testing.assert_array_equal(F.stochastic_pool(zeros, key=jax.random.key(1), mode=mode), 0.0)
    det_neg = F.stochastic_pool(negative, deterministic=True, mode=mode)[0, 0, 0]
    if mode == "l1":  # no positive mass: plain mean
        np.testing.assert_allclose(det_neg, -2.5)
    else:
        p = np.exp([-1.0, -2, -3, -4]) / np.exp([-1.0, -2, -3, -4]).sum()
        np.testing.assert_allclose(det_neg, (p * [-1, -2, -3, -4]).sum(), rtol=1e-6)
    keys = jax.random.split(jax.random.key(2), 400)
    samples = jax.vmap(lambda k: F.stochastic_pool(negative, key=k, mode=mode))(keys)
    assert set(np.unique(samples).tolist()) <= {-1.0, -2.0, -3.0, -4.0}
    # Uniform fallback (l1) reaches every element.
    if mode == "l1":
        assert set(np.unique(samples).tolist()) == {-1.0, -2.0, -3.0, -4.0}
    for x in (zeros, negative):
        for det in (True, False):
            g = jax.grad(
                lambda v, det=det: F.stochastic_pool(
                    v, key=jax.random.key(3), deterministic=det, mode=mode
                ).sum()
            )(x)
            assert np.isfinite(g).all()


def test_tdgs_deterministic_limits():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    cold = F.tdgs_pool(x, -jnp.ones(()), deterministic=True, eps=1e-4)
    np.testing.assert_allclose(cold, F.max_pool(x), atol=1e-4)
    hot = F.tdgs_pool(x, 1e5 * jnp.ones(()), deterministic=True)
    np.testing.assert_allclose(hot, F.avg_pool(x), atol=1e-4)


def test_s3_official_test_mode_known_value():
    # stride-1 2x2 max of 1..16 (4x4) is [[6,7,8],[10,11,12],[14,15,16]]; average pool window 2,
    # stride 2, padding 1 on each side (not counted): first 2x2 outputs.
    y = F.s3_pool(GRID_1_16, deterministic=True, test_mode="official")[..., 0]
    np.testing.assert_allclose(y, [[6.0, 7.5], [12.0, 13.5]])


def test_s3_expectation_known_value():
    # The max map above is M[r, c] = 4r + c + 6.  Grid 4 holds one block with n = 3 max-map rows
    # and m = 2 draws: the smaller drawn row is 0 w.p. 2/3 and 1 w.p. 1/3 (mean 1/3), the larger
    # is 1 or 2 w.p. 1/3, 2/3 (mean 5/3); columns alike.  M is linear: E = 4 E[r] + E[c] + 6.
    y = F.s3_pool(GRID_1_16, deterministic=True)[..., 0]
    mean_rank = np.array([1 / 3, 5 / 3])
    expected = 4 * mean_rank[:, None] + mean_rank[None, :] + 6
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def _official_s3_test_mode(x, stride):
    """NumPy: average pool (window = stride = s, s // 2 padding before, not counted) of the
    stride-1 max map, first H // s x W // s outputs."""
    x = np.asarray(x, np.float64)
    (sh, sw), (h, w) = stride, x.shape[1:3]
    m = np.lib.stride_tricks.sliding_window_view(x, (sh, sw), axis=(1, 2)).max(axis=(-2, -1))
    out = np.zeros((x.shape[0], h // sh, w // sw, x.shape[-1]))
    for i in range(h // sh):
        for j in range(w // sw):
            r0, c0 = i * sh - sh // 2, j * sw - sw // 2
            rows = slice(max(r0, 0), min(r0 + sh, m.shape[1]))
            cols = slice(max(c0, 0), min(c0 + sw, m.shape[2]))
            out[:, i, j] = m[:, rows, cols].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize(
    ("shape", "stride"), [((7, 10), (2, 2)), ((9, 5), (3, 2)), ((6, 6), (2, 2))]
)
def test_s3_official_test_mode_is_the_padded_average(shape, stride):
    x = jax.random.normal(jax.random.key(0), (2, *shape, 3))
    y = F.s3_pool(x, stride, (6, 4), deterministic=True, test_mode="official")
    np.testing.assert_allclose(y, _official_s3_test_mode(x, stride), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("size", "stride", "grid"), [(4, 2, 4), (7, 2, 4), (14, 2, 4), (9, 3, 6), (8, 2, 8), (11, 2, 6)]
)
def test_s3_expectation_weights_are_the_exact_row_distribution(size, stride, grid):
    # Independent of the binomial formula: every subset of m of a block's n max-map rows is equally
    # likely (the scores are i.i.d. uniforms), so enumerate the subsets and count ranks.
    weights = _s3.expectation_weights(size, stride, grid)
    assert weights.shape == (size // stride, size - stride + 1)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)
    exact = np.zeros_like(weights)
    i = 0
    for start in range(0, size, grid):
        block_len = min(grid, size - start)
        m, n = block_len // stride, min(block_len, size - stride + 1 - start)
        subsets = list(itertools.combinations(range(start, start + n), m))
        for k in range(m):
            for subset in subsets:
                exact[i + k, subset[k]] += 1 / len(subsets)
        i += m
    np.testing.assert_allclose(weights, exact, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("shape", "stride", "grid"),
    [((7, 10), (2, 2), (4, 4)), ((9, 11), (3, 2), (6, 4)), ((6, 13), (2, 3), (6, 6))],
)
def test_s3_expectation_matches_the_mean_of_training_draws(shape, stride, grid):
    x = jax.random.normal(jax.random.key(0), (2, *shape, 2))
    expected = np.asarray(F.s3_pool(x, stride, grid, deterministic=True), np.float64)
    for per_example in (False, True):
        det = F.s3_pool(x, stride, grid, deterministic=True, per_example=per_example)
        np.testing.assert_array_equal(det, expected.astype(np.float32))
    keys = jax.random.split(jax.random.key(1), 4000)
    draws = np.asarray(jax.vmap(lambda k: F.s3_pool(x, stride, grid, key=k))(keys), np.float64)
    # Each output is a mean of 4000 i.i.d. draws: |mean - E| <= 5 standard errors fails by chance
    # with probability < 6e-7 per output (normal approximation), about 1e-4 over these outputs.
    std_error = draws.std(axis=0) / np.sqrt(len(keys))
    assert (np.abs(draws.mean(axis=0) - expected) <= 5 * std_error + 1e-6).all()
    official = np.asarray(F.s3_pool(x, stride, grid, deterministic=True, test_mode="official"))
    assert (np.abs(draws.mean(axis=0) - official) > 5 * std_error + 1e-6).any()


# ----------------------------------------------------------------------------- invariants
def _window_bounds(x, window, strides, padding):
    wins, (ho, wo) = ref_windows(np.asarray(x, np.float32), window, strides, padding)
    lo = np.zeros((x.shape[0], ho, wo, x.shape[-1]), np.float32)
    hi = np.zeros_like(lo)
    for (i, j), w in wins.items():
        lo[:, i, j], hi[:, i, j] = w.min(1), w.max(1)
    return wins, lo, hi


def _convex_outputs(x, window, strides, padding, key):
    c = x.shape[-1]
    kh, kw = window
    shape_only = np.zeros(x.shape, np.float32)  # x may be traced; only the bounds' shape is used
    _, lo, _ = _window_bounds(shape_only, window, _pair_strides(window, strides), padding)
    ho, wo = lo.shape[1:3]
    k1, k2, k3 = jax.random.split(key, 3)
    geo = (window, strides, padding)
    return {
        "max": F.max_pool(x, *geo),
        "avg": F.avg_pool(x, *geo),
        "mixed": F.mixed_pool(x, jax.random.normal(k1, (c,)), *geo),
        "gated_channel": F.gated_pool(
            x, jax.random.normal(k1, (kh, kw, c)), jax.random.normal(k2, (c,)), *geo
        ),
        "gated_region": F.gated_pool(
            x, jax.random.normal(k1, (ho, wo, kh, kw, c)), jnp.zeros((ho, wo, c)), *geo
        ),
        "stochastic_det": F.stochastic_pool(x, *geo, deterministic=True),
        "stochastic_softmax_det": F.stochastic_pool(x, *geo, deterministic=True, mode="softmax"),
        "tdgs_det": F.tdgs_pool(x, jax.random.uniform(k3, (ho, wo, c)), *geo, deterministic=True),
    }


def _hard_outputs(x, window, strides, padding, key):
    c = x.shape[-1]
    geo = (window, strides, padding)
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "stochastic": F.stochastic_pool(x, *geo, key=k1),
        "stochastic_softmax": F.stochastic_pool(x, *geo, key=k2, mode="softmax"),
        "tdgs": F.tdgs_pool(x, jnp.full((c,), 0.7), *geo, key=k3),
    }


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("window", "strides", "padding"), GEOMETRIES)
def test_outputs_within_window_and_hard_samples_exact(seed, window, strides, padding):
    key = jax.random.key(seed)
    # Mixed signs, zeros and ties, odd sizes.
    x = jnp.round(jax.random.normal(key, (2, 7, 5, 2)) * 2) / 2
    strides_pair = _pair_strides(window, strides)
    wins, lo, hi = _window_bounds(x, window, strides_pair, padding)
    # compiled whole (the geometry static): op by op, each pooler's operations compile
    convex_outputs = jax.jit(_convex_outputs, static_argnums=(1, 2, 3))
    hard_outputs = jax.jit(_hard_outputs, static_argnums=(1, 2, 3))
    for name, y in convex_outputs(x, window, strides, padding, key).items():
        y = np.asarray(y)
        assert y.shape == lo.shape, name
        assert (y >= lo - 1e-5).all() and (y <= hi + 1e-5).all(), name
    for name, y in hard_outputs(x, window, strides, padding, key).items():
        y = np.asarray(y)
        for (i, j), w in wins.items():
            # Exactly one of the real (non-padding) elements of its own window.
            hit = (w == y[:, i, j][:, None, :]).any(axis=1)
            assert hit.all(), (name, i, j)


def test_padding_never_sampled_or_max():
    # All-negative input: a padded zero would beat every real element if it were counted.
    x = -1.0 - jax.random.uniform(jax.random.key(0), (3, 5, 5, 2))
    lo_hi = _window_bounds(x, (2, 2), (2, 2), "SAME")
    _, lo, hi = lo_hi
    for y in [
        F.max_pool(x, 2, None, "SAME"),
        F.stochastic_pool(x, 2, None, "SAME", key=jax.random.key(1)),
        F.stochastic_pool(x, 2, None, "SAME", key=jax.random.key(1), mode="softmax"),
        F.tdgs_pool(x, jnp.ones(()), 2, None, "SAME", key=jax.random.key(2)),
        F.avg_pool(x, 2, None, "SAME"),
        F.stochastic_pool(x, 2, None, "SAME", deterministic=True),
    ]:
        assert (np.asarray(y) <= hi + 1e-6).all() and (np.asarray(y) >= lo - 1e-6).all()


def test_s3_training_outputs_come_from_stride1_max_map():
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, 3))
    max_map = np.asarray(nn.max_pool(x, (2, 2), (1, 1), "VALID"))
    for per_example in (False, True):
        y = np.asarray(F.s3_pool(x, key=jax.random.key(1), per_example=per_example))
        assert y.shape == (2, 4, 3, 3)
        for n in range(2):
            for c in range(3):
                assert np.isin(y[n, ..., c], max_map[n, ..., c]).all()


@pytest.mark.parametrize(("size", "stride", "grid"), [(7, 2, 4), (14, 2, 4), (32, 2, 8), (9, 3, 6)])
def test_s3_row_sets_sorted_distinct_one_set_per_block(size, stride, grid):
    keys = jax.random.split(jax.random.key(0), 50)
    rows = np.asarray(jax.vmap(lambda k: _s3.sample_indices(k, size, stride, grid))(keys))
    assert rows.shape == (50, size // stride)
    assert (np.diff(rows, axis=1) > 0).all()  # sorted and distinct
    assert (rows < size - stride + 1).all()  # rows that exist in the max map
    for b in range(math.ceil(size / grid)):
        n_block = ((rows >= b * grid) & (rows < (b + 1) * grid)).sum(axis=1)
        assert (n_block == min(grid, size - b * grid) // stride).all()
    assert len({tuple(r) for r in rows}) > 1  # random, not fixed


@pytest.mark.parametrize("size", [7, 14, 28, 32, 5])
def test_s3_shapes_match_in_both_modes(size):
    x = jnp.ones((1, size, size + 1, 2))
    train = F.s3_pool(x, key=jax.random.key(0))
    det = F.s3_pool(x, deterministic=True)
    assert train.shape == det.shape == (1, size // 2, (size + 1) // 2, 2)


# ----------------------------------------------------------------------------- randomness
def _frequencies(samples: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.array([(samples == v).mean() for v in values])


def _assert_frequencies(freq, probs, n):
    # Each count is Binomial(n, p): standard error sqrt(p (1 - p) / n).  A 5-sigma band makes a
    # false failure (fixed keys anyway) essentially impossible while a wrong distribution (an
    # error of a few percent) still fails at n = 20000 (sigma <= 0.0036).
    tol = 5 * np.sqrt(probs * (1 - probs) / n) + 1e-3
    np.testing.assert_array_less(np.abs(freq - probs), tol)


N_DRAWS = 20000
WINDOW = jnp.array([[0.5, 1.0], [2.0, -1.0]])[..., None]  # one 2x2 window, one channel
WINDOW_VALUES = np.array([0.5, 1.0, 2.0, -1.0])


def _draws(fn):
    keys = jax.random.split(jax.random.key(1234), N_DRAWS)
    return np.asarray(jax.jit(jax.vmap(fn))(keys)).reshape(-1)


# Both samplers: the reference draws with jax.random, the fast path with jaxpool._fast_rng (other
# numbers, the same distribution).
IMPLEMENTATIONS = pytest.mark.parametrize("implementation", ["reference", "fast"])


@IMPLEMENTATIONS
def test_stochastic_l1_frequencies(implementation):
    samples = _draws(lambda k: F.stochastic_pool(WINDOW, key=k, implementation=implementation))
    a = np.maximum(WINDOW_VALUES, 0)
    _assert_frequencies(_frequencies(samples, WINDOW_VALUES), a / a.sum(), N_DRAWS)


@IMPLEMENTATIONS
def test_stochastic_softmax_frequencies(implementation):
    samples = _draws(
        lambda k: F.stochastic_pool(WINDOW, key=k, mode="softmax", implementation=implementation)
    )
    p = np.exp(WINDOW_VALUES) / np.exp(WINDOW_VALUES).sum()
    _assert_frequencies(_frequencies(samples, WINDOW_VALUES), p, N_DRAWS)


@IMPLEMENTATIONS
@pytest.mark.parametrize("temperature", [0.3, 2.0])
def test_tdgs_frequencies_match_softmax_over_temperature(temperature, implementation):
    temp = jnp.full((1, 1, 1), temperature)
    samples = _draws(
        lambda k: F.tdgs_pool(WINDOW, temp, key=k, eps=0.1, implementation=implementation)
    )
    logits = WINDOW_VALUES / (temperature + 0.1)
    p = np.exp(logits) / np.exp(logits).sum()
    _assert_frequencies(_frequencies(samples, WINDOW_VALUES), p, N_DRAWS)


@IMPLEMENTATIONS
def test_gumbel_softmax_frequencies_and_straight_through(implementation):
    logits = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))
    keys = jax.random.split(jax.random.key(7), N_DRAWS)
    sample = functools.partial(F.gumbel_softmax, implementation=implementation)
    hard = jax.jit(jax.vmap(lambda k: sample(k, logits, hard=True)))(keys)
    assert set(np.unique(hard).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(hard.sum(-1), 1.0)
    _assert_frequencies(np.asarray(hard.mean(0)), np.array([0.1, 0.2, 0.3, 0.4]), N_DRAWS)
    soft = sample(keys[0], logits, tau=0.5)
    np.testing.assert_allclose(soft.sum(), 1.0, rtol=1e-6)
    # Straight-through: the hard sample's gradient is the soft sample's.
    c = jnp.array([1.0, -2.0, 3.0, 0.5])
    g_hard = jax.grad(lambda lg: (c * sample(keys[1], lg, 0.7, hard=True)).sum())(logits)
    g_soft = jax.grad(lambda lg: (c * sample(keys[1], lg, 0.7)).sum())(logits)
    np.testing.assert_allclose(g_hard, g_soft, rtol=1e-6)
    # -inf logits are never drawn; the category axis can be any axis.
    masked = jnp.array([[0.0, 1.0], [-jnp.inf, 2.0]])
    y = jax.vmap(lambda k: sample(k, masked, hard=True, axis=0))(keys[:500])
    np.testing.assert_array_equal(y[:, 1, 0], 0.0)
    np.testing.assert_array_equal(y.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, k: F.stochastic_pool(x, key=k),
        lambda x, k: F.tdgs_pool(x, jnp.ones(()), key=k),
        lambda x, k: F.s3_pool(x, key=k),
    ],
    ids=["stochastic", "tdgs", "s3"],
)
def test_same_key_same_sample_different_keys_differ(fn):
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    a, b = fn(x, jax.random.key(1)), fn(x, jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    c = fn(x, jax.random.key(2))
    assert not np.array_equal(a, c)


VMAP_X = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
VMAP_TEMPERATURE = jnp.full((3,), 0.5)
KEYED = {  # (x, temperature, key) -> sample; x and temperature are differentiable.
    "stochastic": lambda x, t, k: F.stochastic_pool(x, key=k),
    "stochastic_softmax_same": lambda x, t, k: F.stochastic_pool(
        x, 3, 2, "SAME", key=k, mode="softmax"
    ),
    "tdgs": lambda x, t, k: F.tdgs_pool(x, t, key=k, tau=0.7),
    "tdgs_same": lambda x, t, k: F.tdgs_pool(x, t, 3, 2, "SAME", key=k),
    "gumbel_softmax": lambda x, t, k: F.gumbel_softmax(k, x / t, hard=True),
    "s3": lambda x, t, k: F.s3_pool(x, key=k),
    "s3_per_example": lambda x, t, k: F.s3_pool(x, key=k, per_example=True),
}


@pytest.mark.parametrize("name", list(KEYED))
def test_vmap_over_keys_equals_a_loop_of_unbatched_calls(name):
    fn = functools.partial(KEYED[name], VMAP_X, VMAP_TEMPERATURE)
    keys = jax.random.split(jax.random.key(11), 4)
    one_key = jax.jit(fn)  # one program for the loop: op by op, each operation compiles
    loop = np.stack([one_key(k) for k in keys])
    assert len({row.tobytes() for row in loop}) > 1  # the keys do make different samples
    np.testing.assert_array_equal(jax.vmap(fn)(keys), loop)
    np.testing.assert_array_equal(jax.jit(jax.vmap(fn))(keys), loop)


@pytest.mark.parametrize("name", ["stochastic", "tdgs", "tdgs_same", "gumbel_softmax"])
def test_vmap_of_grad_over_keys_equals_a_loop(name):
    def loss(x, t, k):
        y = KEYED[name](x, t, k)
        return (y * jnp.cos(y)).sum()  # a nonlinear loss: the cotangent depends on the sample

    grad = jax.grad(loss, argnums=(0, 1))
    keys = jax.random.split(jax.random.key(12), 3)
    one_key = jax.jit(grad)  # one program for the loop: op by op, each operation compiles
    loop = [one_key(VMAP_X, VMAP_TEMPERATURE, k) for k in keys]
    batched = jax.jit(jax.vmap(grad, in_axes=(None, None, 0)))(VMAP_X, VMAP_TEMPERATURE, keys)
    for i, row in enumerate(loop):
        for got, want in zip(batched, row, strict=True):
            assert np.isfinite(want).all()
            # a vmapped and an unbatched program may round float32 differently: a rounding-level
            # tolerance
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
    # And the reverse nesting: the gradient of a loss summed over a vmap over keys.
    total = jax.grad(lambda x: jax.vmap(lambda k: loss(x, VMAP_TEMPERATURE, k))(keys).sum())(VMAP_X)
    np.testing.assert_allclose(total, sum(g[0] for g in loop), rtol=1e-5, atol=1e-5)


def test_stochastic_training_gradient_reaches_sampled_element_only():
    x = jax.random.uniform(jax.random.key(0), (1, 4, 4, 2)) + 0.1
    key = jax.random.key(5)
    y = F.stochastic_pool(x, key=key)
    g = jax.grad(lambda v: F.stochastic_pool(v, key=key).sum())(x)
    # One unit of gradient per window, on the element whose value was output.
    np.testing.assert_array_equal(g.sum(), y.size)
    assert set(np.unique(g).tolist()) == {0.0, 1.0}
    np.testing.assert_allclose(jnp.where(g > 0, x, 0).sum(), y.sum(), rtol=1e-6)


def test_tdgs_gradient_reaches_temperature_in_training():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 2))
    temp = jnp.ones((2, 2, 2))
    g = jax.grad(lambda t: F.tdgs_pool(x, t, key=jax.random.key(1)).sum())(temp)
    assert np.isfinite(g).all() and np.abs(g).sum() > 0


def test_gradients_match_finite_differences():
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 2))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 2))
    leaves = jax.random.normal(jax.random.key(2), (2, 3, 3, 2))
    geo = ((3, 3), (2, 2), "SAME")
    fns = {
        "avg": lambda v: F.avg_pool(v, *geo),
        "mixed": lambda v: F.mixed_pool(v, jnp.array([0.3, -0.2]), *geo),
        "gated": lambda v: F.gated_pool(v, kernel, jnp.zeros(2), *geo),
        "tree": lambda v: F.tree_pool(v, leaves, kernel, *geo),
        "stochastic_det": lambda v: F.stochastic_pool(v, *geo, deterministic=True, mode="softmax"),
        "tdgs_det": lambda v: F.tdgs_pool(v, jnp.ones(()), *geo, deterministic=True),
    }
    for name, fn in fns.items():
        jax.test_util.check_grads(fn, (x,), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-2)
        assert np.isfinite(jax.grad(lambda v, fn=fn: fn(v).sum())(x)).all(), name


# ----------------------------------------------------------------------------- windows
@pytest.mark.parametrize("shape", [(2, 6, 6, 3), (1, 7, 5, 2)])
def test_fast_and_general_windows_agree(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    spec = _windows.window_spec(shape[1:3], 2, None, "VALID")
    assert spec.is_fast

    def stacked(v, general):
        return jnp.stack(_windows.window_elements(v, spec, force_general=general), axis=3)

    fast, general = stacked(x, False), stacked(x, True)
    np.testing.assert_array_equal(fast, general)
    np.testing.assert_array_equal(fast[0, 0, 0, :, 0], x[0, :2, :2, 0].reshape(-1))  # row-major
    cot = jax.random.normal(jax.random.key(1), fast.shape)
    g_fast = jax.grad(lambda v: (stacked(v, False) * cot).sum())(x)
    g_gen = jax.grad(lambda v: (stacked(v, True) * cot).sum())(x)
    np.testing.assert_array_equal(g_fast, g_gen)


def test_window_view_layout_and_where_it_applies():
    x = jnp.arange(2 * 7 * 6 * 3, dtype=jnp.float32).reshape(2, 7, 6, 3)
    view = _windows.window_view(x, _windows.window_spec((7, 6), (3, 2), None, "VALID"))
    assert view.shape == (2, 2, 3, 3, 2, 3)  # the last row of 7 is cropped, as VALID drops it
    # element (a, b) of window (i, j) is x[3i + a, 2j + b]
    np.testing.assert_array_equal(view[1, 1, 2, 0, 1, :], x[1, 5, 1, :])
    for window, strides, padding in [(2, 1, "VALID"), (2, None, "SAME"), (3, 2, "VALID")]:
        spec = _windows.window_spec((7, 6), window, strides, padding)
        assert _windows.window_view(x, spec) is None, (window, strides, padding)


X64_SCRIPT = """
import json
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import jaxpool

x = jax.random.normal(jax.random.key(0), (2, 5, 5, 2), jnp.float32)
dtypes = {}
for name in jaxpool.available():
    for geometry in ({}, {"window_shape": 3, "strides": 2, "padding": "SAME"}):
        if name in ("s3", "fractional"):  # no window fields
            geometry = {"ratio": 1.5} if geometry and name == "fractional" else {}
        elif name == "blur":  # no padding field
            geometry = {k: v for k, v in geometry.items() if k != "padding"}
        module = jaxpool.create(name, **geometry)
        keys = {"params": jax.random.key(1), "pooling": jax.random.key(2)}
        # Traced, not run: dtypes (and the errors of mixed float widths) are fixed by tracing.
        variables = jax.eval_shape(lambda: module.init(keys, x, deterministic=False))
        for deterministic in (True, False):
            def loss(v, x):
                y = module.apply(v, x, deterministic=deterministic, rngs={"pooling": keys["pooling"]})
                return y.sum(), y
            grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
            grads, y = jax.eval_shape(grad, variables, x)
            leaves = jax.tree_util.tree_leaves((y, grads))
            dtypes[f"{name}-{len(geometry)}-{deterministic}"] = sorted({str(a.dtype) for a in leaves})
print(json.dumps(dtypes))
"""


def test_float32_in_float32_out_under_jax_enable_x64():
    # TDGS's strided path and deterministic mode raised: float64 constants met float32 values.
    dtypes = json.loads(run_on_cpu_devices(X64_SCRIPT, devices=1))
    assert len(dtypes) == len(jaxpool.available()) * 2 * 2 - 2  # s3 has one geometry
    assert all(d == ["float32"] for d in dtypes.values()), dtypes


# ----------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_dtypes_preserved(dtype):
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 2)).astype(dtype)
    key = jax.random.key(1)
    outs = [
        F.max_pool(x),
        F.avg_pool(x),
        F.mixed_pool(x, jnp.zeros(2)),
        F.gated_pool(x, jnp.zeros((2, 2, 2)), jnp.zeros(2)),
        F.tree_pool(x, jnp.ones((2, 2, 2, 2)) / 4, jnp.zeros((2, 2, 2))),
        F.stochastic_pool(x, key=key),
        F.s3_pool(x, key=key),
        F.tdgs_pool(x, jnp.ones(()), key=key),
    ]
    for y in outs:
        assert y.dtype == dtype
        chex.assert_shape(y, (1, 2, 2, 2))
    hard = np.asarray(F.tdgs_pool(x, jnp.ones(()), key=key), np.float32)
    assert np.isin(hard, np.asarray(x, np.float32)).all()


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: F.max_pool(jnp.ones((4, 4))), r"rank 4 .*got rank 2 with shape \(4, 4\)"),
        (lambda: F.max_pool(jnp.ones((1, 1, 4, 4, 1))), r"shape \(1, 1, 4, 4, 1\)"),
        (lambda: F.max_pool(jnp.ones((1, 3, 3, 1)), 4), r"window_shape height 4 .* input height 3"),
        (lambda: F.max_pool(jnp.ones((1, 4, 4, 1)), 0), r"window_shape must be positive; got 0"),
        (lambda: F.max_pool(jnp.ones((1, 4, 4, 1)), 2, -1), r"strides must be positive; got -1"),
        (lambda: F.max_pool(jnp.ones((1, 4, 4, 1)), 2.5), r"window_shape must be .*2\.5"),
        (lambda: F.avg_pool(jnp.ones((1, 4, 4, 1)), padding="FULL"), r"padding must be .*'FULL'"),
        (lambda: F.max_pool(jnp.ones((1, 4, 4, 1), jnp.int32)), r"floating dtype .*int32"),
        (lambda: F.mixed_pool(jnp.ones((1, 4, 4, 3)), jnp.ones(2)), r"alpha must have shape"),
        (
            lambda: F.gated_pool(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3))),
            r"gate_kernel .*\(3, 3, 3\)",
        ),
        (
            lambda: F.gated_pool(jnp.ones((1, 4, 4, 3)), jnp.ones((2, 2, 3)), jnp.ones(())),
            r"gate_bias must have shape \(3,\)",
        ),
        (
            lambda: F.tree_pool(jnp.ones((1, 4, 4, 3)), jnp.ones((2, 2, 3)), jnp.ones((2, 2, 3))),
            r"leaf_kernels must have shape",
        ),
        (lambda: F.stochastic_pool(jnp.ones((1, 4, 4, 1))), r"stochastic_pool .*key"),
        (
            lambda: F.stochastic_pool(jnp.ones((1, 4, 4, 1)), deterministic=True, mode="l2"),
            r"mode .*'l2'",
        ),
        (lambda: F.tdgs_pool(jnp.ones((1, 4, 4, 1)), jnp.ones(())), r"tdgs_pool .*key"),
        (
            lambda: F.tdgs_pool(jnp.ones((1, 6, 6, 1)), jnp.ones((2, 2, 1)), deterministic=True),
            r"temperature must have shape \(Ho, Wo, C\) = \(3, 3, 1\)",
        ),
        (
            lambda: F.tdgs_pool(jnp.ones((1, 4, 4, 1)), jnp.ones(()), deterministic=True, eps=0.0),
            r"eps must be finite and > 0",
        ),
        (
            lambda: F.tdgs_pool(jnp.ones((1, 4, 4, 1)), 1.0, deterministic=True, eps=1e-40),
            r"eps must be at least 1.175e-38 \(it keeps the temperature positive\): a smaller",
        ),
        (lambda: F.s3_pool(jnp.ones((1, 4, 4, 1))), r"s3_pool .*key"),
        (
            lambda: F.s3_pool(jnp.ones((1, 8, 8, 1)), 2, 3, deterministic=True),
            r"grid_size must be a multiple of stride",
        ),
        (lambda: F.s3_pool(jnp.ones((1, 1, 8, 1)), deterministic=True), r"H >= stride"),
        (
            lambda: F.s3_pool(jnp.ones((1, 4, 4, 1)), deterministic=True, test_mode="avg"),
            r"test_mode must be one of 'expectation', 'official'; got 'avg'",
        ),
        (lambda: F.gumbel_softmax(jax.random.key(0), jnp.ones(3), tau=0.0), r"tau must be finite"),
        (lambda: F.gumbel_softmax(jax.random.key(0), jnp.ones(3), tau=np.inf), r"finite and > 0"),
        # NumPy scalars and concrete arrays are checked too (they passed as NaN samples).
        (lambda: F.gumbel_softmax(jax.random.key(0), jnp.ones(3), tau=np.float32(0)), r"tau"),
        (lambda: F.gumbel_softmax(jax.random.key(0), jnp.ones(3), tau=jnp.array(-1.0)), r"tau"),
        (
            lambda: F.tdgs_pool(
                jnp.ones((1, 4, 4, 1)), 1.0, key=jax.random.key(0), tau=np.float32(0)
            ),
            r"tau must be finite and > 0",
        ),
        (lambda: F.gumbel_softmax(jax.random.key(0), jnp.ones(3), tau="hot"), r"a number > 0"),
        (lambda: F.gumbel_softmax(jax.random.key(0), jnp.ones(3), tau="2"), r"a number > 0"),
        (lambda: F.gumbel_softmax(jax.random.key(0), jnp.ones(3), tau=[1.0, 0.5]), r"scalar"),
        # Values float32 cannot hold: 0 (a NaN sample) or inf there; a bool is not a number.
        (lambda: F.gumbel_softmax(jax.random.key(0), jnp.ones(3), tau=1e-45), r"at least 1.175e"),
        (lambda: F.gumbel_softmax(jax.random.key(0), jnp.ones(3), tau=1e39), r"at most 3.403e"),
        (lambda: F.gumbel_softmax(jax.random.key(0), jnp.ones(3), tau=True), r"a number > 0"),
        (lambda: F.gumbel_softmax(None, jnp.ones(3)), r"gumbel_softmax needs a PRNG key"),
        (lambda: F.gumbel_softmax(0, jnp.ones(3)), r"gumbel_softmax: key must be a PRNG key"),
        (lambda: F.stochastic_pool(jnp.ones((4, 4, 1)), key=0), r"stochastic_pool: key must be"),
        (lambda: F.tdgs_pool(jnp.ones((4, 4, 1)), 1.0, key=1.5), r"tdgs_pool: key must be"),
        (lambda: F.s3_pool(jnp.ones((4, 4, 1)), key="k"), r"s3_pool: key must be a PRNG key"),
        (lambda: F.fractional_max_pool(jnp.ones((4, 4, 1)), key=[0, 1]), r"fractional.*key must"),
        *(
            (
                functools.partial(call, implementation="cudnn"),
                r"implementation must be one of 'auto', 'reference', 'fast'; got 'cudnn'",
            )
            for call in (
                lambda **kw: F.max_pool(jnp.ones((1, 4, 4, 1)), **kw),
                lambda **kw: F.avg_pool(jnp.ones((1, 4, 4, 1)), **kw),
                lambda **kw: F.mixed_pool(jnp.ones((1, 4, 4, 1)), 0.0, **kw),
                lambda **kw: F.gated_pool(jnp.ones((1, 4, 4, 1)), jnp.ones((2, 2)), **kw),
                lambda **kw: F.tree_pool(
                    jnp.ones((1, 4, 4, 1)), jnp.ones((2, 2, 2)), jnp.ones((2, 2)), **kw
                ),
                lambda **kw: F.stochastic_pool(jnp.ones((1, 4, 4, 1)), deterministic=True, **kw),
                lambda **kw: F.s3_pool(jnp.ones((1, 4, 4, 1)), deterministic=True, **kw),
                lambda **kw: F.tdgs_pool(jnp.ones((1, 4, 4, 1)), 1.0, deterministic=True, **kw),
                lambda **kw: F.gumbel_softmax(jax.random.key(0), jnp.ones(3), **kw),
            )
        ),
        (
            lambda: F.gumbel_softmax(jax.random.key(0), jnp.arange(3)),
            r"logits must have a floating",
        ),
    ],
)
def test_bad_input_raises_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


_EXPLICIT_PADS = ((2, 2), (2, 2))  # flax's explicit form: not one of the two documented values


@pytest.mark.parametrize(
    "call",
    [
        lambda x, k: F.max_pool(x, 2, None, _EXPLICIT_PADS),
        lambda x, k: F.avg_pool(x, 2, None, _EXPLICIT_PADS),
        lambda x, k: F.mixed_pool(x, jnp.zeros(()), 2, None, _EXPLICIT_PADS),
        lambda x, k: F.gated_pool(x, jnp.ones((2, 2)), None, 2, None, _EXPLICIT_PADS),
        lambda x, k: F.tree_pool(x, jnp.ones((2, 2, 2)), jnp.ones((2, 2)), 2, None, _EXPLICIT_PADS),
        lambda x, k: F.stochastic_pool(x, 2, None, _EXPLICIT_PADS, key=k),
        lambda x, k: F.stochastic_pool(x, 2, None, _EXPLICIT_PADS, deterministic=True),
        lambda x, k: F.tdgs_pool(x, jnp.ones(()), 2, None, _EXPLICIT_PADS, key=k),
        lambda x, k: F.tdgs_pool(x, jnp.ones(()), 2, None, _EXPLICIT_PADS, deterministic=True),
    ],
)
def test_explicit_padding_pairs_are_rejected(call):
    # Accepted silently, pads wider than the window made windows of padding only (NaN, -inf).
    with pytest.raises(ValueError, match=r"padding must be 'VALID' or 'SAME'; got \(\(2, 2\)"):
        call(jnp.ones((1, 3, 3, 1)), jax.random.key(0))


# ----------------------------------------------------------------------------- hypothesis
_HYP_SHAPE = (2, 5, 5, 2)


@jax.jit
def _convex_same_3x3(x, params):
    geo = ((3, 3), (2, 2), "SAME")
    return jnp.stack(
        [
            F.max_pool(x, *geo),
            F.avg_pool(x, *geo),
            F.mixed_pool(x, params[0, 0, 0, 0], *geo),
            F.gated_pool(x, params[0, :3, :3, :], params[1, 0, 0, :], *geo),
            F.stochastic_pool(x, *geo, deterministic=True),
            F.stochastic_pool(x, *geo, key=jax.random.key(0)),
            F.tdgs_pool(x, params[2, :3, :3, :], *geo, deterministic=True),
            F.tdgs_pool(x, params[2, :3, :3, :], *geo, key=jax.random.key(1)),
        ]
    )


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    values=hnp.arrays(
        np.float32, _HYP_SHAPE, elements=st.floats(-100, 100, width=32, allow_subnormal=False)
    ),
    params=hnp.arrays(np.float32, (3, 5, 5, 2), elements=st.floats(-3, 3, width=32)),
)
def test_convex_poolers_stay_in_window_range_hypothesis(values, params):
    out = np.asarray(_convex_same_3x3(values, params))
    _, lo, hi = _window_bounds(values, (3, 3), (2, 2), "SAME")
    tol = 1e-4 * (1 + np.abs(values).max())
    assert (out >= lo - tol).all() and (out <= hi + tol).all()


def test_same_padding_allows_window_larger_than_input():
    x = jax.random.normal(jax.random.key(0), (1, 3, 2, 1))
    y = F.max_pool(x, 5, None, "SAME")
    chex.assert_shape(y, (1, 1, 1, 1))
    np.testing.assert_array_equal(y[0, 0, 0, 0], x.max())
    np.testing.assert_allclose(
        F.avg_pool(x, 5, None, "SAME")[0, 0, 0, 0], x.mean(), rtol=1e-6, atol=1e-6
    )
