"""The string registry: names, creation, errors."""

import pytest
from flax import linen as nn

import jaxpool


def test_available_names():
    assert jaxpool.available() == (
        "max",
        "avg",
        "mixed",
        "gated",
        "tree",
        "stochastic",
        "s3",
        "tdgs",
    )


def test_create_returns_configured_modules(pooler_name):
    module = jaxpool.create(pooler_name)
    assert isinstance(module, nn.Module)
    assert "deterministic" in jaxpool.hyperparameters(pooler_name)
    if pooler_name != "s3":
        assert jaxpool.create(pooler_name, window_shape=3).window_shape == 3
        assert (
            module.strides is None and module.padding == "VALID" and module.window_shape == (2, 2)
        )


def test_unknown_name_lists_available():
    with pytest.raises(
        ValueError,
        match=r"unknown pooler 'lp'; available: max, avg, mixed, gated, tree, stochastic, s3, tdgs",
    ):
        jaxpool.create("lp")


def test_unknown_argument_lists_allowed():
    with pytest.raises(
        ValueError, match=r"pooler 'mixed' has no argument\(s\) temperature; allowed: .*per"
    ):
        jaxpool.create("mixed", temperature=1.0)
    with pytest.raises(ValueError, match=r"no argument\(s\) window_shape"):
        jaxpool.create("s3", window_shape=2)
