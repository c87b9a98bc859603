"""The noise of the stochastic poolers' fast paths: jaxpool._fast_rng.uniform and gumbel.

They draw with jaxpool's own Threefry-2x32-20 (checked against Random123's known answers and
``jax.random``'s implementation) over block counters instead of ``jax.random``'s bit layout, so
they draw other numbers than ``jax.random`` from the same key, and these tests check what
``jax.random`` would guarantee: the distribution, finiteness, batching (row ``i`` of a ``vmap``
over keys is the draw for key ``i``) and independence from how the batch is sharded.
"""

from __future__ import annotations

import math
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_cpu_devices

from jaxpool import _fast_rng

N = 1 << 20
EULER_GAMMA = 0.5772156649015329


@pytest.fixture(scope="module")
def uniforms():
    return np.asarray(jax.jit(lambda k: _fast_rng.uniform(k, (N,)))(jax.random.key(0)), np.float64)


@pytest.fixture(scope="module")
def gumbels():
    return np.asarray(jax.jit(lambda k: _fast_rng.gumbel(k, (N,)))(jax.random.key(1)), np.float64)


def test_uniform_lies_in_unit_interval_on_the_float32_mantissa_grid(uniforms):
    assert uniforms.min() >= 0.0 and uniforms.max() < 1.0
    # Top 23 bits as the mantissa: every value is a multiple of 2**-23, as jax.random.uniform.
    np.testing.assert_array_equal(uniforms * 2**23, np.round(uniforms * 2**23))
    # Mean and variance of U[0, 1): 1/2 and 1/12.  Standard errors: sqrt(1/12 / n) for the mean;
    # for the variance sqrt((mu4 - sigma^4) / n) with mu4 = 1/80, sigma^4 = 1/144.  5 sigma bands.
    assert abs(uniforms.mean() - 0.5) < 5 * math.sqrt(1 / 12 / N)
    assert abs(uniforms.var() - 1 / 12) < 5 * math.sqrt((1 / 80 - 1 / 144) / N)


def test_gumbel_is_finite_with_the_standard_gumbel_moments_and_cdf(gumbels):
    assert np.isfinite(gumbels).all()
    # Standard Gumbel: mean = Euler's gamma, variance = pi^2 / 6 (sigma^2 = 1.645), excess kurtosis
    # 12/5, so mu4 = 5.4 sigma^4.  Standard errors at n = 2^20: mean sqrt(sigma^2 / n) = 0.00125,
    # variance sigma^2 sqrt(4.4 / n) = 0.0034.  5-sigma bands: 0.0063 and 0.017; a uniform bias of
    # 2^-23 moves neither, a wrong transform (e.g. -log u, mean 1) fails by far.
    var = math.pi**2 / 6
    assert abs(gumbels.mean() - EULER_GAMMA) < 5 * math.sqrt(var / N)
    assert abs(gumbels.var() - var) < 5 * var * math.sqrt(4.4 / N)
    # CDF exp(-exp(-x)) at a few points; each empirical value is Binomial(n, F) / n.
    for x in (-1.5, -0.5, 0.0, 1.0, 3.0):
        p = math.exp(-math.exp(-x))
        assert abs((gumbels <= x).mean() - p) < 5 * math.sqrt(p * (1 - p) / N), x


def test_gumbel_extreme_bits_stay_finite():
    # All-zero bits give u = 0 (clamped to the smallest normal float, as jax.random.gumbel), all-one
    # bits the largest u, 1 - 2^-23.  Neither may give inf or NaN.
    bits = jnp.array([0, 1, (1 << 9) - 1, 1 << 9, 0xFFFFFFFF], jnp.uint32)

    def fixed_bits(seed, shape, transform=None):
        return bits if transform is None else transform(bits)

    with mock.patch.object(_fast_rng, "threefry_bits", fixed_bits):
        u = _fast_rng.uniform(jax.random.key(0), bits.shape)
        g = _fast_rng.gumbel(jax.random.key(0), bits.shape)
    np.testing.assert_array_equal(u, [0.0, 0.0, 0.0, 2.0**-23, 1.0 - 2.0**-23])
    assert np.isfinite(g).all()
    tiny = np.finfo(np.float32).tiny
    np.testing.assert_allclose(g[0], -np.log(-np.log(np.float64(tiny))), rtol=1e-6)
    np.testing.assert_allclose(g[-1], -np.log(-np.log1p(-(2.0**-23))), rtol=1e-3)


def _ulps(approx, x):
    """|approx - log(x)| in units of the float32 spacing at the float64 logarithm."""
    exact = np.log(x.astype(np.float64))
    return np.abs(np.asarray(approx, np.float64) - exact) / np.spacing(
        np.abs(exact).astype(np.float32)
    )


