"""Generic tests of every registered pooling Module, driven by the registry."""

from __future__ import annotations

import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import STOCHASTIC, init_and_apply

import jaxpool
from jaxpool import _windows

LEARNABLE = {
    "mixed": {"alpha"},
    "gated": {"gate_kernel", "gate_bias"},
    "tree": {"leaf_kernels", "gate_kernel"},
    "tdgs": {"temperature"},
    "lp": {"p"},
    "lip": {"logit_kernel", "norm_scale", "norm_bias"},
}
# (kwargs, input (H, W)) geometry cases; s3 has its own fields.
GEOMETRY_CASES = [
    ({}, (6, 6)),
    ({}, (7, 5)),  # odd sizes, VALID floors
    ({"padding": "SAME"}, (7, 5)),
    ({"window_shape": 3, "strides": 2}, (7, 6)),  # overlapping
    ({"window_shape": (3, 2), "strides": 1, "padding": "SAME"}, (5, 4)),
]
S3_CASES = [({}, (6, 6)), ({}, (7, 5)), ({"stride": 3, "grid_size": 6}, (9, 7))]


def _expected_hw(name, kwargs, hw):
    if name == "s3":
        s = kwargs.get("stride", 2)
        return hw[0] // s, hw[1] // s
    window = _windows.normalize_pair(kwargs.get("window_shape", 2), "w")
    strides = _windows.normalize_pair(kwargs.get("strides") or window, "s")
    if kwargs.get("padding", "VALID") == "SAME":
        return tuple(math.ceil(n / s) for n, s in zip(hw, strides, strict=True))
    return tuple((n - k) // s + 1 for n, k, s in zip(hw, window, strides, strict=True))


# Poolers with their own geometry: (kwargs, input (H, W), output (Ho, Wo)), worked out by hand.
OWN_GEOMETRY = {
    "blur": [  # dense max (H - k + 1), reflect/edge pad (size-1)//2 + size//2, blur stride 2
        ({}, (6, 6), (3, 3)),
        ({}, (7, 5), (3, 2)),
        ({"filter_size": 3, "strides": 1, "pad_mode": "edge"}, (5, 4), (4, 3)),
    ],
    "fractional": [  # floor(N / ratio)
        ({}, (6, 6), (4, 4)),
        ({"ratio": 1.5}, (7, 5), (4, 3)),
        ({"ratio": (1.2, 1.8), "overlapping": True}, (9, 7), (7, 3)),
    ],
    "lip": [  # the official window 3, stride 2, padding 1: (N + 2 - 3) // 2 + 1
        ({}, (6, 6), (3, 3)),
        ({}, (7, 5), (4, 3)),
    ],
}


def _cases(name):
    """(kwargs, input (H, W), output (Ho, Wo)) for ``name``."""
    if name in OWN_GEOMETRY:
        cases = list(OWN_GEOMETRY[name])
        if name == "lip":  # it also takes every windowed case, given the window fields
            base = {"window_shape": 2, "strides": None, "padding": "VALID"}
            cases += [({**base, **kw}, hw, _expected_hw(name, kw, hw)) for kw, hw in GEOMETRY_CASES]
        return cases
    geometry = S3_CASES if name == "s3" else GEOMETRY_CASES
    return [(kw, hw, _expected_hw(name, kw, hw)) for kw, hw in geometry]


def test_shapes_batched_and_unbatched(pooler_name):
    for kwargs, hw, (ho, wo) in _cases(pooler_name):
        module = jaxpool.create(pooler_name, **kwargs)

        # Compiled whole, in one program: op by op, a stochastic pooler's many small operations
        # each compile, and each program compiles at a cost of its own.
        @jax.jit
        def outputs(x, module=module):
            keys = {"params": jax.random.key(2), "pooling": jax.random.key(3)}
            variables = module.init(keys, x, deterministic=True)
            return {
                (det, batched): module.apply(
                    variables, v, deterministic=det, rngs={"pooling": jax.random.key(4)}
                )
                for det in (True, False)
                for batched, v in ((True, x), (False, x[0]))
            }

        y = outputs(jax.random.normal(jax.random.key(0), (2, *hw, 3)))
        for det in (True, False):
            chex.assert_shape(y[det, True], (2, ho, wo, 3))
            chex.assert_shape(y[det, False], (ho, wo, 3))
        # deterministic: unbatched == batched row
        np.testing.assert_allclose(y[True, False], y[True, True][0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_dtype_preserved(pooler_name, dtype):
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3)).astype(dtype)
    module = jaxpool.create(pooler_name)
    # both modes in one compiled program: op by op, each of a pooler's operations compiles
    outputs = jax.jit(
        lambda x: [init_and_apply(module, x, deterministic=d)[1] for d in (True, False)]
    )
    assert [y.dtype for y in outputs(x)] == [dtype, dtype]


def test_jit_equals_eager_and_no_retrace(pooler_name):
    module = jaxpool.create(pooler_name)
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    variables, _ = init_and_apply(module, x, deterministic=True)
    chex.clear_trace_counter()  # the counter is keyed by the code, shared across parameters

    @jax.jit
    @chex.assert_max_traces(n=1)
    def apply(variables, x, key):
        return module.apply(variables, x, deterministic=False, rngs={"pooling": key})

    for seed in (1, 2):  # same shapes, new values: one trace only
        key = jax.random.key(seed)
        x = x + seed
        eager = module.apply(variables, x, deterministic=False, rngs={"pooling": key})
        np.testing.assert_allclose(apply(variables, x, key), eager, rtol=1e-6, atol=1e-6)


def test_gradients_finite_and_reach_every_parameter(pooler_name):
    module = jaxpool.create(pooler_name)
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    variables, y = init_and_apply(module, x, deterministic=True)
    params = variables.get("params", {})
    if pooler_name == "lip":
        # LIP's official zero init makes every logit equal, so the norm's scale and bias get no
        # gradient at the first step; a random kernel shows that every parameter is connected.
        params = {**params, "logit_kernel": jax.random.normal(jax.random.key(5), (3, 3, 3, 3))}
    cot = jax.random.normal(jax.random.key(3), y.shape)
    for det in (True, False):

        def loss(params, x, det=det):
            y = module.apply(
                {"params": params}, x, deterministic=det, rngs={"pooling": jax.random.key(4)}
            )
            return (y * cot).sum()

        g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, x)
        assert np.isfinite(g_x).all() and np.abs(g_x).sum() > 0
        assert set(g_params) == LEARNABLE.get(pooler_name, set())
        for name, g in g_params.items():
            assert np.isfinite(g).all(), name
            assert np.abs(g).sum() > 0, f"{pooler_name}.{name} gets no gradient (det={det})"


