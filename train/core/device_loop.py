"""Training epochs as compiled chunks, evaluation as one program: the data lives on the devices.

The host launches one program per *chunk* of up to ``steps_per_chunk`` steps instead of one per
step.  Inside it, ``lax.fori_loop`` runs the steps: each gathers its batch from the resident
training split with the epoch's on-device permutation, shards it over the mesh axis ``"data"``,
and runs :func:`train.core.steps.train_step`.  The chunk's step count is a runtime argument, so one
compiled program serves every chunk, including a short last one or a resumed one.

Data order: epoch ``e`` (0-based) visits the examples in ``epoch_order(data_key(seed), e, n)``,
a ``jax.random.permutation`` that depends only on ``(seed, e)``; step ``s`` of the epoch uses rows
``order[s * B:(s + 1) * B]`` and the last partial batch is dropped.  So a run resumed at any step
sees the same batches as an uninterrupted one.

Evaluation: :func:`put_eval_split` copies the test split onto the devices once, padded to whole
batches with a mask, and :func:`evaluate_split` runs every batch in one program (a
``lax.fori_loop``), returning per-batch sums that the host adds in float64.

Seed groups: :func:`train_chunk_seeds` and :func:`evaluate_split_seeds` run the same programs
``jax.vmap``-ed over ``S`` seeds (own state, data order and keys per seed; the resident data
shared), so a sweep can train the seeds of one pooler together.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from train.core import input_pipeline

# Folded into key(seed) for the data order, so it is independent of the init and train keys.
_DATA_STREAM = 0x64617461  # "data"


def data_shardings() -> tuple[jax.sharding.NamedSharding, jax.sharding.NamedSharding]:
    """``(replicated, sharded)`` on a 1-D mesh ``"data"`` of every device: for the state and
    the resident splits, and for each batch (split over ``"data"``)."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    return (
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
    )


def put_replicated(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host array as a global array on ``sharding`` (every process holds the same value)."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def put_split(
    split: input_pipeline.Split, sharding: jax.sharding.Sharding
) -> tuple[jax.Array, jax.Array]:
    """``(images, labels)`` of ``split`` on every device of ``sharding``'s mesh (replicated)."""
    return put_replicated(split.images, sharding), put_replicated(split.labels, sharding)


def data_key(seed: int | Sequence[int], sharding: jax.sharding.Sharding | None = None) -> jax.Array:
    """The key of the data order: ``fold_in(key(seed), "data")``, independent of the init and
    train keys (``split(key(seed))``); placed on ``sharding`` (replicated) when given.  For a
    sequence of seeds (a seed group), their keys stacked along a leading axis."""
    return _jit_data_key(sharding)(seeds_array(seed))


def seeds_array(seed: int | Sequence[int]) -> np.ndarray:
    """``seed`` (below 2**32) as the uint32 argument of a jitted key function: one compiled
    program per shape serves every seed, where a seed closed over as a constant compiles anew.
    ``jax.random.key`` of a uint32 equals that of the same Python int."""
    return np.asarray(seed, np.uint32)


def jit_per_seed(fn: Callable, sharding: jax.sharding.Sharding | None) -> Callable:
    """``fn`` of one seed, jitted for a :func:`seeds_array`: one seed, or ``(S,)`` seeds (vmapped,
    every output stacked over them)."""
    return jax.jit(lambda seeds: jax.vmap(fn)(seeds) if seeds.ndim else fn(seeds),
                   out_shardings=sharding)  # fmt: skip


@functools.lru_cache(maxsize=8)
def _jit_data_key(sharding: jax.sharding.Sharding | None):
    return jit_per_seed(lambda s: jax.random.fold_in(jax.random.key(s), _DATA_STREAM), sharding)


@functools.lru_cache(maxsize=8)
def _jit_order(sharding: jax.sharding.Sharding | None, seed_group: bool):
    def order(key, epoch, n):
        return jax.random.permutation(jax.random.fold_in(key, epoch), n).astype(jnp.int32)

    if seed_group:
        order = jax.vmap(order, in_axes=(0, None, None))
    return jax.jit(order, static_argnums=(2,), out_shardings=sharding)


def epoch_order(
    key: jax.Array, epoch: int, n: int, sharding: jax.sharding.Sharding | None = None
) -> jax.Array:
    """The training order of ``epoch`` (0-based) over ``n`` examples, computed on the devices.

    Args:
      key: :func:`data_key` of the run's seed, or the ``(S,)`` keys of a seed group.
      epoch: 0-based epoch.
      n: number of training examples.
      sharding: where to place the result (replicated), or None for the default device.

    Returns:
      int32 ``(n,)``, a permutation of ``range(n)`` that depends only on ``(key, epoch)``; for a
      seed group ``(S, n)``, one per seed.
    """
    return _jit_order(sharding, key.ndim == 1)(key, np.int32(epoch), n)


