"""The NNX layers: equal to the Linen layers, trainable under nnx.jit, split/merge, modes, errors."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import STOCHASTIC
from flax import nnx
from sklearn.datasets import load_digits

import jaxpool
import jaxpool.nnx as pnnx

HW, C = (6, 6), 3


def _pair(name, **kwargs):
    """(Linen layer, NNX layer) with the same hyperparameters; the NNX one initialised."""
    linen = jaxpool.create(name, **kwargs)
    layer = jaxpool.create(
        name, api="nnx", in_features=C, input_size=HW, rngs=nnx.Rngs(0, pooling=1), **kwargs
    )
    return linen, layer


def _params(layer):
    return {name: getattr(layer, name)[...] for name in layer.param_names}


def test_every_registered_pooler_has_an_nnx_layer_of_the_same_name(pooler_name):
    linen_cls = jaxpool.registry.pooler_class(pooler_name)
    cls = pnnx.twin(linen_cls)
    assert cls.__name__ == linen_cls.__name__ and getattr(pnnx, cls.__name__) is cls


def test_linen_and_nnx_give_the_same_outputs_and_gradients(pooler_name):
    linen, layer = _pair(pooler_name)
    x = jax.random.normal(jax.random.key(0), (2, *HW, C))
    params = _params(layer)
    if pooler_name == "lip":  # its zero init leaves some gradients at 0; a random kernel does not
        params["logit_kernel"] = jax.random.normal(jax.random.key(5), params["logit_kernel"].shape)
    for det in (True, False):
        key = jax.random.key(7)

        def linen_loss(p, x, det=det, key=key):
            return (linen.apply({"params": p}, x, deterministic=det, rng=key) ** 2).sum()

        def nnx_loss(layer, x, det=det, key=key):
            return (layer(x, deterministic=det, rngs=key) ** 2).sum()

        for name, value in params.items():
            getattr(layer, name)[...] = value
        expected = jax.value_and_grad(linen_loss, (0, 1))(params, x)
        value, (g_layer, g_x) = nnx.value_and_grad(nnx_loss, argnums=(0, 1))(layer, x)
        got = (value, ({name: g_layer[name][...] for name in layer.param_names}, g_x))
        chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-6)


def test_parameters_have_the_linen_names_shapes_and_initial_distributions(pooler_name):
    linen, layer = _pair(pooler_name)
    x = jnp.ones((1, *HW, C))
    keys = {"params": jax.random.key(0), "pooling": jax.random.key(1)}
    variables = linen.init(keys, x, deterministic=True)
    shapes = jax.tree_util.tree_map(jnp.shape, variables.get("params", {}))
    assert jax.tree_util.tree_map(jnp.shape, _params(layer)) == shapes
    for name, value in _params(layer).items():
        ref = np.asarray(variables["params"][name])
        # same initializer: constant ones match exactly, random ones share their range
        if np.all(ref == ref.flat[0]):
            np.testing.assert_array_equal(value, ref)
        else:
            assert ref.min() - 0.5 <= np.min(value) and np.max(value) <= ref.max() + 0.5, name


@pytest.mark.parametrize("name", STOCHASTIC)
def test_deterministic_follows_eval_train_and_the_call(name):
    layer = jaxpool.create(name, api="nnx", in_features=C, input_size=HW, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, *HW, C))
    with pytest.raises(ValueError, match=rf"{type(layer).__name__} is stochastic .*model.eval\(\)"):
        layer(x)
    layer.eval()
    expected = layer(x, deterministic=True)
    np.testing.assert_array_equal(layer(x), expected)
    layer.train()
    assert not np.array_equal(layer(x), expected) or name == "fractional"
    first, second = layer(x), layer(x)  # the layer's own stream advances
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(layer(x, deterministic=True), expected)  # the call wins
    key = jax.random.key(3)
    np.testing.assert_array_equal(layer(x, rngs=key), layer(x, rngs=key))
    # Without a noise stream (no rngs, or only a params stream), training needs the call's key.
    quiet = jaxpool.create(name, api="nnx", in_features=C, input_size=HW, rngs=nnx.Rngs(params=0))
    np.testing.assert_array_equal(quiet(x, deterministic=True), expected)
    np.testing.assert_array_equal(quiet(x, deterministic=False, rngs=key), layer(x, rngs=key))
    with pytest.raises(ValueError, match=r"needs noise: give rngs=nnx.Rngs\(pooling=seed\)"):
        quiet(x, deterministic=False)
    if not layer.param_names:
        with pytest.raises(ValueError, match=r"needs noise: give rngs=nnx.Rngs\(pooling=seed\)"):
            jaxpool.create(name, api="nnx")(x, deterministic=False)


@pytest.mark.skipif(not hasattr(nnx, "view"), reason="nnx.view is new in flax 0.12.4")
def test_nnx_view_switches_the_mode_as_for_dropout():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.dropout = nnx.Dropout(0.5, rngs=rngs)
            self.pool = pnnx.StochasticPool(rngs=rngs)
            self.max = pnnx.MaxPool()

    net = Net(nnx.Rngs(0))
    net.train()
    x = jax.random.uniform(jax.random.key(0), (2, *HW, C))
    evaluating = nnx.view(net, deterministic=True)
    assert evaluating.dropout.deterministic and evaluating.pool.deterministic
    np.testing.assert_array_equal(evaluating.pool(x), net.pool(x, deterministic=True))
    assert nnx.view(evaluating, deterministic=False).pool.deterministic is False
    # A model of jaxpool layers alone takes the view too (flax raises where no layer does).
    assert nnx.view(pnnx.MaxPool(), deterministic=True).deterministic is True


def test_positional_hyperparameters_follow_the_linen_field_order():
    x = jax.random.normal(jax.random.key(0), (1, 6, 6, 2))
    np.testing.assert_array_equal(pnnx.MaxPool(3)(x), jaxpool.MaxPool(3).apply({}, x))
    np.testing.assert_array_equal(
        pnnx.AvgPool((3, 2), (1, 2), "SAME")(x),
        jaxpool.AvgPool((3, 2), (1, 2), "SAME").apply({}, x),
    )
    assert pnnx.MixedPool(3, in_features=np.int64(2), rngs=nnx.Rngs(0)).alpha.shape == (2,)
    too_many = len(pnnx.hyperparameter_names(jaxpool.MaxPool)) + 1
    with pytest.raises(ValueError, match=r"MaxPool takes at most \d+ positional arguments, its "):
        pnnx.MaxPool(*[2] * too_many)
    with pytest.raises(
        ValueError, match=r"MaxPool got window_shape both by position and by keyword"
    ):
        pnnx.MaxPool(3, window_shape=2)


def test_split_and_merge_round_trip():
    layer = pnnx.TDGSPool(in_features=C, input_size=HW, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, *HW, C))
    graphdef, state = nnx.split(layer)
    merged = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(merged(x, deterministic=True), layer(x, deterministic=True))
    assert merged.per == "position" and merged.temperature.shape == (3, 3, C)


class _DigitsNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.pool = pnnx.TDGSPool(in_features=8, input_size=(8, 8), rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 8, 10, rngs=rngs)

    def __call__(self, x):
        x = self.pool(nnx.relu(self.conv(x)))
        return self.head(x.reshape(x.shape[0], -1))


def test_a_stochastic_pooler_trains_under_nnx_jit():
    digits = load_digits()
    x = jnp.asarray(digits.images[:256, :, :, None] / 16.0, jnp.float32)
    y = jnp.asarray(digits.target[:256])
    model = _DigitsNet(nnx.Rngs(0, pooling=1))
    model.train()
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, x, y)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses
    assert not np.allclose(model.pool.temperature[...], 1.0)  # the temperatures moved too


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        (
            "mixed",
            {"temperature": 1.0},
            r"pooler 'mixed' has no argument\(s\) temperature; allowed",
        ),
        ("tdgs", {"in_features": C, "rngs": nnx.Rngs(0)}, r"input_size=\(H, W\)"),
        (
            "gated",
            {"input_size": HW, "rngs": nnx.Rngs(0)},
            r"GatedPool.gate_kernel has a shape that depends on the channel count",
        ),
        ("lp", {"in_features": C}, r"give rngs=nnx.Rngs\(seed\)"),
        (
            "mixed",
            {"per": "region", "rngs": nnx.Rngs(0)},
            r"per must be one of \('channel', 'layer'\)",
        ),
        ("max", {"in_features": 0}, r"in_features must be a positive int; got 0"),
    ],
)
def test_construction_errors_name_the_fix(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxpool.create(name, api="nnx", **kwargs)


def test_the_classes_check_their_arguments_too():
    with pytest.raises(
        ValueError, match=r"MixedPool has no argument\(s\) tau; allowed: in_features"
    ):
        pnnx.MixedPool(tau=1.0)


def test_call_errors_are_those_of_linen():
    layer = pnnx.TDGSPool(in_features=2, input_size=(8, 8), rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError, match=r"initialised for inputs with 2 channels and this input has 3"
    ):
        layer(jnp.ones((1, 8, 8, 3)), deterministic=True)
    with pytest.raises(ValueError, match=r"has shape \(4, 4, 2\) but this input needs \(3, 3, 2\)"):
        layer(jnp.ones((1, 6, 6, 2)), deterministic=True)
    with pytest.raises(ValueError, match=r"rank 4 \(N, H, W, C\) or rank 3"):
        layer(jnp.ones((8, 8)), deterministic=True)
    with pytest.raises(ValueError, match=r"api must be one of \('linen', 'nnx'\); got 'torch'"):
        jaxpool.create("max", api="torch")


def test_a_parameter_of_another_rank_is_named_not_an_index_error():
    x = jnp.ones((1, 8, 8, C))
    per_channel = pnnx.LPPool(per="channel", in_features=C, rngs=nnx.Rngs(0))
    per_layer = pnnx.LPPool(per="layer", rngs=nnx.Rngs(0))
    nnx.update(per_layer, nnx.state(per_channel))
    with pytest.raises(ValueError, match=r"LPPool.p has shape \(3,\) .* it has 1 axes, not 0"):
        per_layer(x)
    per_channel = pnnx.MixedPool(in_features=C, rngs=nnx.Rngs(0))
    per_channel.alpha = nnx.Param(jnp.zeros((4, C)))  # an ensemble's stacked parameter
    with pytest.raises(ValueError, match=r"2 axes, not 1. A parameter stacked over an ensemble"):
        per_channel(x)


def test_rngs_may_be_a_stream_as_for_dropout_and_nothing_else():
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, C))
    rngs = nnx.Rngs(0, pooling=1)
    stochastic = pnnx.StochasticPool(rngs=rngs.pooling)
    assert not np.array_equal(
        stochastic(x, deterministic=False), stochastic(x, deterministic=False)
    )
    tdgs = pnnx.TDGSPool(per="channel", in_features=C, rngs=rngs.pooling)
    assert tdgs.temperature.shape == (C,) and tdgs(x, deterministic=False).shape == (2, 4, 4, C)
    for bad in (0, jax.random.key(0), {"pooling": 1}):
        with pytest.raises(TypeError, match=r"rngs must be an nnx.Rngs, an nnx.RngStream or None"):
            pnnx.StochasticPool(rngs=bad)


def test_deterministic_must_be_a_bool_everywhere():
    """A string is truthy: 'false' would silently mean inference."""
    x = jnp.ones((1, 8, 8, C))
    match = r"deterministic must be True or False \(a Python bool\); got 'false'"
    with pytest.raises(ValueError, match=match):
        pnnx.StochasticPool(deterministic="false", rngs=nnx.Rngs(0))
    layer = pnnx.StochasticPool(rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=match):
        layer(x, deterministic="false")
    with pytest.raises(ValueError, match=match):
        layer.set_view(deterministic="false")
    with pytest.raises(ValueError, match=match):
        jaxpool.StochasticPool(deterministic="false").apply({}, x)
    # the other layers ignore it, a traced value included (nn.remat, nn.jit, jax.eval_shape)
    jax.eval_shape(jaxpool.MaxPool().init, jax.random.key(0), x, deterministic=True)
    assert pnnx.MaxPool()(x, deterministic=jnp.array(True)).shape == (1, 4, 4, C)
    key, f = jax.random.key(0), jaxpool.functional
    calls = {
        "stochastic": lambda d: f.stochastic_pool(x, key=key, deterministic=d),
        "s3": lambda d: f.s3_pool(x, key=key, deterministic=d),
        "tdgs": lambda d: f.tdgs_pool(x, jnp.ones(()), key=key, deterministic=d),
        "fractional": lambda d: f.fractional_max_pool(x, key=key, deterministic=d),
    }
    assert sorted(calls) == sorted(STOCHASTIC)
    for name, call in calls.items():
        with pytest.raises(ValueError, match=match):
            call("false")
        assert call(np.bool_(True)).shape[0] == 1, name  # NumPy's bool is a bool
        with pytest.raises(ValueError, match=r"known when tracing.*make it static"):
            jax.jit(call)(True)
        assert call(jnp.array(True)).shape == call(np.array(True)).shape  # concrete 0-d bools


def test_hyperparameters_given_as_arrays_stay_static():
    layer = pnnx.TDGSPool(tau=jnp.float32(0.5), eps=np.array(0.25), per="layer", rngs=nnx.Rngs(0))
    assert set(nnx.to_pure_dict(nnx.state(layer))) == {"rngs", "temperature"}
    assert (layer.tau, layer.eps) == (0.5, 0.25) and type(layer.tau) is float
    # an array of several values stays one: per-channel values work as in Linen
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, C))
    coefficient = jnp.array([10.0, 12.0, 14.0])
    lip = pnnx.LIPPool(coefficient=coefficient, in_features=C, rngs=nnx.Rngs(0))
    lip.logit_kernel[...] = jax.random.normal(jax.random.key(2), lip.logit_kernel.shape)
    params = {"params": {name: getattr(lip, name)[...] for name in lip.param_names}}
    expected = jaxpool.LIPPool(coefficient=coefficient).apply(params, x)
    np.testing.assert_allclose(lip(x), expected, rtol=1e-6, atol=1e-6)
    tdgs = pnnx.TDGSPool(
        per="channel", init_temperature=np.array([1.0, 2.0, 3.0]), in_features=C, rngs=nnx.Rngs(0)
    )
    assert np.all(np.abs(tdgs.temperature[...] - np.array([1.0, 2.0, 3.0])) <= 0.5)


def test_the_signature_lists_the_hyperparameters_and_tabulate_works():
    import inspect

    signature = inspect.signature(pnnx.TDGSPool)
    assert signature.parameters["tau"].default == 1.0
    assert signature.parameters["window_shape"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert signature.parameters["rngs"].kind is inspect.Parameter.KEYWORD_ONLY
    # an instance's signature is its __call__'s (jax.jit's argnames use it); a subclass with its
    # own constructor has its own
    layer = pnnx.MixedPool(in_features=C, rngs=nnx.Rngs(0))
    assert list(inspect.signature(layer).parameters) == ["x", "deterministic", "rngs"]

    class Wide(pnnx.MaxPool):
        def __init__(self, width: int):
            super().__init__(width)

    assert list(inspect.signature(Wide).parameters) == ["width"]
    model = nnx.Sequential(
        nnx.Conv(1, C, (3, 3), rngs=nnx.Rngs(0)), pnnx.MixedPool(in_features=C, rngs=nnx.Rngs(0))
    )
    table = nnx.tabulate(model, jnp.ones((1, 8, 8, 1)))
    assert "MixedPool" in table and "alpha" in table