def test_vmap_over_unbatched_inputs(pooler_name):
    module = jaxpool.create(pooler_name)

    @jax.jit  # one program: op by op, each of a pooler's operations compiles
    def outputs(x):
        variables, batched = init_and_apply(module, x, deterministic=True)
        per_example = jax.vmap(lambda v: module.apply(variables, v, deterministic=True))(x)
        keys = jax.random.split(jax.random.key(1), 3)
        sampled = jax.vmap(
            lambda v, k: module.apply(variables, v, deterministic=False, rngs={"pooling": k})
        )(x, keys)
        return batched, per_example, sampled

    batched, per_example, sampled = outputs(jax.random.normal(jax.random.key(0), (3, 6, 6, 2)))
    np.testing.assert_allclose(per_example, batched, rtol=1e-6, atol=1e-6)
    chex.assert_shape(sampled, batched.shape)


def test_export_with_a_symbolic_batch(pooler_name):
    """``jax.export`` with a polymorphic batch, as for serving: every layer traces with a symbolic
    batch size in both modes ('auto' then takes the reference path where the fast one needs the
    size: tree's choice, the fast noise generator) and the exported program gives the reference
    layer's output at any batch size.  Before, tree, stochastic and TDGS failed to trace."""
    module = jaxpool.create(pooler_name)
    one_path = "implementation" not in {f.name for f in dataclasses.fields(module)}
    reference = module if one_path else jaxpool.create(pooler_name, implementation="reference")
    x = jax.random.normal(jax.random.key(0), (3, 6, 6, 2))
    variables, _ = init_and_apply(module, x, deterministic=True)
    (batch,) = jax.export.symbolic_shape("b")
    key = jax.random.key(4)

    def both_modes(variables, x, key, module=module):  # one program: each compile costs seconds
        return [
            module.apply(variables, x, deterministic=det, rngs={"pooling": key})
            for det in (True, False)
        ]

    spec = jax.ShapeDtypeStruct((batch, 6, 6, 2), x.dtype)
    exported = jax.export.export(jax.jit(both_modes))(variables, spec, key)
    want = jax.jit(functools.partial(both_modes, module=reference))
    for n in (1, 3):
        chex.assert_trees_all_close(exported.call(variables, x[:n], key),
                                    want(variables, x[:n], key), rtol=1e-5, atol=1e-6)  # fmt: skip
    if pooler_name == "stochastic":  # the fast generator, asked for, says why it cannot
        fast = jaxpool.create(pooler_name, implementation="fast")
        with pytest.raises(ValueError, match=r"implementation='fast' draws its noise for inputs"):
            jax.export.export(
                jax.jit(lambda v, x, k: fast.apply(v, x, deterministic=False, rngs={"pooling": k}))
            )(variables, spec, key)