def test_log_positive_is_within_2_5_ulp_for_every_mantissa_and_exponent():
    log = jax.jit(_fast_rng.log_positive)
    # Every float32 of the reduced range [sqrt(1/2), sqrt(2)), where the polynomial works.
    lo, hi = (np.array(v, np.float32).view(np.int32) for v in (math.sqrt(0.5), math.sqrt(2.0)))
    binade = np.arange(lo, hi, dtype=np.int32).view(np.float32)
    assert _ulps(log(binade), binade).max() <= 2.5
    # Every exponent of the normal floats, with a spread of mantissas each (k log 2 + f P(f)).
    mantissas = binade[::997].astype(np.float64)
    x = (mantissas[None, :] * 2.0 ** np.arange(-126, 128)[:, None]).ravel()
    x = x[(x >= np.finfo(np.float32).tiny) & (x <= np.finfo(np.float32).max)].astype(np.float32)
    assert _ulps(log(x), x).max() <= 2.5
    # Exact where it must be: log 1 = 0, log 2**k = k log 2 in float32.
    np.testing.assert_array_equal(
        log(np.float32([1.0, 2.0, 0.5])), np.float32([0.0, 1, -1]) * np.log(np.float32(2))
    )


def test_gumbel_matches_float64_for_every_uniform():
    # All 2**23 values of u (the top 23 bits), through the same transform as the draws, against
    # g = log(-log(u)) in float64.  Two float32 logarithms with relative errors d1, d2 give
    # |error| <= |d1| + |d2| |g| (the inner one's relative error becomes the outer one's absolute
    # error), so the bound is 4 float32 epsilons times (1 + |g|): room for 2 ulps in each log, as
    # any backend's float32 log meets (measured on XLA:CPU: 0.9 epsilon (1 + |g|) here, 0.76 for
    # jnp.log; an H200's arithmetic reached 1.0e-6, beyond an absolute bound of 6e-7).
    bits = np.arange(1 << 23, dtype=np.uint32) << np.uint32(9)
    got = np.asarray(jax.jit(_fast_rng._neg_gumbel_from_bits)(bits), np.float64)
    u = np.maximum(np.arange(1 << 23) * 2.0**-23, np.finfo(np.float32).tiny)
    want = np.log(-np.log(u))
    bound = 4 * np.finfo(np.float32).eps * (1 + np.abs(want))
    assert (np.abs(got - want) <= bound).all()


@pytest.mark.parametrize(
    "key, counter, expected",
    [
        ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ],
)
def test_threefry_matches_random123_known_answers(key, counter, expected):
    # Random123's kat_vectors for threefry2x32 with 20 rounds.
    words = _fast_rng.threefry2x32(*(jnp.uint32(v) for v in (*key, *counter)))
    assert tuple(int(w) for w in words) == expected


def test_threefry_matches_jax_random_implementation():
    from jax.extend.random import threefry_2x32

    rng = np.random.default_rng(0)
    key = rng.integers(0, 2**32, 2, dtype=np.uint32)
    c0, c1 = rng.integers(0, 2**32, (2, 1000), dtype=np.uint32)
    ours = _fast_rng.threefry2x32(*(jnp.asarray(v) for v in (key[0], key[1], c0, c1)))
    theirs = threefry_2x32(jnp.asarray(key), jnp.concatenate([c0, c1]))
    np.testing.assert_array_equal(np.concatenate([np.asarray(w) for w in ours]), theirs)


