r"""Fractional max pooling (Graham, 2014): reference implementation (NHWC).

Import it from :mod:`jaxpool.functional`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpool import _window_ops, _windows

SEQUENCES = ("random", "pseudo_random")
FIXED_OFFSET = 0.5  # u of the deterministic (evaluation) sequence


def _check_ratio(ratio: float | Sequence[float]) -> tuple[float, float]:
    pair = tuple(ratio) if isinstance(ratio, (tuple, list)) else (ratio, ratio)
    if len(pair) != 2 or not all(
        isinstance(r, (int, float, np.floating)) and not isinstance(r, bool) and 1.0 < r < 2.0
        for r in pair
    ):
        raise ValueError(
            f"ratio must be a number in (1, 2) or a pair of them (height, width); got {ratio!r}"
        )
    return float(pair[0]), float(pair[1])


def output_size(size: int, ratio: float, overlapping: bool, axis: str) -> int:
    """``floor(size / ratio)``, checked to be reachable with increments 1 and 2."""
    out = math.floor(size / ratio)
    total = size - 1 if overlapping else size
    if out < 1 or not out <= total <= 2 * out:
        raise ValueError(
            f"fractional max pooling cannot reduce a {axis} of {size} to floor({size} / {ratio:g}) "
            f"= {out} with {'overlapping' if overlapping else 'disjoint'} regions of increments 1 "
            "and 2; use a larger input or another ratio"
        )
    return out


def fixed_boundaries(size: int, out: int, overlapping: bool) -> np.ndarray:
    """The pseudo-random boundaries with offset ``u = 0.5``: ``a_i = floor(b (i + u)) - floor(b u)``,
    ``b = total / out``; int ``(out + 1,)`` from 0 to ``total`` (``size``, or ``size - 1`` when
    overlapping)."""
    total = size - 1 if overlapping else size
    i = np.arange(out + 1)
    beta = total / out
    return (np.floor(beta * (i + FIXED_OFFSET)) - np.floor(beta * FIXED_OFFSET)).astype(np.int32)


def random_boundaries(
    key: jax.Array, size: int, out: int, overlapping: bool, sequence: str
) -> jax.Array:
    """Boundaries ``a_0 = 0 < ... < a_out = total`` with increments 1 and 2, drawn anew.

    ``'random'``: the ``total - out`` increments of 2 sit at uniformly random places (a random
    permutation of the increments).  ``'pseudo_random'``: ``a_i = floor(b (i + u)) - floor(b u)``
    with ``u ~ U(0, 1)``, ``b = total / out``.
    """
    total = size - 1 if overlapping else size
    if sequence == "random":
        twos = total - out
        increments = jnp.asarray(np.r_[np.ones(out - twos), 2 * np.ones(twos)].astype(np.int32))
        increments = jax.random.permutation(key, increments)
        return jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(increments)])
    u = jax.random.uniform(key)
    beta = total / out
    i = jnp.arange(out + 1, dtype=jnp.float32)
    a = (jnp.floor(beta * (i + u)) - jnp.floor(beta * u)).astype(jnp.int32)
    return a.at[-1].set(total)  # exact in real arithmetic; pins it against float32 rounding


def slot_indices(boundaries: jax.Array, overlapping: bool) -> list[jax.Array]:
    """Where each region's slots read: slot ``k`` of region ``i`` is ``min(a_{i-1} + k, end_i)``
    (``end_i = a_i - 1`` disjoint, ``a_i`` overlapping), ``k < 2`` (``3`` overlapping), so a
    shorter region repeats its last element.

    Each slot's indices strictly increase with ``i``: a region starts past the previous one's end,
    or (overlapping) at it and is at least 2 long.  So each slot is a gather of sorted, unique
    indices, which :func:`_pool_axis` tells XLA.
    """
    starts, ends = boundaries[:-1], boundaries[1:] - (0 if overlapping else 1)
    return [jnp.minimum(starts + k, ends) for k in range(3 if overlapping else 2)]


def _pool_axis(x: jax.Array, boundaries: jax.Array, axis: int, overlapping: bool) -> jax.Array:
    """Max over the regions ``[a_{i-1}, a_i - 1]`` (disjoint) or ``[a_{i-1}, a_i]`` (overlapping).

    One gather per slot (:func:`slot_indices`), marked sorted and unique: its derivative is then a
    scatter-add that XLA:GPU keeps under deterministic ops, instead of rewriting it into a slower
    program.  The derivative goes to the first maximal element, as in ``max_pool``.
    """
    hints = {"unique_indices": True, "indices_are_sorted": True}
    slots = [
        jnp.take(x, index, axis=axis, **hints) for index in slot_indices(boundaries, overlapping)
    ]
    return _window_ops.window_max(slots, None)


def _pool(batched: jax.Array, rows: jax.Array, cols: jax.Array, overlapping: bool) -> jax.Array:
    # Columns first, then rows: of tied maxima the derivative reaches the first row holding one,
    # and that row's first, i.e. the first in row-major order, as in max_pool.
    return _pool_axis(_pool_axis(batched, cols, 2, overlapping), rows, 1, overlapping)


def fractional_max_pool(
    x: jax.Array,
    ratio: float | Sequence[float] = math.sqrt(2),
    *,
    key: jax.Array | None = None,
    deterministic: bool = False,
    sequence: str = "random",
    overlapping: bool = False,
    per_example: bool = False,
) -> jax.Array:
    r"""Fractional max pooling (Graham, 2014): max over regions of size 1–2 (or 2–3) per axis.

    Along each spatial axis of length ``N`` the output has ``N_out = floor(N / ratio)`` positions.
    Boundaries ``0 = a_0 < a_1 < ... < a_{N_out}`` with increments 1 and 2 cut the axis into
    pooling regions

    .. math::
      P_i = [a_{i-1}, a_i - 1] \ (\text{disjoint}, a_{N_out} = N), \qquad
      P_i = [a_{i-1}, a_i] \ (\text{overlapping}, a_{N_out} = N - 1),

    and ``y_{ij} = \max_{(h, w) \in P_i \times Q_j} x_{hw}`` per channel, with independent row and
    column boundaries.  On ties the derivative goes to the first maximal element of a region
    (row-major), as in ``max_pool``.  Training draws new boundaries per call from ``key`` (one set
    for the whole batch, or per example with ``per_example=True``): ``sequence='random'`` places the
    increments of 2 uniformly at random (the paper's "random"), ``'pseudo_random'`` uses
    ``a_i = floor(b (i + u)) - floor(b u)``, ``b = a_{N_out} / N_out``, ``u ~ U(0, 1)``.
    Deterministic mode uses the fixed pseudo-random boundaries with ``u = 0.5``: the increments of
    2 spread as evenly as they can be, the same for every call and needing no key, so evaluation is
    reproducible.  (The paper instead averaged several random test passes: call with
    ``deterministic=False`` and different keys, and average, to do that.)

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      ratio: ``alpha`` in (1, 2), or a pair (height, width); ``sqrt(2)`` by default.
      key: PRNG key, required unless ``deterministic``.
      deterministic: use the fixed boundaries.
      sequence: ``'random'`` (default) or ``'pseudo_random'``.
      overlapping: regions share their boundary element (sizes 2–3) instead of being disjoint.
      per_example: draw boundaries per example instead of per call (on a batch sharded
        explicitly, only inside ``jax.set_mesh``: a ``ValueError`` otherwise).

    Returns:
      ``(N, floor(H / ratio), floor(W / ratio), C)``, the dtype of ``x``.

    References:
      Graham. Fractional Max-Pooling. arXiv:1412.6071, 2014.
    """
    batched, unbatched = _windows.check_input(x)
    ratio_h, ratio_w = _check_ratio(ratio)
    if sequence not in SEQUENCES:
        raise ValueError(f"sequence must be one of {SEQUENCES}; got {sequence!r}")
    overlapping = _windows.check_flag(overlapping, "overlapping")
    per_example = _windows.check_flag(per_example, "per_example")
    deterministic = _windows.check_flag(deterministic, "deterministic")
    _, h, w, _ = batched.shape
    out_h = output_size(h, ratio_h, overlapping, "height")
    out_w = output_size(w, ratio_w, overlapping, "width")
    if deterministic:
        rows = jnp.asarray(fixed_boundaries(h, out_h, overlapping))
        cols = jnp.asarray(fixed_boundaries(w, out_w, overlapping))
        return _windows.to_output(_pool(batched, rows, cols, overlapping), x.dtype, unbatched)
    key = _windows.require_key(key, "fractional_max_pool")

    def draw(k):
        k_rows, k_cols = jax.random.split(k)
        return (
            random_boundaries(k_rows, h, out_h, overlapping, sequence),
            random_boundaries(k_cols, w, out_w, overlapping, sequence),
        )

    if per_example:
        rows, cols = jax.vmap(draw)(_windows.keys_per_example(key, batched, "fractional_max_pool"))
        y = jax.vmap(lambda xi, r, c: _pool(xi[None], r, c, overlapping)[0])(batched, rows, cols)
    else:
        y = _pool(batched, *draw(key), overlapping)
    return _windows.to_output(y, x.dtype, unbatched)