def test_fast_path_matches_general_path(pooler_name, monkeypatch):
    """Non-overlapping VALID windows take the reshape path; the strided path must agree."""
    module = jaxpool.create(pooler_name)
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    variables, _ = init_and_apply(module, x, deterministic=True)

    def value_and_grads():
        def loss(params, x):
            y = module.apply(
                {"params": params}, x, deterministic=False, rngs={"pooling": jax.random.key(9)}
            )
            return (y * jnp.arange(y.size).reshape(y.shape)).sum(), y

        (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
            variables.get("params", {}), x
        )
        return y, grads

    fast = value_and_grads()
    monkeypatch.setattr(_windows.WindowSpec, "is_fast", property(lambda self: False))
    general = value_and_grads()
    chex.assert_trees_all_close(fast, general, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_layers_use_pooling_rng_stream(name):
    module = jaxpool.create(name)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    variables, _ = init_and_apply(module, x, deterministic=True)
    run = lambda seed: module.apply(
        variables, x, deterministic=False, rngs={"pooling": jax.random.key(seed)}
    )
    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))
    # Deterministic mode needs no rng and is repeatable.
    np.testing.assert_array_equal(
        module.apply(variables, x, deterministic=True),
        module.apply(variables, x, deterministic=True),
    )
    # An explicit rng wins over the stream.
    explicit = module.apply(
        variables,
        x,
        deterministic=False,
        rng=jax.random.key(5),
        rngs={"pooling": jax.random.key(1)},
    )
    np.testing.assert_array_equal(
        explicit, module.apply(variables, x, deterministic=False, rng=jax.random.key(5))
    )
    # Without an rng in training, no key is invented: the message names the layer and the fix.
    with pytest.raises(
        ValueError, match=rf"{type(module).__name__} is stochastic .*rngs=\{{'pooling': key\}}"
    ):
        module.apply(variables, x, deterministic=False)
    # deterministic must be given somewhere (merged like Dropout); the message names the layer.
    with pytest.raises(
        ValueError, match=rf"{type(module).__name__} is stochastic .*deterministic=True"
    ):
        module.apply(variables, x, rngs={"pooling": jax.random.key(1)})
    field = jaxpool.create(name, deterministic=True)
    np.testing.assert_array_equal(
        field.apply(variables, x), module.apply(variables, x, deterministic=True)
    )


