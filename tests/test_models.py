"""Tests of train/core/models.py: the standard CNN with every registry pooler."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import pytest

import jaxpool
from jaxpool import _windows
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


@pytest.mark.parametrize("pooler", jaxpool.available())
def test_cnn_with_every_pooler_on_mnist_sized_input(pooler):
    model, variables, x = _init(pooler, (2, 28, 28, 1))
    chex.assert_shape(_apply(model, variables, x, deterministic=True), (2, 10))
    rngs = {"pooling": jax.random.key(2)}
    chex.assert_shape(_apply(model, variables, x, deterministic=False, rngs=rngs), (2, 10))


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


# --------------------------------------------------------------------------- implementation


def _variables(implementation: str, pooler: str = "avg", shape=(2, 8, 8, 1)):
    model = models.CNN(num_classes=10, pooler=pooler, implementation=implementation)
    keys = {"params": jax.random.key(0), "pooling": jax.random.key(1)}
    return model, model.init(keys, jnp.zeros(shape), deterministic=False)


@pytest.mark.parametrize("pooler", ["max", "tdgs"])
def test_fast_and_reference_have_the_same_parameters(pooler):
    # The same names, shapes and initial values: checkpoints load into either implementation.
    _, fast = _variables("fast", pooler)
    _, reference = _variables("reference", pooler)
    chex.assert_trees_all_equal(fast, reference)


EPS = float(jnp.finfo(jnp.float32).eps)
# Contraction lengths of the CNN on 8x8x1 digits, batch 2 (sides 8, 4, 2, 1; + 1 for each bias):
# forward: conv 9*1+1, 9*16+1, 9*32+1, avg pools 4 each, dense 64+1, 128+1;
# backward: input gradients 9*32, 9*64, 128, 10, pools 1; kernel gradients 2*64, 2*16, 2*4, 2, 2.
TERMS = (10 + 145 + 289 + 12 + 65 + 129) + (288 + 576 + 128 + 10 + 3) + (128 + 32 + 8 + 2 + 2)


def _assert_within(ours, theirs, magnitude):
    """``|ours - theirs| <= 8 * TERMS * eps * magnitude`` over two trees.

    To first order, a chain of float32 sums of ``K_1, K_2, ...`` products is off from the exact
    result by at most ``(K_1 + K_2 + ...) * eps`` times the same chain run on absolute values
    (each sum by the classic bound gamma_K; ReLU and average pooling are monotone and
    1-Lipschitz, so errors pass through them no larger): ``magnitude``.  The two implementations
    differ by at most twice that; a factor 4 more leaves room for GPU convolution algorithms
    that do not sum plainly (Winograd).
    """

    def check(a, b, m):
        excess = jnp.abs(a - b) - 8 * TERMS * EPS * m
        assert float(excess.max()) <= 0, f"worst excess {float(excess.max()):.3g}"

    jax.tree_util.tree_map(check, ours, theirs, magnitude)


def test_fast_and_reference_compute_the_same_values_gradients_and_tangents():
    # Average pooling (linear): the chain on absolute values bounds every path.  |c| weights
    # the logits, so the gradient on absolute values bounds both gradients.
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    c = jax.random.normal(jax.random.key(3), (2, 10))
    fast, variables = _variables("fast")
    reference, _ = _variables("reference")
    params = jax.tree_util.tree_map(lambda p: p + 0.05, variables["params"])  # non-zero biases
    tangent = jax.tree_util.tree_map(jnp.ones_like, params)

    def results(model, params, x, c, tangent):
        def loss(p):
            return jnp.sum(c * model.apply({"params": p}, x, deterministic=True))

        logits = model.apply({"params": params}, x, deterministic=True)
        return logits, jax.grad(loss)(params), jax.jvp(loss, (params,), (tangent,))[1]

    results = jax.jit(results, static_argnums=0)  # one program per model, not one per op
    with jax.default_matmul_precision("highest"):
        ours = results(fast, params, x, c, tangent)
        theirs = results(reference, params, x, c, tangent)
        abs_params = jax.tree_util.tree_map(jnp.abs, params)
        magnitude = results(reference, abs_params, jnp.abs(x), jnp.abs(c), tangent)
    _assert_within(ours, theirs, magnitude)


@pytest.mark.parametrize("implementation", ["auto", "reference", "fast"])
def test_forward_mode_runs_through_every_implementation(implementation):
    model, variables = _variables(implementation, pooler="max")
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 1))
    tangent = jax.tree_util.tree_map(jnp.ones_like, variables)
    apply = functools.partial(model.apply, x=x, deterministic=True)
    _, y_dot = jax.jvp(apply, (variables,), (tangent,))
    chex.assert_shape(y_dot, (2, 10))
    chex.assert_tree_all_finite(y_dot)


def test_auto_takes_the_fast_convolution_on_cpu_only():
    model, variables = _variables("auto")
    x = jnp.zeros((2, 8, 8, 1))
    program = str(jax.make_jaxpr(lambda v: model.apply(v, x, deterministic=True))(variables))
    assert ("conv_same" in program) == _windows.on_measured_backend()


def test_the_switch_reaches_the_poolers_unless_pooler_kwargs_set_it(monkeypatch):
    calls = []
    create = jaxpool.create

    def recording_create(name, **kwargs):
        calls.append((name, kwargs.get("implementation")))
        return create(name, **kwargs)

    monkeypatch.setattr(jaxpool, "create", recording_create)
    x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    for pooler, kwargs, implementation, want in [
        ("max", None, "reference", "reference"),
        ("max", {"implementation": "fast"}, "reference", "fast"),  # pooler_kwargs win
        ("tdgs", None, "auto", "auto"),
        ("softpool", None, "reference", None),  # a reference-only pooler takes no switch
    ]:
        calls.clear()
        model = models.CNN(10, pooler, kwargs, implementation=implementation)
        jax.eval_shape(functools.partial(model.init, deterministic=True), jax.random.key(0), x)
        assert calls and all(call == (pooler, want) for call in calls), (pooler, calls)


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match=r"implementation must be one of 'auto', 'reference'"):
        _variables("quick")
