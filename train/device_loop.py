"""Training epochs as compiled chunks: the data lives on the devices and is shuffled there.

The host launches one program per *chunk* of up to ``steps_per_chunk`` steps instead of one per
step.  Inside it, ``lax.fori_loop`` runs the steps: each gathers its batch from the resident
training split with the epoch's on-device permutation, shards it over the mesh axis ``"data"``,
and runs :func:`train.steps.train_step`.  The chunk's step count is a runtime argument, so one
compiled program serves every chunk, including a short last one or a resumed one.

Data order: epoch ``e`` (0-based) visits the examples in ``epoch_order(data_key(seed), e, n)``,
a ``jax.random.permutation`` that depends only on ``(seed, e)``; step ``s`` of the epoch uses rows
``order[s * B:(s + 1) * B]`` and the last partial batch is dropped.  So a run resumed at any step
sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from train import input_pipeline

# Folded into key(seed) for the data order, so it is independent of the init and train keys.
_DATA_STREAM = 0x64617461  # "data"


def put_replicated(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host array as a global array on ``sharding`` (every process holds the same value)."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def put_split(
    split: input_pipeline.Split, sharding: jax.sharding.Sharding
) -> tuple[jax.Array, jax.Array]:
    """``(images, labels)`` of ``split`` on every device of ``sharding``'s mesh (replicated)."""
    return put_replicated(split.images, sharding), put_replicated(split.labels, sharding)


def data_key(seed: int, sharding: jax.sharding.Sharding | None = None) -> jax.Array:
    """The key of the data order: ``fold_in(key(seed), "data")``, independent of the init and
    train keys (``split(key(seed))``); placed on ``sharding`` (replicated) when given."""
    return jax.jit(
        lambda: jax.random.fold_in(jax.random.key(seed), _DATA_STREAM), out_shardings=sharding
    )()


@functools.lru_cache(maxsize=8)
def _jit_order(sharding: jax.sharding.Sharding | None):
    def order(key, epoch, n):
        return jax.random.permutation(jax.random.fold_in(key, epoch), n).astype(jnp.int32)

    return jax.jit(order, static_argnames=("n",), out_shardings=sharding)


def epoch_order(
    key: jax.Array, epoch: int, n: int, sharding: jax.sharding.Sharding | None = None
) -> jax.Array:
    """The training order of ``epoch`` (0-based) over ``n`` examples, computed on the devices.

    Args:
      key: :func:`data_key` of the run's seed.
      epoch: 0-based epoch.
      n: number of training examples.
      sharding: where to place the result (replicated), or None for the default device.

    Returns:
      int32 ``(n,)``, a permutation of ``range(n)`` that depends only on ``(key, epoch)``.
    """
    return _jit_order(sharding)(key, np.int32(epoch), n=n)


def chunks(start_step: int, steps: int, steps_per_chunk: int) -> Iterator[tuple[int, int]]:
    """``(first step, number of steps)`` of each chunk from ``start_step`` to ``steps``."""
    if steps_per_chunk < 1:
        raise ValueError(f"steps_per_chunk must be >= 1, got {steps_per_chunk}")
    for first in range(start_step, steps, steps_per_chunk):
        yield first, min(steps_per_chunk, steps - first)


StepFn = Callable[..., tuple[object, dict[str, jax.Array]]]


@functools.partial(
    jax.jit,
    static_argnames=("step_fn", "batch_size", "length", "batch_sharding"),
    donate_argnums=(0,),
)
def train_chunk(
    state,
    images: jax.Array,
    labels: jax.Array,
    order: jax.Array,
    first: jax.Array | int,
    count: jax.Array | int,
    rng: jax.Array,
    mean: jax.Array | None,
    std: jax.Array | None,
    *,
    step_fn: StepFn,
    batch_size: int,
    length: int,
    batch_sharding: jax.sharding.Sharding | None = None,
):
    """Runs steps ``first .. first + count - 1`` of an epoch as one program.

    Args:
      state: the train state (donated).
      images: uint8 ``(N, H, W, C)``, the resident training split.
      labels: int32 ``(N,)``.
      order: int32 ``(N,)``, the epoch's permutation (:func:`epoch_order`).
      first: epoch-local index of the first step.
      count: number of steps, ``1 <= count <= length``.
      rng: the train key (``step_fn`` folds in the step).
      mean, std: per-channel standardisation, or None.
      step_fn: ``(state, batch, rng, mean, std) -> (state, {"loss", "correct"})``.
      batch_size: global batch size ``B``.
      length: size of the per-step output buffers (the compiled chunk's capacity).
      batch_sharding: sharding of each gathered batch (``NamedSharding(mesh, P("data"))``).

    Returns:
      The new state and ``{"loss": float32 (length,), "correct": int32 (length,)}``; entries
      past ``count`` are 0.
    """

    def body(i, carry):
        state, losses, correct = carry
        rows = jax.lax.dynamic_slice_in_dim(order, (first + i) * batch_size, batch_size)
        batch = {"image": jnp.take(images, rows, axis=0), "label": jnp.take(labels, rows)}
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        state, out = step_fn(state, batch, rng, mean, std)
        losses = losses.at[i].set(out["loss"].astype(jnp.float32))
        correct = correct.at[i].set(out["correct"].astype(jnp.int32))
        return state, losses, correct

    init = (state, jnp.zeros((length,), jnp.float32), jnp.zeros((length,), jnp.int32))
    state, losses, correct = jax.lax.fori_loop(0, count, body, init)
    return state, {"loss": losses, "correct": correct}