# ----------------------------------------------------------------------------- parameters
def _param_shapes(name, x, **kwargs):
    """Traced, not run: shapes are fixed by tracing, and the layer applies to its parameters."""
    module = jaxpool.create(name, **kwargs)
    keys = {"params": jax.random.key(0), "pooling": jax.random.key(1)}
    variables = jax.eval_shape(lambda: module.init(keys, x, deterministic=True))
    jax.eval_shape(lambda v: module.apply(v, x, deterministic=True), variables)
    return jax.tree_util.tree_map(lambda a: a.shape, variables.get("params", {}))


def test_parameter_names_and_layouts():
    x = jnp.ones((1, 8, 6, 5))  # Ho, Wo = 4, 3 with 2x2 windows
    assert _param_shapes("mixed", x) == {"alpha": (5,)}
    assert _param_shapes("mixed", x, per="layer") == {"alpha": ()}
    assert _param_shapes("gated", x, per="layer") == {"gate_kernel": (2, 2), "gate_bias": ()}
    assert _param_shapes("gated", x) == {"gate_kernel": (2, 2, 5), "gate_bias": (5,)}
    assert _param_shapes("gated", x, per="region_channel") == {
        "gate_kernel": (4, 3, 2, 2, 5),
        "gate_bias": (4, 3, 5),
    }
    assert _param_shapes("gated", x, use_bias=False) == {"gate_kernel": (2, 2, 5)}
    assert _param_shapes("tree", x, per="layer") == {
        "leaf_kernels": (2, 2, 2),
        "gate_kernel": (2, 2),
    }
    assert _param_shapes("tree", x, window_shape=3, strides=2) == {
        "leaf_kernels": (2, 3, 3, 5),
        "gate_kernel": (3, 3, 5),
    }
    assert _param_shapes("tree", x, per="region_channel") == {
        "leaf_kernels": (2, 4, 3, 2, 2, 5),
        "gate_kernel": (4, 3, 2, 2, 5),
    }
    assert _param_shapes("tdgs", x) == {"temperature": (4, 3, 5)}
    assert _param_shapes("tdgs", x, per="channel") == {"temperature": (5,)}
    assert _param_shapes("tdgs", x, per="layer") == {"temperature": ()}
    assert _param_shapes("lp", x) == {"p": ()}
    assert _param_shapes("lp", x, per="channel") == {"p": (5,)}
    assert _param_shapes("lip", x) == {
        "logit_kernel": (3, 3, 5, 5),
        "norm_scale": (5,),
        "norm_bias": (5,),
    }
    assert _param_shapes("lip", x, logit_kernel_size=(5, 1))["logit_kernel"] == (5, 1, 5, 5)
    for name in ("max", "avg", "stochastic", "s3", "softpool", "blur", "fractional"):
        assert _param_shapes(name, x) == {}


def test_initial_values():
    x = jnp.ones((1, 16, 16, 8))
    variables, _ = init_and_apply(
        jaxpool.create("tdgs", init_temperature=2.0), x, deterministic=True
    )
    t = np.asarray(variables["params"]["temperature"])
    assert (t >= 1.5).all() and (t <= 2.5).all() and t.std() > 0.1  # 2 + U(-0.5, 0.5)
    variables, _ = init_and_apply(jaxpool.create("mixed"), x, deterministic=True)
    np.testing.assert_array_equal(variables["params"]["alpha"], 0.0)  # s = 0.5
    variables, _ = init_and_apply(jaxpool.create("lp", per="channel"), x, deterministic=True)
    np.testing.assert_array_equal(variables["params"]["p"], 3.0)  # GeM's init
    variables, y = init_and_apply(jaxpool.create("lip"), x, deterministic=True)
    p = variables["params"]
    np.testing.assert_array_equal(p["logit_kernel"], 0.0)  # the official init_layer
    np.testing.assert_array_equal(p["norm_scale"], 1.0)
    np.testing.assert_array_equal(p["norm_bias"], 0.0)
    z = jax.random.normal(jax.random.key(2), (2, 7, 6, 3))  # LIP starts as average pooling:
    _, y = init_and_apply(jaxpool.create("lip", padding="SAME"), z, deterministic=True)
    np.testing.assert_allclose(y, jaxpool.avg_pool(z, 3, 2, "SAME"), rtol=1e-5, atol=1e-6)


