"""Per-window reductions and selections of the reference poolers: plain jnp, JAX's own autodiff.

Windows come as K ``(N, Ho, Wo, C)`` elements in row-major ``(kh, kw)`` order, with optional
per-element ``(Ho, Wo, 1)`` masks that are ``False`` on padding (see :mod:`jaxpool._windows`).
Poolers combine the K elements elementwise, which XLA fuses into a few loops.  Every function
here supports forward and reverse mode to any order (``jvp``, ``jacfwd``, ``hessian``).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jaxpool import _windows

_F32 = jnp.float32

WindowElements = list  # K arrays (N, Ho, Wo, C), one per position in the window
Masks = list | None  # per element a (Ho, Wo, 1) bool mask or None (see _windows.valid_masks)


def masked(elements: WindowElements, masks: Masks, fill: float) -> WindowElements:
    """``elements`` with ``fill`` on padding."""
    if masks is None:
        return elements
    return [e if m is None else jnp.where(m, e, fill) for e, m in zip(elements, masks, strict=True)]


def f32(elements: WindowElements) -> WindowElements:
    return [e.astype(_F32) for e in elements]


def first_argmax(scores: WindowElements) -> jax.Array:
    """int32 index of the largest score per window, the first one (row-major) on ties.  A NaN is
    larger than any number (the first NaN of a window wins), so a max built on this index
    propagates NaN as ``jnp.max`` and ``lax.reduce_window`` do."""
    best, index = scores[0], jnp.zeros(scores[0].shape, jnp.int32)
    for k in range(1, len(scores)):
        score = scores[k]
        better = (score > best) | ((score != score) & (best == best))  # x != x: x is NaN
        best, index = jnp.where(better, score, best), jnp.where(better, k, index)
    return index


def select(index: jax.Array, values: WindowElements) -> jax.Array:
    """``values[index]`` per window, exactly; its derivative reaches the selected element only."""
    out = values[0]
    for k in range(1, len(values)):
        out = jnp.where(index == k, values[k], out)
    return out


def window_max(elements: WindowElements, masks: Masks) -> jax.Array:
    """Per-window max of the real elements.  Its derivative goes to the first maximal element
    (row-major), as ``flax.linen.max_pool``'s and PyTorch's, instead of being split between ties
    as the derivative of ``jnp.max`` is."""
    elements = masked(elements, masks, -jnp.inf)
    return select(first_argmax(elements), elements)


def window_sum(elements: WindowElements) -> jax.Array:
    # Padding holds 0, so the plain sum already leaves it out.
    return functools.reduce(jnp.add, elements)


def window_mean(elements: WindowElements, spec: _windows.WindowSpec, masks: Masks) -> jax.Array:
    """float32 mean over the real elements of each window."""
    return window_sum(f32(elements)) / _windows.count_valid(spec, masks)


def window_softmax(logits: WindowElements, masks: Masks = None) -> WindowElements:
    """Softmax over each window; a ``-inf`` logit gets weight 0, and so does padding (``masks``).

    Infinite logits take their limits: a window's ``+inf`` logits share all its weight; a window
    whose logits are all ``-inf`` is uniform over its real elements.  A NaN propagates.
    """
    if masks is not None:
        logits = masked(logits, masks, -jnp.inf)
    top = jax.lax.stop_gradient(functools.reduce(jnp.maximum, logits))
    finite = jnp.isfinite(top)
    shift = jnp.where(finite, top, 0.0)
    # Where top is infinite: 0 for the logits equal to it, -inf for the others.
    exps = [
        jnp.exp(jnp.where(finite, z - shift, jnp.where(z == top, 0.0, -jnp.inf))) for z in logits
    ]
    if masks is not None:
        exps = masked(exps, masks, 0.0)
    total = window_sum(exps)
    return [e / total for e in exps]


def window_dot(weights: WindowElements, elements: WindowElements) -> jax.Array:
    """Per-window inner product ``w . R``; padding holds 0, so it contributes nothing."""
    return window_sum([w * e for w, e in zip(weights, elements, strict=True)])


def expectation(probs: WindowElements, elements: WindowElements) -> jax.Array:
    """``sum_k p_k R_k`` over the elements of nonzero probability: one of probability 0 adds
    nothing, even an infinite one (``0 * inf`` would be NaN), and its value gets no derivative."""
    return window_sum([p * jnp.where(p != 0, e, 0.0) for p, e in zip(probs, elements, strict=True)])


def per_layer_or_channel(value: jax.Array, name: str, channels: int) -> jax.Array:
    """A parameter of shape ``()`` (one per layer) or ``(C,)`` (one per channel) as float32; any other
    shape or a value that is not a number is a ``ValueError`` naming ``name``."""
    if isinstance(value, str):
        raise ValueError(f"{name} must be a number or an array of numbers; got {value!r}")
    try:
        value = jnp.asarray(value)
    except TypeError as e:
        raise ValueError(f"{name} must be a number or an array of numbers; got {value!r}") from e
    if not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
        raise ValueError(f"{name} must be a real number or array; got dtype {value.dtype}")
    if value.shape not in ((), (channels,)):
        raise ValueError(
            f"{name} must have shape () or (C,) = ({channels},) for an input with C={channels}; "
            f"got {value.shape}"
        )
    return value.astype(_F32)


def kernel_weights(
    kernel: jax.Array, spec: _windows.WindowSpec, channels: int, name: str
) -> WindowElements:
    """A window-shaped kernel as K float32 weights, each broadcastable to ``(N, Ho, Wo, C)``.

    Shapes: ``(kh, kw)`` per layer, ``(kh, kw, C)`` per channel, ``(Ho, Wo, kh, kw, C)`` per
    output position and channel; any other is a ``ValueError`` naming ``name``.
    """
    (kh, kw), (ho, wo), k = spec.window, spec.out_size, spec.num_elements
    kernel = jnp.asarray(kernel)
    allowed = {
        (kh, kw): (k, 1),
        (kh, kw, channels): (k, channels),
        (ho, wo, kh, kw, channels): (ho, wo, k, channels),
    }
    if kernel.shape not in allowed:
        raise ValueError(
            f"{name} must have one of the shapes {sorted(allowed)} (per layer, per channel, per "
            f"region and channel) for window {spec.window}, output {spec.out_size} and "
            f"C={channels}; got {kernel.shape}"
        )
    weights = kernel.astype(_F32).reshape(allowed[kernel.shape])
    if weights.ndim == 2:
        return [weights[i] for i in range(k)]
    return [weights[:, :, i, :] for i in range(k)]


def sample_index(uniforms: jax.Array, weights: WindowElements) -> jax.Array:
    """One index per window drawn with probabilities proportional to the non-negative
    ``weights`` (they need not sum to 1), by inverse CDF from one uniform in ``[0, 1)`` each.

    An element of weight 0 is never drawn: its cumulative sum equals its predecessor's, so a
    smaller index always satisfies ``cdf > u * total`` first.  Where ``u * total`` rounds up to
    ``total`` the draw is the last element of positive weight.
    """
    cdf = list(itertools.accumulate(weights))
    threshold = uniforms * cdf[-1]
    index = jnp.zeros(weights[0].shape, jnp.int32)
    for k in range(len(weights)):
        index = jnp.where(weights[k] > 0, k, index)
    for k in reversed(range(len(weights))):
        index = jnp.where(cdf[k] > threshold, k, index)
    return index


def padding_offsets(masks: Masks, count: int) -> list[jax.Array]:
    """Per element a float32 logit offset: ``-inf`` on padding (never drawn, weight 0), else 0."""
    return [
        jnp.zeros((), _F32) if m is None else jnp.where(m, np.float32(0), np.float32(-np.inf))
        for m in (masks or [None] * count)
    ]