@pytest.mark.parametrize("shape, axis", [((3, 5), 1), ((7,), 0), ((2, 3, 5, 4), 2)])
def test_bits_halve_the_split_axis_into_first_and_second_words(shape, axis):
    seed = jnp.array([7, 8, 9, 0xFFFFFFF0], jnp.uint32)  # the block + seed[3] counter wraps around
    bits = np.asarray(_fast_rng.threefry_bits(seed, shape))
    grid = list(shape)
    grid[axis] = -(-shape[axis] // 2)
    blocks = (np.arange(np.prod(grid), dtype=np.uint32) + np.uint32(0xFFFFFFF0)).astype(np.uint32)
    x0, x1 = (
        np.asarray(w).reshape(grid)
        for w in _fast_rng.threefry2x32(
            seed[0], seed[1], jnp.asarray(blocks), jnp.full(blocks.shape, 9, jnp.uint32)
        )
    )
    expected = np.concatenate([x0, x1], axis=axis).take(np.arange(shape[axis]), axis=axis)
    np.testing.assert_array_equal(bits, expected)
    assert len(set(bits.ravel().tolist())) == bits.size
    assert _fast_rng.threefry_bits(seed, ()).shape == ()
    # A transform applied to the halves before the join equals the transform of the bits, odd
    # split axes and scalars included (the Gumbels are drawn this way).
    gumbels = jax.jit(lambda s: _fast_rng.threefry_bits(s, shape, _fast_rng._neg_gumbel_from_bits))(
        seed
    )
    from_bits = jax.jit(_fast_rng._neg_gumbel_from_bits)(bits)
    np.testing.assert_allclose(gumbels, from_bits, rtol=2e-7, atol=2e-7)
    scalar = _fast_rng.threefry_bits(seed, (), _fast_rng._neg_gumbel_from_bits)
    assert scalar.shape == () and scalar.dtype == jnp.float32


def test_bits_beyond_the_counter_range_fail_clearly():
    seed = jnp.zeros(4, jnp.uint32)
    with pytest.raises(ValueError, match="at most 2\\*\\*32 - 1 blocks"):
        jax.eval_shape(lambda s: _fast_rng.threefry_bits(s, (1 << 17, 1 << 17)), seed)


def test_uniform_is_fixed_by_the_key_and_shape():
    a = _fast_rng.uniform(jax.random.key(3), (64,))
    np.testing.assert_array_equal(a, _fast_rng.uniform(jax.random.key(3), (64,)))
    np.testing.assert_array_equal(
        a, jax.jit(lambda k: _fast_rng.uniform(k, (64,)))(jax.random.key(3))
    )
    assert not np.array_equal(a, _fast_rng.uniform(jax.random.key(4), (64,)))
    # Legacy raw uint32 keys work too.
    raw = _fast_rng.uniform(jax.random.PRNGKey(3), (64,))
    assert raw.shape == (64,) and raw.dtype == jnp.float32


@pytest.mark.parametrize("fn", [_fast_rng.uniform, _fast_rng.gumbel], ids=["uniform", "gumbel"])
def test_vmap_over_keys_gives_each_key_its_own_draw(fn):
    keys = jax.random.split(jax.random.key(5), 6)
    loop = np.stack([fn(k, (3, 4)) for k in keys])
    assert len({row.tobytes() for row in loop}) == len(keys)
    np.testing.assert_array_equal(jax.vmap(lambda k: fn(k, (3, 4)))(keys), loop)
    # Compiled, against the compiled single draws: XLA may contract the logarithm's multiply-adds
    # into FMAs inside a fused loop (eager runs one operation at a time), so compiled and eager
    # Gumbels may differ in the last bit; the uniforms are exact either way.
    draw = jax.jit(lambda k: fn(k, (3, 4)))  # one program for every key
    loop_jit = np.stack([draw(k) for k in keys])
    np.testing.assert_allclose(loop_jit, loop, rtol=2e-7, atol=2e-7)
    np.testing.assert_array_equal(jax.jit(jax.vmap(lambda k: fn(k, (3, 4))))(keys), loop_jit)
    nested = jax.vmap(jax.vmap(lambda k: fn(k, (3, 4))))(keys.reshape(2, 3))
    np.testing.assert_array_equal(nested.reshape(loop.shape), loop)
    # A vmap over something else leaves the key unbatched: every row is the one draw.
    rows = jax.vmap(lambda s: fn(jax.random.key(5), (3, 4)) * s)(jnp.ones(2))
    np.testing.assert_array_equal(rows, np.stack([fn(jax.random.key(5), (3, 4))] * 2))


SHARDING_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxpool import _fast_rng
from jaxpool import functional as F

assert jax.device_count() == 8
x = jax.random.normal(jax.random.key(0), (16, 8, 8, 4))
temp, key = jnp.full((4,), 0.5), jax.random.key(1)

def draws(x, key):
    return {
        "uniform": _fast_rng.uniform(key, x.shape),
        "gumbel": _fast_rng.gumbel(key, (4, *x.shape)),
        "stochastic": F.stochastic_pool(x, key=key, implementation="fast"),
        "stochastic_reference": F.stochastic_pool(x, key=key, implementation="reference"),
        "tdgs": F.tdgs_pool(x, temp, key=key, implementation="fast"),
        "tdgs_reference": F.tdgs_pool(x, temp, key=key, implementation="reference"),
        "tdgs_grad": jax.grad(
            lambda v: (F.tdgs_pool(v, temp, key=key, implementation="fast") ** 2).sum()
        )(x),
    }

one = jax.jit(draws)(jax.device_put(x, jax.devices()[0]), key)
mesh = Mesh(np.array(jax.devices()), ("data",))
batch = NamedSharding(mesh, P("data"))
out = {name: batch for name in one}
out["gumbel"] = NamedSharding(mesh, P(None, "data"))
eight = jax.jit(draws, out_shardings=out)(jax.device_put(x, batch), key)
for name in one:
    assert len(eight[name].sharding.device_set) == 8, name
    np.testing.assert_array_equal(np.asarray(one[name]), np.asarray(eight[name]), err_msg=name)
# Each device draws the noise of its own examples: no device gathers the others' draws.
hlo = jax.jit(draws, out_shardings=out).lower(jax.device_put(x, batch), key).compile().as_text()
assert "all-gather" not in hlo
print("ok")
"""


def test_draws_do_not_depend_on_sharding():
    assert run_on_cpu_devices(SHARDING_SCRIPT) == "ok"
