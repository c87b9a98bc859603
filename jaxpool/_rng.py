"""The noise behind the stochastic poolers: float32 uniforms and Gumbels from XLA's threefry, and
inverse-CDF sampling of one index per window.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

_F32 = jnp.float32


def uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 uniforms in ``[0, 1)``, the distribution of ``jax.random.uniform(key, shape)``.

    The bits come from XLA's own threefry (``lax.rng_bit_generator``), seeded by 128 bits of
    ``key``; on CPU it is about 4x faster than ``jax.random``'s threefry, which is written in HLO
    ops.  The bits differ from ``jax.random.uniform``'s; the conversion is the same (the top 23
    bits as the mantissa of a float in ``[1, 2)``, minus 1), so the values are the multiples of
    ``2**-23`` below 1, each with probability ``2**-23``.  Under ``vmap`` over keys, row ``i``
    equals the unbatched draw for key ``i`` (see :func:`_rng_bits`).
    """
    seed = jax.random.bits(key, (4,), jnp.uint32)
    bits = _rng_bits(tuple(shape))(seed)
    one = np.array(1.0, np.float32).view(np.uint32)
    mantissa = jax.lax.shift_right_logical(bits, np.uint32(32 - 23)) | one
    return jax.lax.bitcast_convert_type(mantissa, _F32) - 1.0


def gumbel(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Standard Gumbel float32 noise ``-log(-log(u))``, always finite: ``-neg_gumbel``."""
    return -neg_gumbel(key, shape)


def neg_gumbel(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Minus standard Gumbel noise, ``log(-log(u))``: the form TDGS subtracts, which saves XLA a
    separate negation pass over the noise.

    As ``jax.random.gumbel`` (its default ``mode='low'``): ``u`` is clamped to the smallest
    normal float32, so ``u = 0`` gives a Gumbel of ``-log(87.3) = -4.47`` instead of ``-inf``;
    ``u < 1``, so the largest Gumbel is ``-log(-log(1 - 2**-23)) = 15.9``.
    """
    tiny = jnp.finfo(_F32).tiny
    return jnp.log(-jnp.log(jnp.maximum(uniform(key, shape), tiny)))


def _rng_bits(shape: tuple[int, ...]):
    """``seed (4,) uint32 -> (*shape) uint32`` bits by ``lax.rng_bit_generator`` (threefry).

    ``rng_bit_generator``'s own batching rule draws every row from the first seed of a batch, so
    a ``vmap`` over keys would give every key the first key's sample.  The custom rule draws the
    rows one seed at a time instead (``lax.map``): row ``i`` is exactly the unbatched draw, at
    the price of a sequential loop over the keys.  The key is never differentiated, so ``grad``
    never reaches this function (``vmap`` of ``grad`` and ``grad`` of ``vmap`` are tested).
    """

    @jax.custom_batching.custom_vmap
    def bits(seed: jax.Array) -> jax.Array:
        return jax.lax.rng_bit_generator(
            seed, shape, jnp.uint32, algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY
        )[1]

    @bits.def_vmap
    def _batched(axis_size, in_batched, seed):
        del axis_size
        if in_batched[0]:
            return jax.lax.map(bits, seed), True
        return bits(seed), False

    return bits


def sample_index(key: jax.Array, probs: list[jax.Array]) -> jax.Array:
    """Draws one index per window with probabilities proportional to the non-negative ``probs``
    (inverse CDF, one uniform each; they need not sum to 1).

    An element of probability 0 is never drawn: its cumulative sum equals its predecessor's, so a
    smaller index always satisfies ``cdf > u * total`` first.  The fallback for ``u * total``
    rounding up to ``total`` is the last element of positive probability.
    """
    u = uniform(key, probs[0].shape)
    cdf = list(itertools.accumulate(probs))
    threshold = u * cdf[-1]
    index = jnp.zeros(probs[0].shape, jnp.int32)
    for k in range(len(probs)):
        index = jnp.where(probs[k] > 0, k, index)
    for k in reversed(range(len(probs))):
        index = jnp.where(cdf[k] > threshold, k, index)
    return index
