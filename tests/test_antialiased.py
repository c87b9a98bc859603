"""MaxBlurPool against an independent float64 NumPy reference, and its shift-robustness claim."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpool

# Pascal's triangle rows, written out.
FILTERS = {1: [1], 2: [1, 1], 3: [1, 2, 1], 4: [1, 3, 3, 1], 5: [1, 4, 6, 4, 1]}


def ref_max_blur_pool(x, window=2, stride=2, filter_size=4, pad_mode="reflect"):
    """Dense max with loops, NumPy padding, then a 2-D convolution with the outer-product filter."""
    n, h, w, c = x.shape
    kh, kw = (window, window) if isinstance(window, int) else window
    dense = np.zeros((n, h - kh + 1, w - kw + 1, c))
    for i in range(h - kh + 1):
        for j in range(w - kw + 1):
            dense[:, i, j] = x[:, i : i + kh, j : j + kw].max(axis=(1, 2))
    taps = np.array(FILTERS[filter_size], float)
    filt = np.outer(taps, taps) / np.outer(taps, taps).sum()
    before, after = (filter_size - 1) // 2, filter_size - 1 - (filter_size - 1) // 2
    padded = np.pad(dense, ((0, 0), (before, after), (before, after), (0, 0)), mode=pad_mode)
    ho = (padded.shape[1] - filter_size) // stride + 1
    wo = (padded.shape[2] - filter_size) // stride + 1
    out = np.zeros((n, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            patch = padded[
                :, i * stride : i * stride + filter_size, j * stride : j * stride + filter_size
            ]
            out[:, i, j] = np.einsum("nabc,ab->nc", patch, filt)
    return out


@pytest.mark.parametrize(
    ("hw", "kwargs"),
    [
        ((8, 8), {}),
        ((7, 10), {}),  # odd and non-square: H // 2 rows
        ((9, 6), {"filter_size": 3}),
        ((6, 7), {"filter_size": 5, "pad_mode": "edge"}),
        ((6, 6), {"filter_size": 1}),
        ((7, 8), {"filter_size": 2, "pad_mode": "constant", "window_shape": (3, 2)}),
    ],
)
def test_matches_reference_values_and_gradients(hw, kwargs):
    x = np.random.default_rng(0).normal(size=(2, *hw, 3))
    y = jaxpool.max_blur_pool(jnp.asarray(x, jnp.float32), **kwargs)
    ref = ref_max_blur_pool(
        x, kwargs.get("window_shape", 2), 2, kwargs.get("filter_size", 4),
        {"edge": "edge", "constant": "constant"}.get(kwargs.get("pad_mode"), "reflect"),
    )  # fmt: skip
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    if kwargs == {}:
        assert y.shape == (2, hw[0] // 2, hw[1] // 2, 3)
    # The map is linear in x given which element is each max (random normals: no ties), so its
    # gradient against weights u is the reference's J^T u, read off by central differences.
    u = np.random.default_rng(1).normal(size=y.shape)
    grad = jax.grad(lambda v: (jaxpool.max_blur_pool(v, **kwargs) * u).sum())(
        jnp.asarray(x, jnp.float32)
    )
    eps = 1e-6
    expected = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[idx] = eps
        f = lambda v: (ref_max_blur_pool(v, **_ref_kwargs(kwargs)) * u).sum()
        expected[idx] = (f(x + d) - f(x - d)) / (2 * eps)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def _ref_kwargs(kwargs):
    return {
        "window": kwargs.get("window_shape", 2),
        "filter_size": kwargs.get("filter_size", 4),
        "pad_mode": kwargs.get("pad_mode", "reflect"),
    }


def test_binomial_filters():
    for size, taps in FILTERS.items():
        np.testing.assert_allclose(
            jaxpool.functional.binomial_filter(size), np.array(taps) / sum(taps)
        )


def test_one_pixel_shift_changes_the_output_less_than_max_pooling():
    """Zhang's example: stripes of period 4 along the width.  Max pooling (2, stride 2) maps the
    pattern and its one-pixel shift to different outputs ([0 1 0 1] vs all ones); the blurred max
    changes far less.  Interior positions only (the borders are padding)."""
    row = np.tile([0.0, 0.0, 1.0, 1.0], 6)  # length 24
    x = jnp.asarray(np.broadcast_to(row[None, :, None], (12, 24, 1))[None])
    shifted = jnp.roll(x, 1, axis=2)

    def change(pool):
        a, b = pool(x)[0, 2:-2, 2:-2], pool(shifted)[0, 2:-2, 2:-2]
        return float(jnp.abs(a - b).mean())

    max_change = change(jaxpool.max_pool)
    blur_change = change(jaxpool.max_blur_pool)
    assert max_change == pytest.approx(0.5)  # half the outputs flip between 0 and 1
    assert blur_change < 0.25 * max_change, (blur_change, max_change)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"filter_size": 8}, r"filter_size must be an int from 1 to 7; got 8"),
        ({"filter_size": 4.0}, r"filter_size must be an int from 1 to 7; got 4.0"),
        ({"filter_size": True}, r"filter_size must be an int from 1 to 7; got True"),
        ({"pad_mode": "wrap"}, r"pad_mode must be one of \('reflect', 'edge', 'constant'\)"),
        ({"window_shape": 5}, r"window_shape \(5, 5\) is larger than the input's \(4, 4\)"),
        ({"strides": 0}, r"strides must be positive"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxpool.max_blur_pool(jnp.ones((1, 4, 4, 1)), **kwargs)


def test_reflect_padding_on_a_too_small_map_names_the_fix():
    with pytest.raises(ValueError, match=r"reflect padding of 2 .* has 1 .*pad_mode='edge'"):
        jaxpool.max_blur_pool(jnp.ones((1, 2, 2, 1)))
    assert jaxpool.max_blur_pool(jnp.ones((1, 2, 2, 1)), pad_mode="edge").shape == (1, 1, 1, 1)
