"""The ``implementation`` switch: every fast path against the reference, and forward mode.

Fast paths of deterministic math must give the reference's values and derivatives up to float
rounding (exactly, for max pooling's selections).  Stochastic fast paths draw other random
numbers than the reference; given the reference's noise (patched in) they must give its samples
and derivatives.  Their own generator is tested as a sampler in ``test_rng.py`` and by the
frequency tests of ``test_functional.py``, which run both implementations.
"""

from __future__ import annotations

import functools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpool
from jaxpool import _fast_rng, _fast_windows, _windows
from jaxpool import functional as F

# Non-overlapping VALID windows, where the view-based fast paths apply: 2x2, and 2x3 in bfloat16.
VIEW_CASES = pytest.mark.parametrize(
    "shape, window, dtype", [((2, 8, 8, 3), 2, jnp.float32), ((2, 6, 9, 2), (2, 3), jnp.bfloat16)]
)


def _assert_close(fast, reference, dtype):
    """Equal up to float rounding: float32 values to 2e-5 of the largest magnitude; bfloat16
    (rounded to 8 bits on output) to 1e-2."""
    tol = 2e-5 if dtype == jnp.float32 else 1e-2
    assert float(jnp.max(jnp.abs(jax.tree.leaves(reference)[0]))) > 0
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(reference), strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        scale = float(np.max(np.abs(b), initial=0.0))
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, scale))


def _value_grads_jvp(pool, primals, cotangent):
    """``pool``'s value, its gradients against ``cotangent`` for every primal, and its JVP along
    a fixed random direction."""
    y, vjp = jax.vjp(pool, *primals)
    directions = [
        jax.random.normal(jax.random.key(i), jnp.shape(p), jnp.result_type(p))
        for i, p in enumerate(primals)
    ]
    _, tangent = jax.jvp(pool, tuple(primals), tuple(directions))
    return y, vjp(cotangent.astype(y.dtype)), tangent


@pytest.mark.parametrize(
    "shape, window, dtype",
    # and K = 144 elements, whose index does not fit int8
    [
        ((2, 8, 8, 3), 2, jnp.float32),
        ((2, 6, 9, 2), (2, 3), jnp.bfloat16),
        ((1, 24, 12, 1), 12, jnp.float32),
    ],
)
def test_max_fast_path_equals_reference_exactly(shape, window, dtype):
    # Small integers: many ties inside a window; both send the derivative to the first maximum.
    x = jax.random.randint(jax.random.key(0), shape, 0, 3).astype(dtype)
    spec = _windows.window_spec(shape[1:3], window, None, "VALID")
    cot = jax.random.normal(jax.random.key(1), (shape[0], *spec.out_size, shape[-1]))
    fast, reference = (
        _value_grads_jvp(lambda v, i=i: F.max_pool(v, window, implementation=i), (x,), cot)
        for i in ("fast", "reference")
    )
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(a, b)
    # Exactly one element of each window receives its cotangent.
    assert int(jnp.sum(fast[1][0] != 0)) == int(jnp.sum(cot != 0))


@pytest.mark.parametrize("pooler", ["mixed", "gated"])
@VIEW_CASES
def test_max_mean_mixtures_fast_path_matches_reference(pooler, shape, window, dtype):
    x = jax.random.randint(jax.random.key(0), shape, 0, 3).astype(dtype)
    spec = _windows.window_spec(shape[1:3], window, None, "VALID")
    (kh, kw), c = spec.window, shape[-1]
    keys = jax.random.split(jax.random.key(1), 3)
    if pooler == "mixed":
        # alpha per channel, and one per layer for the 2x3 windows
        params = (jax.random.normal(keys[0], () if window == (2, 3) else (c,)),)
        pool = functools.partial(F.mixed_pool, window_shape=window)
    else:
        params = (jax.random.normal(keys[0], (kh, kw, c)) / 2, jax.random.normal(keys[1], (c,)))
        pool = functools.partial(F.gated_pool, window_shape=window)
    cot = jax.random.normal(keys[2], (shape[0], *spec.out_size, c))
    fast, reference = (
        _value_grads_jvp(lambda *a, i=i: pool(*a, implementation=i), (x, *params), cot)
        for i in ("fast", "reference")
    )
    _assert_close(fast, reference, dtype)


