"""The ``>>>`` examples in jaxpool's docstrings run and print what they say (docs/api.md shows
them), with the names a user's file would have imported."""

from __future__ import annotations

import doctest
import pkgutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import jaxpool

MODULES = sorted(
    f"jaxpool.{m.name}"
    for m in pkgutil.iter_modules(jaxpool.__path__)
    if not m.name.startswith("_")
)


@pytest.mark.parametrize("name", ["jaxpool", *MODULES])
def test_docstring_examples_run(name):
    module = __import__(name, fromlist=["_"])
    names = {"jaxpool": jaxpool, "jax": jax, "jnp": jnp, "nn": nn, "nnx": nnx}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    examples = 0
    for test in doctest.DocTestFinder().find(module, globs={**vars(module), **names}):
        examples += len(test.examples)
        runner.run(test)
    failed, _ = runner.summarize(verbose=False)
    assert failed == 0
    if name in ("jaxpool.modules", "jaxpool.nnx", "jaxpool.registry"):
        assert examples > 0