def chunks(start_step: int, steps: int, steps_per_chunk: int) -> Iterator[tuple[int, int]]:
    """``(first step, number of steps)`` of each chunk from ``start_step`` to ``steps``."""
    if steps_per_chunk < 1:
        raise ValueError(f"steps_per_chunk must be >= 1, got {steps_per_chunk}")
    for first in range(start_step, steps, steps_per_chunk):
        yield first, min(steps_per_chunk, steps - first)


StepFn = Callable[..., tuple[object, dict[str, jax.Array]]]


def _train_chunk(
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


def _train_chunk_seeds(
    states,
    images,
    labels,
    orders,
    first,
    count,
    rngs,
    mean,
    std,
    *,
    step_fn: StepFn,
    batch_size: int,
    length: int,
    batch_sharding: jax.sharding.Sharding | None = None,
):
    """:func:`train_chunk` of a seed group as one program: ``states``, ``orders`` and ``rngs``
    carry a leading seed axis ``S``, the resident split and standardisation are shared.

    Returns:
      The new states and ``{"loss": (S, length), "correct": (S, length)}``.
    """

    def one(state, order, rng):
        return _train_chunk(
            state, images, labels, order, first, count, rng, mean, std, step_fn=step_fn,
            batch_size=batch_size, length=length, batch_sharding=batch_sharding,
        )  # fmt: skip

    return jax.vmap(one)(states, orders, rngs)


_CHUNK_STATIC = ("step_fn", "batch_size", "length", "batch_sharding")
train_chunk = jax.jit(_train_chunk, static_argnames=_CHUNK_STATIC, donate_argnums=(0,))
train_chunk_seeds = jax.jit(_train_chunk_seeds, static_argnames=_CHUNK_STATIC, donate_argnums=(0,))


def put_eval_split(
    split: input_pipeline.Split, batch_size: int, sharding: jax.sharding.Sharding
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(images, labels, mask)`` of ``split`` on every device of ``sharding``'s mesh
    (replicated), zero-padded to a whole number of ``batch_size`` batches; ``mask`` is 1.0 on
    real examples, 0.0 on padding."""
    n = len(split)
    pad = -n % batch_size
    images = np.concatenate([split.images, np.zeros((pad, *split.images.shape[1:]), np.uint8)])
    labels = np.concatenate([split.labels, np.zeros((pad,), np.int32)])
    mask = np.concatenate([np.ones((n,), np.float32), np.zeros((pad,), np.float32)])
    return tuple(put_replicated(a, sharding) for a in (images, labels, mask))


def _evaluate_split(
    state,
    images: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    mean: jax.Array | None,
    std: jax.Array | None,
    *,
    eval_fn: Callable[..., dict[str, jax.Array]],
    batch_size: int,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> dict[str, jax.Array]:
    """Every batch of a padded evaluation split (:func:`put_eval_split`) in one program.

    Args:
      state: the train state.
      images, labels, mask: the padded split, ``len(images)`` a multiple of ``batch_size``.
      mean, std: per-channel standardisation, or None.
      eval_fn: ``(state, batch, mean, std) -> {"loss_sum", "correct", "count"}`` over the
        batch's masked examples (:func:`train.core.steps.eval_step`).
      batch_size: global evaluation batch size.
      batch_sharding: sharding of each batch (``NamedSharding(mesh, P("data"))``).

    Returns:
      ``{"loss_sum", "correct", "count"}``, each float32 ``(num_batches,)``: one entry per batch.
    """
    num_batches = images.shape[0] // batch_size
    keys = ("loss_sum", "correct", "count")

    def body(i, sums):
        start = i * batch_size
        batch = {
            name: jax.lax.dynamic_slice_in_dim(array, start, batch_size)
            for name, array in (("image", images), ("label", labels), ("mask", mask))
        }
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        out = eval_fn(state, batch, mean, std)
        return {k: sums[k].at[i].set(out[k].astype(jnp.float32)) for k in keys}

    init = {k: jnp.zeros((num_batches,), jnp.float32) for k in keys}
    return jax.lax.fori_loop(0, num_batches, body, init)


def _evaluate_split_seeds(
    states,
    images,
    labels,
    mask,
    mean,
    std,
    *,
    eval_fn: Callable[..., dict[str, jax.Array]],
    batch_size: int,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> dict[str, jax.Array]:
    """:func:`evaluate_split` of a seed group's ``states`` (leading seed axis ``S``) in one
    program; returns per-batch sums of shape ``(S, num_batches)``."""

    def one(state):
        return _evaluate_split(
            state, images, labels, mask, mean, std, eval_fn=eval_fn, batch_size=batch_size,
            batch_sharding=batch_sharding,
        )  # fmt: skip

    return jax.vmap(one)(states)


_EVAL_STATIC = ("eval_fn", "batch_size", "batch_sharding")
evaluate_split = jax.jit(_evaluate_split, static_argnames=_EVAL_STATIC)
evaluate_split_seeds = jax.jit(_evaluate_split_seeds, static_argnames=_EVAL_STATIC)