@pytest.mark.parametrize("pooler", ["gated", "tree"])
@pytest.mark.parametrize(
    "shape, window, sharing, dtype",
    [
        ((2, 8, 8, 3), 2, "layer", jnp.float32),
        ((2, 9, 7, 3), 3, "channel", jnp.bfloat16),
        ((2, 6, 9, 2), (2, 3), "region_channel", jnp.float32),
    ],
)
def test_kernel_poolers_fast_path_matches_reference(pooler, shape, window, sharing, dtype):
    spec = _windows.window_spec(shape[1:3], window, None, "VALID")
    (kh, kw), (ho, wo), c = spec.window, spec.out_size, shape[-1]
    kernel_shape = {
        "layer": (kh, kw),
        "channel": (kh, kw, c),
        "region_channel": (ho, wo, kh, kw, c),
    }
    bias_shape = {"layer": (), "channel": (c,), "region_channel": (ho, wo, c)}
    x = jax.random.normal(jax.random.key(0), shape, dtype)
    keys = jax.random.split(jax.random.key(1), 3)
    kernel = jax.random.normal(keys[0], kernel_shape[sharing])
    if pooler == "gated":
        second = jax.random.normal(keys[1], bias_shape[sharing])
        pool = lambda v, k, b, i: F.gated_pool(v, k, b, window, implementation=i)
    else:
        second = jax.random.normal(keys[1], (2, *kernel_shape[sharing])) / (kh * kw)
        pool = lambda v, k, leaves, i: F.tree_pool(v, leaves, k, window, implementation=i)
    cot = jax.random.normal(keys[2], (shape[0], ho, wo, c))
    fast, reference = (
        _value_grads_jvp(lambda *a, i=i: pool(*a, i), (x, kernel, second), cot)
        for i in ("fast", "reference")
    )
    _assert_close(fast, reference, dtype)


@pytest.mark.parametrize(
    "shape, stride, grid, dtype",
    [
        ((2, 8, 8, 3), 2, 4, jnp.float32),  # whole grid blocks
        ((2, 13, 7, 2), 2, 4, jnp.float32),  # a truncated last block on both axes
        ((1, 11, 17, 1), (3, 2), (6, 4), jnp.float32),  # other strides and grids per axis
        ((2, 9, 10, 2), 2, 2, jnp.bfloat16),  # grid = stride: one output per block
        ((1, 5, 5, 1), 2, 8, jnp.float32),  # one block larger than the input
    ],
)
def test_s3_expectation_fast_path_matches_reference(shape, stride, grid, dtype):
    x = jax.random.normal(jax.random.key(0), shape, dtype)
    pool = lambda v, i: F.s3_pool(v, stride, grid, deterministic=True, implementation=i)
    cot = jax.random.normal(jax.random.key(1), pool(x, "reference").shape)
    fast, reference = (
        _value_grads_jvp(lambda v, i=i: pool(v, i), (x,), cot) for i in ("fast", "reference")
    )
    _assert_close(fast, reference, dtype)
    # Differentiated through an inner jit too: its derivative rule must not capture the tracers
    # of an enclosing trace.
    inner = _value_grads_jvp(jax.jit(lambda v: pool(v, "fast")), (x,), cot)
    _assert_close(inner, reference, dtype)


@pytest.mark.parametrize("param_shape", [(), (3,), (4, 5, 3)])
def test_broadcast_param_matches_plain_broadcast(param_shape):
    shape = (2, 4, 5, 3)
    p = jax.random.normal(jax.random.key(0), param_shape)
    cot = jax.random.normal(jax.random.key(1), shape)
    fast = _value_grads_jvp(lambda q: _fast_windows.broadcast_param(q, shape), (p,), cot)
    plain = _value_grads_jvp(lambda q: jnp.broadcast_to(q, shape), (p,), cot)
    np.testing.assert_array_equal(fast[0], plain[0])
    np.testing.assert_array_equal(fast[2], plain[2])
    np.testing.assert_allclose(fast[1][0], plain[1][0], rtol=1e-5, atol=1e-5)