def test_layers_equal_their_functions():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    variables, y = init_and_apply(jaxpool.create("gated", per="layer"), x, deterministic=True)
    p = variables["params"]
    np.testing.assert_allclose(
        y, jaxpool.gated_pool(x, p["gate_kernel"], p["gate_bias"]), rtol=1e-6, atol=1e-6
    )
    variables, y = init_and_apply(jaxpool.create("tdgs"), x, deterministic=True)
    ref = jaxpool.tdgs_pool(x, variables["params"]["temperature"], deterministic=True)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
    key = jax.random.key(11)
    y = jaxpool.create("stochastic").apply({}, x, deterministic=False, rng=key)
    np.testing.assert_array_equal(y, jaxpool.stochastic_pool(x, key=key))
    for test_mode in ("expectation", "official"):
        y = jaxpool.create("s3", test_mode=test_mode).apply({}, x, deterministic=True)
        ref = jaxpool.s3_pool(x, deterministic=True, test_mode=test_mode)
        np.testing.assert_array_equal(y, ref)
    assert not np.allclose(ref, jaxpool.s3_pool(x, deterministic=True))  # the modes differ


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("tdgs", {}), ("gated", {"per": "region_channel"}), ("tree", {"per": "region_channel"})],
)
def test_per_position_parameters_reject_another_spatial_size(name, kwargs):
    module = jaxpool.create(name, **kwargs)
    variables, _ = init_and_apply(module, jnp.ones((1, 8, 8, 2)), deterministic=True)
    with pytest.raises(ValueError, match=r"has shape \((2, )?4, 4,.* needs \((2, )?3, 3,"):
        module.apply(variables, jnp.ones((1, 6, 6, 2)), deterministic=True)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("tdgs", {}),
        ("tdgs", {"per": "channel"}),
        ("gated", {}),
        ("tree", {"per": "region_channel"}),
    ],
)
def test_channel_dependent_parameters_name_the_channel_count(name, kwargs):
    module = jaxpool.create(name, **kwargs)
    variables, _ = init_and_apply(module, jnp.ones((1, 4, 4, 2)), deterministic=True)
    with pytest.raises(
        ValueError, match=r"initialised for inputs with 2 channels and this input has 3"
    ):
        module.apply(variables, jnp.ones((1, 4, 4, 3)), deterministic=True)


@pytest.mark.parametrize("name", ["max", "gated", "tdgs"])
def test_modules_reject_explicit_padding_pairs(name):
    module = jaxpool.create(name, padding=((1, 1), (1, 1)))
    with pytest.raises(ValueError, match=r"padding must be 'VALID' or 'SAME'; got \(\(1, 1\)"):
        init_and_apply(module, jnp.ones((1, 4, 4, 1)), deterministic=True)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("mixed", {"per": "region"}, r"per must be one of \('channel', 'layer'\); got 'region'"),
        ("gated", {"per": "pixel"}, r"per must be one of .*'pixel'"),
        ("tdgs", {"per": "everything"}, r"per must be one of .*'everything'"),
        ("max", {"window_shape": 0}, r"window_shape must be positive"),
        ("avg", {"padding": "full"}, r"padding must be 'VALID' or 'SAME'; got 'full'"),
        ("s3", {"grid_size": 3}, r"grid_size must be a multiple of stride"),
        ("s3", {"test_mode": "mean"}, r"test_mode must be one of 'expectation', 'official'; got"),
        ("lp", {"per": "position"}, r"per must be one of \('layer', 'channel'\); got 'position'"),
        ("lip", {"padding": 2}, r"explicit padding must be between 0 and half the window \(1"),
        ("blur", {"filter_size": 9}, r"filter_size must be an int from 1 to 7; got 9"),
        ("fractional", {"ratio": 3}, r"ratio must be a number in \(1, 2\)"),
        ("softpool", {"padding": "full"}, r"'VALID', 'SAME', an int or a pair of ints .*'full'"),
    ],
)
def test_bad_fields_raise_value_error(name, kwargs, match):
    module = jaxpool.create(name, **kwargs)
    with pytest.raises(ValueError, match=match):
        init_and_apply(module, jnp.ones((1, 8, 8, 2)), deterministic=True)


