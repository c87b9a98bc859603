"""Fractional max pooling: boundaries, values against a NumPy reference, sampling frequencies."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpool


def ref_fractional(x, rows, cols, overlapping=False):
    """Max over rows [a_{i-1}, a_i - 1] (or [a_{i-1}, a_i]) x the same for columns, with loops."""
    extra = 1 if overlapping else 0
    n, _, _, c = x.shape
    out = np.zeros((n, len(rows) - 1, len(cols) - 1, c))
    for i in range(len(rows) - 1):
        for j in range(len(cols) - 1):
            region = x[:, rows[i] : rows[i + 1] + extra, cols[j] : cols[j + 1] + extra]
            out[:, i, j] = region.max(axis=(1, 2))
    return out


def ref_fractional_gradient(x, u, rows, cols, overlapping=False):
    """The input gradient of ``sum(u * y)``: each output's weight ``u`` on its region's first
    maximal element in row-major order (``np.argmax``'s), summed where regions share elements."""
    expected = np.zeros(x.shape)
    extra = 1 if overlapping else 0
    for n, i, j, c in np.ndindex(u.shape):
        region = x[n, rows[i] : rows[i + 1] + extra, cols[j] : cols[j + 1] + extra, c]
        r, q = np.unravel_index(region.argmax(), region.shape)
        expected[n, rows[i] + r, cols[j] + q, c] += u[n, i, j, c]
    return expected


def fixed(size, out, overlapping=False):
    """a_i = floor(b (i + 1/2)) - floor(b / 2), b = total / out: the deterministic boundaries."""
    total = size - 1 if overlapping else size
    b = total / out
    return [math.floor(b * (i + 0.5)) - math.floor(b * 0.5) for i in range(out + 1)]


def test_fixed_boundaries_worked_by_hand():
    # size 5, ratio 1.5: out = floor(5 / 1.5) = 3, b = 5/3: floor(5/6, 15/6, 25/6, 35/6) - 0
    assert fixed(5, 3) == [0, 2, 4, 5]
    x = np.arange(25.0).reshape(1, 5, 5, 1)  # regions rows {0,1}, {2,3}, {4}: the maxima below
    y = jaxpool.fractional_max_pool(jnp.asarray(x), 1.5, deterministic=True)
    np.testing.assert_array_equal(y[0, :, :, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])


@pytest.mark.parametrize(
    ("hw", "ratio", "overlapping"), [((9, 7), math.sqrt(2), False), ((8, 11), (1.5, 1.7), True)]
)
def test_deterministic_matches_reference_values_and_gradients(hw, ratio, overlapping):
    x = np.random.default_rng(0).normal(size=(2, *hw, 3))
    rh, rw = ratio if isinstance(ratio, tuple) else (ratio, ratio)
    rows = fixed(hw[0], math.floor(hw[0] / rh), overlapping)
    cols = fixed(hw[1], math.floor(hw[1] / rw), overlapping)
    pool = lambda v: jaxpool.fractional_max_pool(
        v, ratio, deterministic=True, overlapping=overlapping
    )
    y = pool(jnp.asarray(x, jnp.float32))
    # Any backend: a max selects an element exactly, so y differs from the float64 reference by
    # x's float32 rounding only (6e-8 relative); the gradient sums at most a few weights u, with
    # no matmul and no transcendental function in either.
    np.testing.assert_allclose(y, ref_fractional(x, rows, cols, overlapping), rtol=1e-6)
    # gradient: each output's weight lands on its region's argmax (no ties in normal samples)
    u = np.random.default_rng(1).normal(size=y.shape)
    grad = jax.grad(lambda v: (pool(v) * u).sum())(jnp.asarray(x, jnp.float32))
    expected = ref_fractional_gradient(x, u, rows, cols, overlapping)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("overlapping", [False, True])
def test_each_slot_reads_strictly_increasing_indices_inside_its_region(overlapping):
    # The gathers are marked sorted and unique for XLA (wrong marks give undefined results on a
    # GPU), so check it on many drawn boundaries of several sizes, both sequences.
    from jaxpool import _fractional

    @functools.partial(jax.jit, static_argnums=(1, 2, 3))
    def draw(keys, size, out, sequence):  # boundaries (draw, out + 1), slots (slot, draw, out)
        boundaries = jax.vmap(
            lambda k: _fractional.random_boundaries(k, size, out, overlapping, sequence)
        )(keys)
        slots = jax.vmap(lambda b: jnp.stack(_fractional.slot_indices(b, overlapping)))(boundaries)
        return boundaries, jnp.moveaxis(slots, 1, 0)

    for size, ratio in ((13, 1.4), (28, math.sqrt(2)), (9, 1.6), (6, 1.2)):
        out = _fractional.output_size(size, ratio, overlapping, "height")
        for sequence in ("random", "pseudo_random"):
            boundaries, slots = draw(
                jax.random.split(jax.random.key(size), 200), size, out, sequence
            )
            slots = np.asarray(slots)
            assert (np.diff(slots, axis=-1) > 0).all()  # (slot, draw, region)
            b = np.asarray(boundaries)
            starts, ends = b[:, :-1], b[:, 1:] - (0 if overlapping else 1)
            assert ((slots >= starts) & (slots <= ends)).all()
            # together the slots cover each region
            assert ((slots == starts).any(axis=0) & (slots == ends).any(axis=0)).all()
            assert (ends - starts < len(slots)).all()


@pytest.mark.parametrize("overlapping", [False, True])
def test_on_ties_the_derivative_goes_to_the_first_maximal_element_of_each_region(overlapping):
    # As max_pool's: values 0..2 make many ties; each output's weight lands on its region's first
    # maximal element in row-major order (np.argmax's), shared elements of overlapping regions
    # summing them.
    h, w = 9, 7
    rows = fixed(h, math.floor(h / 1.5), overlapping)
    cols = fixed(w, math.floor(w / 1.5), overlapping)
    x = np.random.default_rng(4).integers(0, 3, (2, h, w, 2)).astype(np.float32)
    u = np.random.default_rng(3).normal(size=(2, len(rows) - 1, len(cols) - 1, 2))
    pool = lambda v: jaxpool.fractional_max_pool(
        v, 1.5, deterministic=True, overlapping=overlapping
    )
    grad = jax.grad(lambda v: (pool(v) * u).sum())(jnp.asarray(x))
    expected = ref_fractional_gradient(x, u, rows, cols, overlapping)
    # Sums of at most a few float32 weights against float64: holds on any backend.
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


def _revealed_ends(y, width, overlapping):
    """On x[h, w] = h * width + w every region's max is its bottom-right element, so the output
    reveals the boundaries: rows end at a_i - 1 (disjoint) or a_i (overlapping)."""
    ends_h = np.asarray(y[..., 0, 0]) // width  # (N, out_h)
    shift = 0 if overlapping else 1
    return np.concatenate([np.zeros((len(ends_h), 1)), ends_h + shift], axis=1).astype(int)


@pytest.mark.parametrize("sequence", ["random", "pseudo_random"])
@pytest.mark.parametrize("overlapping", [False, True])
def test_training_regions_are_valid_and_match_the_reference(sequence, overlapping):
    h, w = 13, 4
    grid = np.arange(h * w, dtype=np.float32).reshape(1, h, w, 1)
    x = jnp.asarray(np.broadcast_to(grid, (64, h, w, 1)))
    y = jaxpool.fractional_max_pool(
        x, 1.4, key=jax.random.key(0), sequence=sequence, overlapping=overlapping,
        per_example=True,
    )  # fmt: skip
    out = math.floor(h / 1.4)
    assert y.shape == (64, out, math.floor(w / 1.4), 1)
    a = _revealed_ends(y, w, overlapping)
    total = h - 1 if overlapping else h
    increments = np.diff(a, axis=1)
    assert set(np.unique(increments)) <= {1, 2}
    assert (a[:, -1] == total).all()
    assert (increments == 2).sum(axis=1).tolist() == [total - out] * 64
    assert len({tuple(r) for r in a}) > 1  # per example: different regions
    # the same key gives the same regions on any input: values equal the reference's
    z = np.random.default_rng(2).normal(size=(64, h, w, 1))
    yz = jaxpool.fractional_max_pool(
        jnp.asarray(z, jnp.float32), 1.4, key=jax.random.key(0), sequence=sequence,
        overlapping=overlapping, per_example=True,
    )  # fmt: skip
    cols_y = jaxpool.fractional_max_pool(
        jnp.asarray(np.broadcast_to(np.arange(w, dtype=np.float32)[None, None, :, None], (64, h, w, 1))),
        1.4, key=jax.random.key(0), sequence=sequence, overlapping=overlapping, per_example=True,
    )  # fmt: skip
    shift = 0 if overlapping else 1
    for n in range(0, 64, 16):
        cols = [0, *(np.asarray(cols_y[n, 0, :, 0]).astype(int) + shift)]
        ref = ref_fractional(z[n : n + 1], list(a[n]), cols, overlapping)
        np.testing.assert_allclose(yz[n : n + 1], ref, rtol=1e-6)


def test_random_sequence_places_the_twos_uniformly():
    """Each of the out = 9 increments of a 13-row axis is a 2 with probability 4/9.  Over 4000
    per-example draws the frequency's standard error is sqrt(4/9 * 5/9 / 4000) = 0.0079; the
    tolerance is 5 standard errors (0.039)."""
    h, w, n = 13, 2, 4000
    grid = np.arange(h * w, dtype=np.float32).reshape(1, h, w, 1)
    y = jaxpool.fractional_max_pool(
        jnp.asarray(np.broadcast_to(grid, (n, h, w, 1))), 1.4, key=jax.random.key(7),
        per_example=True,
    )  # fmt: skip
    twos = np.diff(_revealed_ends(y, w, False), axis=1) == 2
    np.testing.assert_allclose(twos.mean(axis=0), 4 / 9, atol=5 * math.sqrt(4 / 9 * 5 / 9 / n))


def test_one_set_of_regions_per_call_unless_per_example():
    x = jnp.asarray(np.broadcast_to(np.arange(26.0).reshape(1, 13, 2, 1), (8, 13, 2, 1)))
    y = jaxpool.fractional_max_pool(x, 1.4, key=jax.random.key(3))
    assert (np.asarray(y) == np.asarray(y[:1])).all()
    with pytest.raises(ValueError, match="needs an explicit PRNG key"):
        jaxpool.fractional_max_pool(x, 1.4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 2.0}, r"ratio must be a number in \(1, 2\)"),
        ({"ratio": (1.5,)}, r"ratio must be a number in \(1, 2\) or a pair"),
        ({"sequence": "halton"}, r"sequence must be one of \('random', 'pseudo_random'\)"),
        ({"overlapping": "yes"}, r"overlapping must be True or False \(a Python bool\); got 'yes'"),
        ({"per_example": 1}, r"per_example must be True or False \(a Python bool\); got 1"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxpool.fractional_max_pool(jnp.ones((1, 8, 8, 1)), deterministic=True, **kwargs)


def test_an_unreachable_size_names_the_axis():
    with pytest.raises(ValueError, match=r"cannot reduce a height of 3 to floor\(3 / 1.9\) = 1"):
        jaxpool.fractional_max_pool(jnp.ones((1, 3, 8, 1)), 1.9, deterministic=True)