def _reference_gumbels(key, shape):
    """What the fast TDGS path subtracts, drawn as the reference draws it."""
    return -jax.random.gumbel(key, shape, jnp.float32)


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize(
    "shape, geometry, temperature_shape, dtype",
    [
        ((2, 8, 8, 3), (2, None, "VALID"), "position", jnp.float32),
        ((2, 6, 9, 2), ((2, 3), None, "VALID"), "layer", jnp.bfloat16),
        ((2, 7, 6, 3), (3, 2, "SAME"), "channel", jnp.float32),
    ],
)
def test_tdgs_fast_path_matches_reference(shape, geometry, temperature_shape, dtype, deterministic):
    """Given the reference's Gumbels, the fast path draws the same element of every window and
    gives the reference's value and derivatives for x, temperature and tau."""
    spec = _windows.window_spec(shape[1:3], *geometry)
    t_shape = {"position": (*spec.out_size, shape[-1]), "channel": (shape[-1],), "layer": ()}
    x = jax.random.normal(jax.random.key(0), shape, dtype)
    temperature = jax.random.uniform(jax.random.key(1), t_shape[temperature_shape], minval=-0.3)
    cot = jax.random.normal(jax.random.key(2), (shape[0], *spec.out_size, shape[-1]))

    def run(implementation):
        def pool(v, t, tau):
            return F.tdgs_pool(
                v, t, *geometry, key=jax.random.key(3), deterministic=deterministic, tau=tau,
                implementation=implementation,
            )  # fmt: skip

        return _value_grads_jvp(pool, (x, temperature, jnp.float32(0.6)), cot)

    with mock.patch.object(_fast_rng, "neg_gumbel", _reference_gumbels):
        fast = run("fast")
    reference = run("reference")
    if not deterministic:
        np.testing.assert_array_equal(fast[0], reference[0])  # the same element of every window
        firsts = np.asarray(x)[:, : spec.out_size[0] * 2 : 2, : spec.out_size[1] * 2 : 2]
        assert not np.array_equal(np.asarray(fast[0]), firsts)  # not always the first element
    _assert_close(fast, reference, dtype)


def test_tdgs_second_order_derivatives():
    """A gradient penalty differentiates TDGS's gradient again.  The fast path differentiates its
    straight-through gradient (which a finite difference of that gradient checks); the reference
    differentiates autodiff's surrogate, whose second derivative differs (fast module docstring):
    it must exist and be finite."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    direction = jax.random.normal(jax.random.key(1), x.shape)

    def penalty(v, implementation):
        g = jax.grad(
            lambda u: jnp.sum(
                F.tdgs_pool(u, 0.7, key=jax.random.key(2), implementation=implementation) ** 2
            )
        )(v)
        return jnp.sum(g**2)

    fast = jnp.vdot(jax.grad(penalty)(x, "fast"), direction)
    step = 1e-3
    finite_difference = (
        penalty(x + step * direction, "fast") - penalty(x - step * direction, "fast")
    ) / (2 * step)
    np.testing.assert_allclose(fast, finite_difference, rtol=2e-2)
    assert np.isfinite(jax.grad(penalty)(x, "reference")).all()


@pytest.mark.parametrize("mode", ["l1", "softmax"])
@pytest.mark.parametrize("geometry", [(2, None, "VALID"), (3, 2, "SAME")])
def test_stochastic_fast_path_is_the_reference_with_other_uniforms(mode, geometry):
    """The fast path differs from the reference only in its generator: given jax.random's
    uniforms it gives the reference's numbers exactly, samples and gradients."""
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))

    def run(implementation):
        pool = lambda v: F.stochastic_pool(
            v, *geometry, key=jax.random.key(1), mode=mode, implementation=implementation
        )
        y, vjp = jax.vjp(pool, x)
        return y, vjp(jnp.cos(y))

    patched = lambda key, shape: jax.random.uniform(key, shape, jnp.float32)
    with mock.patch.object(_fast_rng, "uniform", patched):
        fast = run("fast")
    reference = run("reference")
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(run("fast")[0], reference[0])  # its own generator: other samples


def test_gumbel_softmax_fast_path_is_the_reference_with_other_gumbels():
    logits = jax.random.normal(jax.random.key(0), (5, 4))

    def run(implementation):
        sample = lambda lg: F.gumbel_softmax(
            jax.random.key(1), lg, 0.7, hard=True, implementation=implementation
        )
        y, vjp = jax.vjp(sample, logits)
        return y, vjp(jnp.arange(20.0).reshape(5, 4))

    patched = lambda key, shape: jax.random.gumbel(key, shape, jnp.float32)
    with mock.patch.object(_fast_rng, "gumbel", patched):
        fast = run("fast")
    reference = run("reference")
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(a, b)


def test_auto_takes_a_fast_path_only_where_measured_and_never_for_reference():
    assert not _windows.use_fast("reference", True)
    assert _windows.use_fast("fast", False)
    assert not _windows.use_fast("auto", False)
    assert _windows.use_fast("auto", True) == _windows.on_measured_backend()


