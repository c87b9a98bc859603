"""Tests of train/core/xla_gpu.py: when deterministic XLA:GPU ops are requested in XLA_FLAGS, and
that every pooler's training step compiles under them as it is."""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import pytest

import jaxpool
from configs import digits
from train.core import run_config, steps, xla_gpu


def test_deterministic_gpu_ops_are_requested_unless_the_user_chose():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_gpu.request_deterministic_ops(env)
    assert env["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        xla_gpu.DETERMINISTIC_FLAG,
    ]
    assert not xla_gpu.request_deterministic_ops(env)  # not twice
    for mine in ("--xla_gpu_deterministic_ops=false", "--xla_gpu_exclude_nondeterministic_ops"):
        env = {"XLA_FLAGS": mine}
        assert not xla_gpu.request_deterministic_ops(env) and env == {"XLA_FLAGS": mine}


# Under --xla_gpu_deterministic_ops XLA:GPU refuses to compile select-and-scatter ("does not have
# a deterministic implementation", google/flax#4233: lax.reduce_window's max derivative), and
# rewrites each scatter whose result could depend on the order of its updates (indices not marked
# unique, a float or non-associative combiner) into a slower deterministic program.  The lowered
# StableHLO is what every backend compiles, so the check runs anywhere.
def _scatters(stablehlo: str) -> list[tuple[bool, str, str]]:
    """``(unique_indices, combiner op, element type)`` of every scatter in ``stablehlo``."""
    lines = stablehlo.splitlines()
    found = []
    for i, line in enumerate(lines):
        if '"stablehlo.scatter"' in line:
            arg_type = re.search(r"\^bb0\(%\w+: tensor<(\w+)>", lines[i + 1]).group(1)
            combiner = re.search(r"stablehlo\.(\w+)", lines[i + 2]).group(1)
            found.append(("unique_indices = true" in line, combiner, arg_type))
    # Every scatter read: another printing of the op (a newer JAX) must fail here, not pass empty.
    printed = len(re.findall(r'=\s*"?stablehlo\.scatter\b', stablehlo))
    assert len(found) == printed, f"read {len(found)} of {printed} scatters: a new printed form?"
    return found


def _kept_under_deterministic_ops(unique: bool, combiner: str, element_type: str) -> bool:
    # XLA's IsScatterDeterministic: unique indices, or an associative combiner (min and max; add,
    # multiply, or, xor on integers).
    integer = element_type.startswith(("i", "ui"))
    associative_on_integers = ("add", "multiply", "or", "xor")
    return (
        unique
        or combiner in ("minimum", "maximum")
        or (integer and combiner in associative_on_integers)
    )


@pytest.mark.parametrize("pooler", jaxpool.available())
def test_every_pooler_trains_with_ops_that_deterministic_xla_gpu_compiles_as_they_are(pooler):
    # The step of one run, and of a seed group (the sweep's seeds vmapped), on both paths.
    shape = (16, 16, 1)
    for implementation, seeds in itertools.product(("reference", "fast"), (None, 2)):
        config = digits.get_config()
        config.update(pooler=pooler, implementation=implementation)
        spec = run_config.describe(config, shape, 10, 1024)
        lead = () if seeds is None else (seeds,)
        keys = jax.random.split(jax.random.key(0), seeds) if seeds else jax.random.key(0)
        state = jax.eval_shape(lambda k, spec=spec: steps.create_train_state(spec, k), keys)
        batch = {
            "image": jax.ShapeDtypeStruct((*lead, 4, *shape), jnp.uint8),
            "label": jax.ShapeDtypeStruct((*lead, 4), jnp.int32),
        }
        step = steps.train_step if seeds is None else jax.vmap(steps.train_step)
        text = jax.jit(step).lower(state, batch, keys).as_text()
        assert "stablehlo.select_and_scatter" not in text, (implementation, seeds)
        for scatter in _scatters(text):
            assert _kept_under_deterministic_ops(*scatter), (implementation, seeds, scatter)


def test_the_scatter_check_reads_what_it_is_meant_to():
    # The scatters of a float gather's derivative: rewritten unless marked unique.
    x = jnp.ones(8)
    take = lambda v, **hints: jnp.take(v, jnp.array([3, 1]), **hints).sum()
    plain = _scatters(jax.jit(jax.grad(take)).lower(x).as_text())
    marked = _scatters(jax.jit(jax.grad(lambda v: take(v, unique_indices=True))).lower(x).as_text())
    assert plain == [(False, "add", "f32")] and not _kept_under_deterministic_ops(*plain[0])
    assert marked == [(True, "add", "f32")] and _kept_under_deterministic_ops(*marked[0])
    counts = jnp.zeros(4, jnp.int32)
    integer = _scatters(jax.jit(lambda c: c.at[jnp.array([1, 1])].add(1)).lower(counts).as_text())
    assert integer == [(False, "add", "i32")] and _kept_under_deterministic_ops(*integer[0])
