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
        "softpool",
        "lp",
        "lip",
        "blur",
        "fractional",
    )


def test_create_returns_configured_modules(pooler_name):
    module = jaxpool.create(pooler_name)
    assert isinstance(module, nn.Module)
    assert "deterministic" in jaxpool.hyperparameters(pooler_name)
    if pooler_name not in ("s3", "fractional"):
        assert jaxpool.create(pooler_name, window_shape=3).window_shape == 3
    if pooler_name not in ("s3", "fractional", "lip", "blur"):  # those have their papers' geometry
        assert (
            module.strides is None and module.padding == "VALID" and module.window_shape == (2, 2)
        )
    assert jaxpool.is_stochastic(pooler_name) == (
        pooler_name in ("stochastic", "s3", "tdgs", "fractional")
    )


def test_unknown_name_lists_available():
    with pytest.raises(
        ValueError,
        match=r"unknown pooler 'gem'; available: max, avg, mixed, gated, tree, stochastic, s3, tdgs, "
        r"softpool, lp, lip, blur, fractional",
    ):
        jaxpool.create("gem")


def test_unknown_argument_lists_allowed():
    with pytest.raises(
        ValueError, match=r"pooler 'mixed' has no argument\(s\) temperature; allowed: .*per"
    ):
        jaxpool.create("mixed", temperature=1.0)
    with pytest.raises(ValueError, match=r"no argument\(s\) window_shape"):
        jaxpool.create("s3", window_shape=2)