def test_auto_takes_trees_fast_path_from_its_measured_size_on():
    def fast_path_taken(shape):
        channels = shape[-1]
        leaves, gate = jnp.zeros((2, 2, 2, channels)), jnp.zeros((2, 2, channels))
        with mock.patch.object(_fast_windows, "kernel_dot", wraps=_fast_windows.kernel_dot) as spy:
            jax.eval_shape(  # traces only: nothing of this size is allocated
                lambda x: F.tree_pool(x, leaves, gate), jax.ShapeDtypeStruct(shape, jnp.float32)
            )
        return spy.call_count > 0

    assert _fast_windows.TREE_MIN_ELEMENTS == 256 * 32 * 32 * 16
    assert fast_path_taken((256, 32, 32, 16)) == _windows.on_measured_backend()
    assert not fast_path_taken((255, 32, 32, 16))
    assert not fast_path_taken((64, 16, 16, 32))


# ----------------------------------------------------------------------------- forward mode
# Training modes whose derivative is a straight-through estimate, not the derivative of the
# value (TDGS: the value is the drawn element, the derivative that of the soft sample's mean), so
# no finite difference can check it: their JVP is checked against their reverse mode instead.
STRAIGHT_THROUGH = {"tdgs"}


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.usefixtures("highest_precision")  # LIP's convolution, and the vdot checks
def test_jvp_of_every_pooler_matches_a_central_difference(pooler_name, deterministic):
    """``jax.jvp`` through each registered pooler in its default configuration (whatever
    ``'auto'`` picks), with respect to the input and the parameters, against a float32 central
    difference ``(f(p + h d) - f(p - h d)) / 2h``.

    Tolerance: each float32 evaluation of ``y`` (|y| <= ~3 here) is off by a few ulp, <= 1e-6,
    so the difference is off by <= 2e-6 / 2h = 1e-3 at h = 1e-3; the truncation error
    h^2 / 6 |f'''| is below 1e-5 for these smooth parts (softmax and sigmoid at temperatures
    >= 0.5).  The inputs are distinct values 0.1 apart, so no maximum or draw switches within
    +-h |d| (|d| <= ~3): max, samples and draws are locally fixed, as the derivative assumes.
    """
    module = jaxpool.create(pooler_name)
    n, h, w, c = 1, 4, 4, 2
    x = jax.random.permutation(jax.random.key(0), jnp.arange(n * h * w * c, dtype=jnp.float32))
    x = (0.1 * x - 1.5).reshape(n, h, w, c)
    variables = module.init(
        {"params": jax.random.key(1), "pooling": jax.random.key(2)}, x, deterministic=True
    )
    params = variables.get("params", {})
    if pooler_name == "lip":
        # LIP's zero-initialised logit convolution leaves its instance norm at zero variance,
        # where the normalisation is steeper than a finite difference of step 1e-3 can follow.
        params = {
            **params,
            "logit_kernel": 0.3 * jax.random.normal(jax.random.key(6), (3, 3, c, c)),
        }

    def pool(params, x):
        return module.apply(
            {"params": params}, x, deterministic=deterministic, rngs={"pooling": jax.random.key(3)}
        )

    directions = jax.tree.map(
        lambda a: jax.random.normal(jax.random.key(4), a.shape, a.dtype), (params, x)
    )
    # compiled whole: op by op, each of a pooler's operations (and their JVPs) compiles
    y, tangent = jax.jit(lambda p, d: jax.jvp(pool, p, d))((params, x), directions)
    pool = jax.jit(pool)
    if pooler_name in STRAIGHT_THROUGH and not deterministic:
        # <J d, u> = <d, J^T u> for a cotangent u: forward and reverse mode are one linear map.
        cotangent = jax.random.normal(jax.random.key(5), y.shape)
        _, vjp = jax.vjp(pool, params, x)
        pairs = zip(jax.tree.leaves(vjp(cotangent)), jax.tree.leaves(directions), strict=True)
        reverse = sum(jnp.vdot(g, d) for g, d in pairs)
        np.testing.assert_allclose(jnp.vdot(tangent, cotangent), reverse, rtol=1e-4, atol=1e-4)
        return
    step = 1e-3
    shifted = [
        pool(*jax.tree.map(lambda a, d, s=s: a + s * step * d, (params, x), directions))
        for s in (1, -1)
    ]
    finite_difference = (shifted[0] - shifted[1]) / (2 * step)
    np.testing.assert_allclose(tangent, finite_difference, rtol=1e-3, atol=2e-3)
    assert float(jnp.max(jnp.abs(tangent))) > 0
