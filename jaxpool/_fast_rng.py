r"""The fast paths' noise: float32 uniforms and Gumbels from the Threefry-2x32-20 block cipher (the
one ``jax.random`` uses), written in jnp ops over block counters, with a polynomial logarithm.

It draws other numbers than ``jax.random`` from the same key (the same distributions), and it
reads the key only through ``jax.random.bits``, whatever its PRNG implementation.
``stochastic_pool`` and ``gumbel_softmax`` differ from their references only in taking their
noise from here (TDGS's fast path also has its own derivative, :mod:`jaxpool._fast_tdgs`).

``implementation='auto'`` takes it on the CPU backend, for every shape: forward + backward
(``jax.grad`` of a weighted sum, jitted; training mode, 2x2 windows; ``gumbel_softmax`` with
``hard=True`` over the last axis of logits of the shape shown), median of repeated runs,
reference and fast alternating in one process on a 2-core Intel Xeon (AVX-512), jaxlib 0.10.2:

  ================  ===================  =============  =============  ==================
  pooler            x shape (NHWC), 2x2  reference ms   fast ms        reference / fast
  ================  ===================  =============  =============  ==================
  stochastic        256, 32, 32, 16      3.4 / 3.4      2.1 / 2.2      1.57 (1.13-1.97) / 1.54 (1.20-1.79)
  stochastic        64, 16, 16, 32       0.46 / 1.25    0.32 / 0.77    1.42 (1.35-1.67) / 1.71 (1.51-2.48)
  gumbel_softmax    256, 32, 32, 16      68 / 132       17 / 28        3.73 (2.83-5.47) / 6.03 (2.55-9.82)
  gumbel_softmax    64, 16, 16, 32       1.20 / 4.34    0.96 / 1.53    1.21 (1.11-1.37) / 3.34 (2.45-4.17)
  ================  ===================  =============  =============  ==================

Two sittings (the first figure of each pair, then the second), 7 alternating rounds each; the
ratio is the median of the per-round ratios, with its range.  The machine was shared with other
jobs, hence the spread; every median ratio is above 1 except where the notes say.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxpool import _windows

_F32 = jnp.float32

# Where 'auto' takes the fast generator on CPU: the table above.
STOCHASTIC_WINS = True
GUMBEL_WINS = True


def uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 uniforms in ``[0, 1)``, the distribution of ``jax.random.uniform(key, shape)``.

    The bits are :func:`threefry_bits` seeded by 128 bits of ``key``; they differ from
    ``jax.random.uniform``'s, the conversion is the same (the top 23 bits as the mantissa of a
    float in ``[1, 2)``, minus 1), so the values are the multiples of ``2**-23`` below 1, each with
    probability ``2**-23``.  Every element is a function of the key, the shape and its index
    only, so a ``vmap`` over keys gives row ``i`` the unbatched draw for key ``i``, and the draw
    does not depend on how the array is sharded.
    """
    return _uniform_from_bits(threefry_bits(_seed(key), tuple(shape)))


def _seed(key: jax.Array) -> jax.Array:
    """The 128-bit ``(4,)`` uint32 seed of :func:`threefry_bits` drawn from ``key``."""
    return jax.random.bits(key, (4,), jnp.uint32)


