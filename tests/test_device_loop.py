"""Tests of train/core/device_loop.py: on-device epoch order, chunk plans, and chunked training equal
to step-by-step training on the same batches."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from conftest import assert_gradients_close

from configs import digits as digits_config
from train.core import device_loop, input_pipeline, loop, run_config, steps

BATCH = 32
STEPS = 7


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    key = device_loop.data_key(3)
    a = np.asarray(device_loop.epoch_order(key, 1, 100))
    assert a.dtype == np.int32
    np.testing.assert_array_equal(np.sort(a), np.arange(100))
    np.testing.assert_array_equal(a, device_loop.epoch_order(device_loop.data_key(3), 1, 100))
    assert not np.array_equal(a, device_loop.epoch_order(key, 2, 100))
    assert not np.array_equal(a, device_loop.epoch_order(device_loop.data_key(4), 1, 100))


def test_keys_of_seeds_are_those_of_the_python_ints_alone_and_in_a_group():
    # The jitted key functions take the seeds as uint32 arguments (one program for all seeds);
    # the keys must equal those of jax.random.key(int), or resumed runs would change.
    from train.core import loop

    seeds = [0, 7, 2**31, 2**32 - 1]
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    data = jax.random.key_data
    grouped = loop._seed_keys(seeds, sharding), device_loop.data_key(seeds, sharding)
    for i, seed in enumerate(seeds):
        want = [*jax.random.split(jax.random.key(seed))]
        want.append(jax.random.fold_in(jax.random.key(seed), device_loop._DATA_STREAM))
        alone = [*loop._seed_keys(seed, sharding), device_loop.data_key(seed)]
        in_group = [grouped[0][0][i], grouped[0][1][i], grouped[1][i]]
        for got in (alone, in_group):
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(data(a), data(b), err_msg=str(seed))


def test_data_key_is_not_the_init_or_train_key():
    data = jax.random.key_data(device_loop.data_key(0))
    for key in jax.random.split(jax.random.key(0)):
        assert not np.array_equal(data, jax.random.key_data(key))


@pytest.mark.parametrize(
    ("start", "steps", "per_chunk", "want"),
    [
        (0, 22, 10, [(0, 10), (10, 10), (20, 2)]),
        (5, 22, 10, [(5, 10), (15, 7)]),
        (0, 3, 50, [(0, 3)]),
        (22, 22, 10, []),
        (0, 4, 1, [(0, 1), (1, 1), (2, 1), (3, 1)]),
    ],
)
def test_chunks_cover_the_remaining_steps_once(start, steps, per_chunk, want):
    assert list(device_loop.chunks(start, steps, per_chunk)) == want


def test_chunks_refuse_a_non_positive_size():
    with pytest.raises(ValueError, match="steps_per_chunk must be >= 1, got 0"):
        list(device_loop.chunks(0, 10, 0))


@pytest.fixture(scope="module")
def setup():
    config = digits_config.get_config()
    config.pooler = "stochastic"  # random: the per-step pooling keys must match too
    data = input_pipeline.load("digits")
    spec = run_config.describe(config, data.image_shape, 10, len(data.train))
    state = steps.create_train_state(spec, jax.random.key(0))
    images, labels = (jax.numpy.asarray(v) for v in (data.train.images, data.train.labels))
    order = device_loop.epoch_order(device_loop.data_key(0), 0, len(data.train))
    return state, images, labels, order


def _run(setup, plan, length):
    state, images, labels, order = setup
    state = jax.tree_util.tree_map(lambda v: v.copy(), state)  # chunks donate their state
    losses = []
    for first, count in plan:
        state, out = device_loop.train_chunk(
            state,
            images,
            labels,
            order,
            first,
            count,
            jax.random.key(1),
            None,
            None,
            step_fn=steps.train_step,
            batch_size=BATCH,
            length=length,
        )
        assert np.all(np.asarray(out["loss"])[count:] == 0)
        losses.extend(np.asarray(out["loss"])[:count].tolist())
    return state, losses


def test_any_chunk_split_gives_identical_training(setup):
    whole, whole_losses = _run(setup, [(0, 4), (4, 3)], length=4)
    split, split_losses = _run(setup, [(0, 1), (1, 4), (5, 2)], length=4)
    assert whole_losses == split_losses and len(whole_losses) == STEPS
    assert int(whole.step) == int(split.step) == STEPS
    jax.tree_util.tree_map(np.testing.assert_array_equal, whole.params, split.params)


@pytest.mark.usefixtures("highest_precision")
def test_chunked_training_equals_step_by_step_on_the_permuted_batches(setup):
    """Step s of a chunk is the step function on the epoch's permuted batch s with the run's key.
    Two programs (the step inside the chunk's loop, and alone), which a GPU may sum in other
    orders: compared one step at a time from a common state, by their gradients, in full float32
    (:func:`conftest.assert_gradients_close`).  A chunk of several steps equals its split into
    others bitwise (the same program): the test above."""
    state, images, labels, order = setup
    rows = np.asarray(order)
    step = jax.jit(steps.train_step)
    for s in range(STEPS):
        chunked, losses = _run((state, images, labels, order), [(s, 1)], length=STEPS)
        idx = rows[s * BATCH : (s + 1) * BATCH]
        stepped, out = step(state, {"image": images[idx], "label": labels[idx]}, jax.random.key(1))
        np.testing.assert_allclose(losses, [float(out["loss"])], rtol=1e-5)
        assert int(chunked.step) == int(stepped.step) == s + 1
        assert_gradients_close(chunked, stepped)
        state = stepped


@pytest.mark.parametrize("batch_size", [7, 359, 512])
@pytest.mark.usefixtures("highest_precision")  # a compiled loop against one eager batch
def test_evaluation_counts_every_example_once_and_equals_one_big_batch(batch_size):
    # The digits test split has 359 examples: 7 leaves a partial last batch (51 batches, 4
    # padded rows), 359 is exact, 512 is one batch mostly of padding.
    config = digits_config.get_config()
    data = input_pipeline.load("digits")
    spec = run_config.describe(config, data.image_shape, 10, len(data.train))
    state = steps.create_train_state(spec, jax.random.key(0))
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    test_data = device_loop.put_eval_split(data.test, batch_size, replicated)
    sums = device_loop.evaluate_split(
        state, *test_data, None, None, eval_fn=steps.eval_step, batch_size=batch_size,
        batch_sharding=sharded,
    )  # fmt: skip
    assert sums["count"].shape == (-(-359 // batch_size),)
    assert float(np.sum(sums["count"])) == len(data.test) == 359
    got = loop.evaluate(state, test_data, batch_size, sharded)
    # One batch of all 359 examples, outside any loop.
    logits = state.apply_fn(
        {"params": state.params}, data.test.images.astype(np.float32) / 255.0, deterministic=True
    )
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, data.test.labels)
    assert got["loss"] == pytest.approx(float(np.mean(losses)), rel=1e-5)
    correct = np.argmax(np.asarray(logits), -1) == data.test.labels
    assert abs(got["accuracy"] - correct.mean()) <= 1 / 359  # at most one near-tie may flip
