"""Tests of train/core/xla_gpu.py: when deterministic XLA:GPU ops are requested in XLA_FLAGS, and
that every pooler's training and evaluation programs compile under them as they are."""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpool
from configs import digits
from train.core import device_loop, run_config, steps, xla_gpu


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


def _kept_program(text: str) -> bool:
    return "stablehlo.select_and_scatter" not in text and all(
        _kept_under_deterministic_ops(*scatter) for scatter in _scatters(text)
    )


@pytest.mark.parametrize("pooler", jaxpool.available())
def test_every_pooler_trains_with_ops_that_deterministic_xla_gpu_compiles_as_they_are(pooler):
    # The programs a GPU compiles: a training chunk (the steps' loop, batch gathers and writes)
    # and the evaluation of a split, for one run (with micro-batches, which a user may set) and a
    # seed group (the sweep's seeds vmapped), on both paths.
    shape = (16, 16, 1)
    _, batch_sharding = device_loop.data_shardings()
    images = jax.ShapeDtypeStruct((64, *shape), jnp.uint8)
    labels = jax.ShapeDtypeStruct((64,), jnp.int32)
    mask = jax.ShapeDtypeStruct((64,), jnp.float32)
    mean = std = jax.ShapeDtypeStruct((1,), jnp.float32)
    for implementation, seeds in itertools.product(("reference", "fast"), (None, 2)):
        config = digits.get_config()
        config.update(pooler=pooler, implementation=implementation)
        spec = run_config.describe(config, shape, 10, 1024)
        lead = () if seeds is None else (seeds,)
        keys = jax.random.split(jax.random.key(0), seeds) if seeds else jax.random.key(0)
        state = jax.eval_shape(lambda k, spec=spec: steps.create_train_state(spec, k), keys)
        order = jax.ShapeDtypeStruct((*lead, 64), jnp.int32)
        chunk = device_loop.train_chunk if seeds is None else device_loop.train_chunk_seeds
        evaluate = device_loop.evaluate_split if seeds is None else device_loop.evaluate_split_seeds
        train_text = chunk.lower(
            state, images, labels, order, np.int32(0), np.int32(2), keys, mean, std,
            step_fn=steps.step_fn(2 if seeds is None else 1), batch_size=8, length=4,
            batch_sharding=batch_sharding,
        ).as_text()  # fmt: skip
        eval_text = evaluate.lower(
            state, images, labels, mask, mean, std, eval_fn=steps.eval_step, batch_size=16,
            batch_sharding=batch_sharding,
        ).as_text()  # fmt: skip
        assert _kept_program(train_text), (implementation, seeds, "train")
        assert _kept_program(eval_text), (implementation, seeds, "eval")


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
