"""The standard CNN's train state, its Adam step and its evaluation step.

``train_step`` is the pure step that :mod:`train.core.device_loop` runs inside its compiled chunks
(optionally split into micro-batches, see :func:`step_fn`); ``eval_step`` is the deterministic
forward pass :func:`train.core.loop.evaluate` sums over the test split.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from train.core import models, run_config


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, optimizer state, apply_fn, tx)."""


def create_train_state(
    spec: run_config.RunSpec, rng: jax.Array, sharding: jax.sharding.Sharding | None = None
) -> TrainState:
    """Initialises the CNN and Adam for a run.

    Args:
      spec: the run (pooler and its kwargs, image shape, classes, learning rate).
      rng: a key, split into ``"params"`` and ``"pooling"`` keys; or a 1-D array of ``S`` keys,
        one per seed of a seed group: then every leaf of the state has a leading axis ``S``.
      sharding: where the state goes, e.g. replicated over the mesh; it is created there
        directly, which also works when the mesh spans several processes.

    Returns:
      A :class:`TrainState` at step 0 (per seed, for a seed group).
    """
    init = _jit_create(
        spec.num_classes,
        spec.pooler,
        spec.pooler_kwargs_json,
        spec.image_shape,
        spec.learning_rate,
        sharding,
        seed_group=rng.ndim == 1,
        implementation=spec.implementation,
    )
    return init(rng)


def model(spec: run_config.RunSpec) -> models.CNN:
    """The run's CNN; the same object for the same settings."""
    return _model(spec.num_classes, spec.pooler, spec.pooler_kwargs_json, spec.implementation)


# The model and optimizer are static parts of the TrainState, hence of the jit cache key: the
# same objects for the same settings let repeated runs in one process (sweeps, tests) reuse
# compiled steps.
@functools.lru_cache(maxsize=64)
def _model(num_classes: int, pooler: str, kwargs_json: str, implementation: str) -> models.CNN:
    return models.CNN(
        num_classes=num_classes,
        pooler=pooler,
        pooler_kwargs=json.loads(kwargs_json),
        implementation=implementation,
    )


@functools.lru_cache(maxsize=64)
def _jit_create(
    num_classes: int,
    pooler: str,
    kwargs_json: str,
    image_shape: tuple[int, ...],
    learning_rate: float,
    sharding: jax.sharding.Sharding | None,
    seed_group: bool,
    implementation: str,
):
    # One jitted function: run eagerly, init and the optimizer's zeros would each compile
    # dozens of one-op programs.
    cnn = _model(num_classes, pooler, kwargs_json, implementation)

    def create(rng):
        params_key, pooling_key = jax.random.split(rng)
        dummy = jnp.zeros((1, *image_shape), jnp.float32)
        keys = {"params": params_key, "pooling": pooling_key}
        variables = cnn.init(keys, dummy, deterministic=False)
        state = TrainState.create(
            apply_fn=cnn.apply, params=variables["params"], tx=_adam(learning_rate)
        )
        # A strongly typed step, like a restored one, so resumed runs hit the same jit cache.
        return state.replace(step=jnp.zeros((), jnp.int32))

    return jax.jit(jax.vmap(create) if seed_group else create, out_shardings=sharding)


@functools.lru_cache(maxsize=64)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate)


