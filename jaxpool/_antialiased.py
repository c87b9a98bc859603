r"""Anti-aliased max pooling, MaxBlurPool (Zhang, ICML 2019): reference implementation (NHWC).

Import it from :mod:`jaxpool.functional`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxpool import _window_ops, _windows
from jaxpool._windows import Window

_F32 = jnp.float32
FILTER_SIZES = range(1, 8)
PAD_MODES = ("reflect", "edge", "constant")


def binomial_filter(size: int) -> np.ndarray:
    """The normalised 1-D binomial filter of ``size`` taps: row ``size - 1`` of Pascal's triangle
    over its sum (``[1, 3, 3, 1] / 8`` for 4).  The 2-D blur is its outer product with itself."""
    if (
        not isinstance(size, (int, np.integer))
        or isinstance(size, bool)
        or size not in FILTER_SIZES
    ):
        raise ValueError(f"filter_size must be an int from 1 to 7; got {size!r}")
    taps = np.array([math.comb(size - 1, k) for k in range(size)], np.float64)
    return taps / taps.sum()


def _blur_axis(x: jax.Array, taps: np.ndarray, stride: int, axis: int, pad_mode: str) -> jax.Array:
    """``y[i] = sum_t taps[t] x_pad[stride * i + t]`` along ``axis``, padded as the official
    BlurPool: ``(size - 1) // 2`` before and ``ceil((size - 1) / 2)`` after."""
    size = len(taps)
    before, after = (size - 1) // 2, size // 2
    if pad_mode == "reflect" and max(before, after) >= x.shape[axis]:
        raise ValueError(
            f"reflect padding of {max(before, after)} needs more than that many positions along "
            f"the blurred axis; the max-pooled input has {x.shape[axis]} (use a larger input, a "
            "smaller filter_size, or pad_mode='edge')"
        )
    if pad_mode == "edge":
        # the first and last positions repeated; jnp.pad(mode='edge') also slices the other axes,
        # which fails on a batch-sharded array under explicit sharding
        n = x.shape[axis]
        first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
        last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
        parts = [jnp.repeat(first, before, axis), x, jnp.repeat(last, after, axis)]
        padded = jnp.concatenate(parts, axis=axis)
    else:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (before, after)
        padded = jnp.pad(x, widths, mode=pad_mode)
    out = (padded.shape[axis] - size) // stride + 1
    total = None
    for t, weight in enumerate(taps):
        part = jax.lax.slice_in_dim(padded, t, t + stride * (out - 1) + 1, stride, axis)
        total = weight * part if total is None else total + weight * part
    return total


def max_blur_pool(
    x: jax.Array,
    window_shape: Window = 2,
    strides: Window = 2,
    *,
    filter_size: int = 4,
    pad_mode: str = "reflect",
) -> jax.Array:
    r"""MaxBlurPool: dense max pooling, then a binomial low-pass filter with stride.

    .. math::
      m = \mathrm{MaxPool}_{k,\ \text{stride } 1}(x), \qquad
      y = \mathrm{subsample}_s\big((b \otimes b) * \mathrm{pad}(m)\big)

    per channel, with ``b`` the normalised binomial filter of ``filter_size`` taps
    (:func:`binomial_filter`; the official default 4 is ``[1, 3, 3, 1] / 8``).  As the official
    ``BlurPool`` the max is VALID (``H - k + 1`` rows) and the blur pads ``(size - 1) // 2`` before
    and ``ceil((size - 1) / 2)`` after by reflection; ``filter_size=1`` only subsamples.  The max's
    derivative goes to the first maximal element of a window (row-major), as in ``max_pool``.  The
    output has ``(H - k + 1 + size - 1 - size) // s + 1`` rows: ``H // 2`` for the defaults.  The
    blur is separable and runs as two weighted sums of strided slices.  No parameters, not random.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      window_shape: the dense max's window, int or ``(kh, kw)``; 2.
      strides: the blur's subsampling, int or ``(sh, sw)``; 2.
      filter_size: blur taps per axis, 1 to 7; 4.
      pad_mode: ``'reflect'`` (official default), ``'edge'`` (replicate) or ``'constant'`` (zeros).

    Returns:
      ``(N, Ho, Wo, C)`` (or ``(Ho, Wo, C)``), the dtype of ``x``.

    References:
      Zhang. Making Convolutional Networks Shift-Invariant Again. ICML 2019 (arXiv:1904.11486);
      code: adobe/antialiased-cnns.
    """
    batched, unbatched = _windows.check_input(x)
    kh, kw = _windows.normalize_pair(window_shape, "window_shape")
    sh, sw = _windows.normalize_pair(strides, "strides")
    taps = binomial_filter(filter_size)
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}; got {pad_mode!r}")
    h, w = batched.shape[1:3]
    if kh > h or kw > w:
        raise ValueError(f"window_shape {(kh, kw)} is larger than the input's {(h, w)}")
    # The dense max by selection, as max_pool's: its derivative goes to the first maximal element
    # of each window, and contains no select-and-scatter (lax.reduce_window's max derivative),
    # which XLA:GPU cannot compile under --xla_gpu_deterministic_ops.
    elements, _, _ = _windows.windows(batched.astype(_F32), (kh, kw), 1, "VALID")
    dense = _window_ops.window_max(elements, None)
    y = _blur_axis(dense, taps, sh, 1, pad_mode)
    y = _blur_axis(y, taps, sw, 2, pad_mode)
    return _windows.to_output(y, x.dtype, unbatched)