def test_wrong_rank_names_shape(pooler_name):
    module = jaxpool.create(pooler_name)
    with pytest.raises(ValueError, match=r"rank 4 \(N, H, W, C\) or rank 3 .*shape \(8, 8\)"):
        module.init(
            {"params": jax.random.key(0), "pooling": jax.random.key(1)},
            jnp.ones((8, 8)),
            deterministic=True,
        )


def test_boxed_parameters_apply_as_in_every_flax_layer():
    """nn.with_partitioning boxes a parameter in metadata; apply must see through the box."""
    from flax import linen as nn

    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    for layer in (
        jaxpool.MixedPool(alpha_init=nn.with_partitioning(nn.initializers.zeros, ("model",))),
        jaxpool.LPPool(p_init=nn.with_partitioning(nn.initializers.constant(3.0), ())),
    ):
        variables = layer.init(jax.random.key(1), x)
        assert isinstance(
            jax.tree.leaves(variables, is_leaf=nn.meta.is_axis_metadata)[0], nn.Partitioned
        )
        chex.assert_trees_all_close(
            layer.apply(variables, x), layer.apply(nn.meta.unbox(variables), x)
        )


def test_training_mode_init_with_one_key_works_as_for_dropout_but_apply_needs_the_stream():
    from flax import linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            x = nn.Dropout(0.5)(x, deterministic=not train)
            return jaxpool.StochasticPool()(x, deterministic=not train)

    x = jnp.ones((1, 4, 4, 1))
    variables = Net().init(jax.random.key(0), x, train=True)  # noise from 'params', as Dropout's
    with pytest.raises(ValueError, match=r"pass rngs=\{'pooling': key\} to apply"):
        Net().apply(
            variables,
            x,
            train=True,
            rngs={"params": jax.random.key(1), "dropout": jax.random.key(2)},
        )


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        (
            jaxpool.GatedPool(use_bias="no"),
            r"use_bias must be True or False \(a Python bool\); got 'no'",
        ),
        (
            jaxpool.TDGSPool(init_temperature="hot"),
            r"init_temperature must be a finite real number",
        ),
        (
            jaxpool.TDGSPool(init_temperature=float("nan")),
            r"init_temperature must be a finite real",
        ),
        (jaxpool.TDGSPool(init_temperature=1e39), r"within float32's range"),
        # All of T would start on relu's flat side (a temperature frozen at eps).
        (jaxpool.TDGSPool(init_temperature=-5.0), r"init_temperature must be > 0: the temper"),
    ],
)
def test_hyperparameters_of_parameters_are_checked(layer, match):
    with pytest.raises(ValueError, match=match):
        layer.init(jax.random.key(0), jnp.ones((1, 4, 4, 2)), deterministic=True)


def test_a_uint32_array_that_is_no_legacy_key_is_refused():
    x = jnp.ones((1, 4, 4, 1))
    f = jaxpool.functional.stochastic_pool
    for bad in (jnp.arange(4, dtype=jnp.uint32), jnp.zeros((3,), jnp.uint32)):
        with pytest.raises(ValueError, match=r"stochastic_pool: key must be a PRNG key"):
            f(x, key=bad)
    with pytest.raises(ValueError, match=r"a batch of raw keys of shape \(2, 2\): jax.vmap"):
        f(x, key=jax.random.split(jax.random.PRNGKey(0)))
    raw = jax.random.key_data(jax.random.key(1))
    with jax.enable_custom_prng(True):  # PRNGKey then makes typed keys; raw data stays a key
        assert _windows.check_key(raw, "f") is raw
    assert f(x, key=jax.random.PRNGKey(1)).shape == (1, 2, 2, 1)