def preprocess(images: jax.Array, mean: np.ndarray | None, std: np.ndarray | None) -> jax.Array:
    """uint8 images as the CNN sees them: scaled to [0, 1], then standardised when given."""
    x = images.astype(jnp.float32) / 255.0
    if mean is not None:
        x = (x - mean) / std
    return x


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Softmax cross-entropy per example with integer labels, the values of
    ``optax.softmax_cross_entropy_with_integer_labels``:

    .. math::
      \ell = \log \sum_k e^{z_k} - z_y

    ``z_y`` is read by a one-hot select, not a gather, so its derivative is a select too, not a
    scatter-add: under XLA:GPU's deterministic ops (on for training, :mod:`train.core.xla_gpu`)
    every scatter becomes a slower deterministic program, a few more kernels in every step.

    Args:
      logits: ``(B, K)`` float.
      labels: ``(B,)`` integers in ``[0, K)``.

    Returns:
      ``(B,)`` losses, the dtype of ``logits``.
    """
    chex.assert_rank(logits, 2)
    chex.assert_shape(labels, logits.shape[:1])
    is_label = labels[:, None] == jnp.arange(logits.shape[-1])
    # One logit and zeros: the sum is that logit exactly, whatever the order.
    label_logits = jnp.sum(jnp.where(is_label, logits, 0), axis=-1)
    return jax.nn.logsumexp(logits, axis=-1) - label_logits


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    *,
    microbatches: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One Adam step on the mean cross-entropy of ``batch``.

    The pooling key is ``fold_in(rng, state.step)``, so a resumed run draws the same keys.

    With ``microbatches = M > 1`` the gradient of the batch mean is computed as the mean of the
    gradients of ``M`` equal micro-batches (rows ``i`` with ``i % M == j`` form micro-batch ``j``,
    so each device's shard splits evenly), one after the other (``lax.scan``): the same update up
    to float rounding, with activations small enough to stay in the CPU caches.  Micro-batch ``j``
    draws its pooling noise with ``fold_in(key, j)``.

    Returns:
      The new state and ``{"loss": mean loss, "correct": number of correct predictions}``.
    """
    key = jax.random.fold_in(rng, state.step)
    x = preprocess(batch["image"], mean, std)
    labels = batch["label"]

    def loss_and_grads(x, labels, key):
        def loss_fn(params):
            logits = state.apply_fn(
                {"params": params}, x, deterministic=False, rngs={"pooling": key}
            )
            loss = cross_entropy(logits, labels).mean()
            return loss, logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return loss, jnp.sum(jnp.argmax(logits, -1) == labels), grads

    if microbatches == 1:
        loss, correct, grads = loss_and_grads(x, labels, key)
    else:
        m = microbatches

        def split(v):  # (B, ...) -> (M, B / M, ...), micro-batch j = rows i % M == j
            return v.reshape(v.shape[0] // m, m, *v.shape[1:]).swapaxes(0, 1)

        def accumulate(totals, part):
            j, xs, ys = part
            loss, correct, grads = loss_and_grads(xs, ys, jax.random.fold_in(key, j))
            return jax.tree_util.tree_map(jnp.add, totals, (loss, correct, grads)), None

        zeros = (
            jnp.zeros((), jnp.float32),
            jnp.zeros((), jnp.int32),
            jax.tree_util.tree_map(jnp.zeros_like, state.params),
        )
        (loss, correct, grads), _ = jax.lax.scan(
            accumulate, zeros, (jnp.arange(m), split(x), split(labels))
        )
        loss, grads = loss / m, jax.tree_util.tree_map(lambda g: g / m, grads)
    state = state.apply_gradients(grads=grads)
    return state, {"loss": loss, "correct": correct}


@functools.lru_cache(maxsize=16)
def step_fn(microbatches: int) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """:func:`train_step` with ``microbatches`` bound; the same object for the same value, so
    jitted callers that take it as a static argument compile once."""
    if microbatches == 1:
        return train_step
    return functools.partial(train_step, microbatches=microbatches)


def eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
) -> dict[str, jax.Array]:
    """Deterministic forward pass; sums over the examples where ``batch["mask"]`` is 1 (the
    padding examples, 0, are left out even where their loss is not finite).

    Returns:
      ``{"loss_sum", "correct", "count"}`` for the batch.
    """
    x = preprocess(batch["image"], mean, std)
    logits = state.apply_fn({"params": state.params}, x, deterministic=True)
    losses = cross_entropy(logits, batch["label"])
    mask = batch["mask"]
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(jnp.where(mask > 0, losses, 0.0)),
        "correct": jnp.sum(correct * mask),
        "count": jnp.sum(mask),
    }