def _uniform_from_bits(bits: jax.Array) -> jax.Array:
    """uint32 words to float32 uniforms in ``[0, 1)``: the top 23 bits as a mantissa, minus 1."""
    one = np.array(1.0, np.float32).view(np.uint32)
    mantissa = jax.lax.shift_right_logical(bits, np.uint32(32 - 23)) | one
    return jax.lax.bitcast_convert_type(mantissa, _F32) - 1.0


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(k0, k1, c0, c1) -> tuple[jax.Array, jax.Array]:
    """The Threefry-2x32 block cipher with 20 rounds (Salmon, Moraes, Dror, Shaw: Parallel Random
    Numbers: As Easy as 1, 2, 3. SC 2011), elementwise on uint32 arrays: key ``(k0, k1)``,
    counter ``(c0, c1)``, returns the two output words.  The generator of ``jax.random``; the
    tests check it against Random123's known-answer vectors.
    """
    schedule = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0, x1 = c0 + k0, c1 + k1
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = (x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))
            x1 = x1 ^ x0
        x0 = x0 + schedule[(group + 1) % 3]
        x1 = x1 + schedule[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def threefry_bits(
    seed: jax.Array,
    shape: tuple[int, ...],
    transform: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """``(*shape)`` uint32 random words from a ``(4,)`` uint32 ``seed`` (or ``transform`` of them).

    The array is halved along its split axis (the second-to-last of a 3-D or larger shape, else
    the last): block ``j`` of :func:`threefry2x32` (key ``seed[0:2]``, counter
    ``(j + seed[3], seed[2])``, ``j`` the row-major index into the halved shape) gives its first
    word to element ``j`` of the first half and its second word to the same place in the second
    half.  Every element is a function of its index, so the draw partitions along the other axes
    (a batch sharded over devices draws only its own part), and the split keeps the last axis
    (channels) contiguous for vectorised loops.

    Written in jnp ops rather than ``lax.rng_bit_generator``: on a 2-core AVX-512 CPU it drew
    4.2 M words 2.0x faster than XLA's own threefry, which computes each element's counter in
    64-bit arithmetic (and 13x faster than ``jax.random.bits``).

    ``transform``, an elementwise function of uint32 words, is applied to each half before the two
    are joined: XLA then computes the transformed array once, in the loop that draws the bits.
    Applied after the join, a transformation of cheap operations (such as :func:`log_positive`)
    is fused into, and repeated in, every loop that reads the result.
    """
    shape = tuple(shape)
    if not _windows.is_concrete(shape):
        raise ValueError(
            f"implementation='fast' draws its noise for inputs of known size; got shape {shape} "
            "(symbolic, as in jax.export): use implementation='auto' or 'reference'"
        )
    if not shape:
        return threefry_bits(seed, (1,), transform).reshape(())
    axis = len(shape) - 2 if len(shape) >= 3 else len(shape) - 1
    grid = tuple(-(-n // 2) if d == axis else n for d, n in enumerate(shape))
    if math.prod(grid) >= 2**32:
        raise ValueError(
            f"jaxpool's noise counters cover at most 2**32 - 1 blocks of two random numbers per "
            f"call (about 8.6e9 numbers); got shape {shape}"
        )
    index = jnp.zeros(grid, jnp.uint32)
    stride = 1
    for d in reversed(range(len(grid))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, grid, d) * np.uint32(stride)
        stride *= grid[d]
    x0, x1 = threefry2x32(seed[0], seed[1], index + seed[3], jnp.broadcast_to(seed[2], grid))
    if transform is not None:
        x0, x1 = transform(x0), transform(x1)
    return jax.lax.slice_in_dim(jnp.concatenate([x0, x1], axis=axis), 0, shape[axis], axis=axis)


def gumbel(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Standard Gumbel float32 noise ``-log(-log(u))``, always finite: ``-neg_gumbel``."""
    return -neg_gumbel(key, shape)


def neg_gumbel(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Minus standard Gumbel noise, ``log(-log(u))``: the form TDGS subtracts, which saves XLA a
    separate negation pass over the noise.

    As ``jax.random.gumbel`` (its default ``mode='low'``): ``u`` is clamped to the smallest
    normal float32, so ``u = 0`` gives a Gumbel of ``-log(87.3) = -4.47`` instead of ``-inf``;
    ``u < 1``, so the largest Gumbel is ``-log(-log(1 - 2**-23)) = 15.9``.

    The logarithms are :func:`log_positive`: over all ``2**23`` values of ``u`` the result is
    within 5.6e-7 of the float64 value (``jnp.log``'s: 5.5e-7), and on a 2-core AVX-512 CPU it drew
    4.2 M values 1.5x faster (2.7 against 4.1 ms).
    """
    return threefry_bits(_seed(key), tuple(shape), _neg_gumbel_from_bits)


def _neg_gumbel_from_bits(bits: jax.Array) -> jax.Array:
    """uint32 words to ``log(-log(u))``, ``u`` clamped below at the smallest normal float32."""
    u = jnp.maximum(_uniform_from_bits(bits), jnp.finfo(_F32).tiny)
    return log_positive(-log_positive(u))


# log(1 + f) / f on [sqrt(1/2) - 1, sqrt(2) - 1]: the float64 Chebyshev least-squares fit of degree
# 8 (20000 Chebyshev nodes), rounded to float32, lowest degree first.
_LOG1P_COEFFS = (
    1.0,
    -0.49999988079071045,
    0.3333418369293213,
    -0.2500215470790863,
    0.19956977665424347,
    -0.16560696065425873,
    0.14949095249176025,
    -0.14377330243587494,
    0.08743945509195328,
)
_SQRT_HALF_BITS = np.int32(0x3F3504F3)  # float32 sqrt(1/2)


def log_positive(x: jax.Array) -> jax.Array:
    r"""Natural logarithm of positive, normal, finite float32 ``x`` (the noise needs no other).

    .. math::
      x = 2^k m,\ m \in [\sqrt{1/2}, \sqrt{2}), \qquad
      \log x = k \log 2 + f P(f),\ f = m - 1

    with ``k`` and ``m`` read from the bits and ``P`` a degree-8 polynomial.  Within 2.5 float32
    ulp of the float64 logarithm: 2.33 at worst over every float32 in ``[sqrt(1/2), sqrt(2))``
    (``tests/test_rng.py`` checks those and every exponent).  Zero, negative, subnormal, infinite
    or NaN ``x`` give wrong finite numbers: callers clamp.  Compiled, XLA may contract the
    polynomial's multiply-adds into FMAs, so results can differ in the last bit between fusions
    (and from eager evaluation).

    Why not ``jnp.log``: XLA:CPU's logarithm also handles those cases, and on a 2-core AVX-512
    CPU this one was 2x faster over 4.2 M elements (0.45 against 0.96 ms).
    """
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    k = (bits - _SQRT_HALF_BITS) >> 23  # arithmetic shift: floor((bits - sqrt(1/2)) / 2**23)
    f = jax.lax.bitcast_convert_type(bits - (k << 23), _F32) - 1.0  # exact (Sterbenz)
    p = jnp.asarray(_LOG1P_COEFFS[-1], _F32)
    for c in _LOG1P_COEFFS[-2::-1]:
        p = p * f + np.float32(c)
    return f * p + k.astype(_F32) * np.float32(np.log(2.0))
