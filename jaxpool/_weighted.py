r"""Weighted-mean poolers: SoftPool, LP/GeM and LIP (reference implementations, NHWC).

Each output is a weighted mean of its window ``R`` (``K = kh * kw`` elements, row-major), computed
from the window stacked as ``(N, Ho, Wo, K, C)`` with plain ``jnp`` ops and JAX's own autodiff, so
``grad``, ``jvp``, ``jacfwd`` and ``hessian`` all work.  Import them from
:mod:`jaxpool.functional`.

``padding`` is ``'VALID'``, ``'SAME'`` (as the other poolers) or PyTorch-style explicit padding:
an int ``p`` or a pair ``(ph, pw)`` of zero-or-more pixels added on both sides of each axis
(at most half the window, so every window holds a real element).  Padded positions never take
part in a weighted mean, whichever padding is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from jaxpool import _window_ops, _windows
from jaxpool._windows import Window

_F32 = jnp.float32
Padding = str | int | Sequence[int]


def window_geometry(
    in_size: tuple[int, int], window_shape: Window, strides: Window | None, padding: Padding
) -> _windows.WindowSpec:
    """The window spec for ``'VALID'``/``'SAME'`` or explicit symmetric padding (see module doc)."""
    if isinstance(padding, str):
        if padding.upper() in ("VALID", "SAME"):
            return _windows.window_spec(in_size, window_shape, strides, padding)
        _bad_padding(padding)
    window = _windows.normalize_pair(window_shape, "window_shape")
    pads = _windows.int_pair(padding)
    if pads is None:
        _bad_padding(padding)
    for p, k, axis in zip(pads, window, ("height", "width"), strict=True):
        if not 0 <= p <= k // 2:
            raise ValueError(
                f"explicit padding must be between 0 and half the window ({k // 2} for a {axis} "
                f"window of {k}); got {p} for the {axis}"
            )
    spec = _windows.window_spec(
        in_size, window, strides, "VALID", pads=((pads[0], pads[0]), (pads[1], pads[1]))
    )
    return spec


def _bad_padding(padding: object) -> NoReturn:
    raise ValueError(
        "padding must be 'VALID', 'SAME', an int or a pair of ints (pixels on both sides of "
        f"height and width); got {padding!r}"
    )


def stacked_windows(
    batched: jax.Array, spec: _windows.WindowSpec
) -> tuple[jax.Array, np.ndarray | None]:
    """The windows of ``batched`` as ``(N, Ho, Wo, K, C)`` float32 (padding holds 0) and a
    ``(Ho, Wo, K, 1)`` bool mask of the real elements (None when there is no padding)."""
    elements = _windows.window_elements(batched.astype(_F32), spec, force_general=True)
    masks = _windows.valid_masks(spec)
    valid = None
    if masks is not None:
        ones = np.ones((*spec.out_size, 1), bool)
        valid = np.stack([ones if m is None else m for m in masks], axis=2)
    return jnp.stack(elements, axis=3), valid


def softmax_weighted_mean(
    values: jax.Array, logits: jax.Array, valid: np.ndarray | None
) -> jax.Array:
    r"""``sum_i softmax(logits)_i values_i`` over axis 3 (the window), real elements only.

    The window's largest logit is subtracted before ``exp`` (same value, no overflow), and the
    weights are normalised before they multiply the values, so no partial sum exceeds the largest
    ``|value|``.  Infinite logits take their limits: a ``+inf`` logit takes all the weight (shared
    with the window's other ``+inf`` logits); a window whose logits are all ``-inf`` is a plain mean;
    an element of zero weight adds nothing, even an infinite value.  A NaN propagates.
    """
    if valid is not None:
        logits = jnp.where(valid, logits, -jnp.inf)
    top = jax.lax.stop_gradient(jnp.max(logits, axis=3, keepdims=True))
    finite = jnp.isfinite(top)
    # An infinite top (+inf, or -inf in every element): 1 where the logit is the top, else 0.
    shifted = jnp.where(
        finite, logits - jnp.where(finite, top, 0.0), jnp.where(logits == top, 0.0, -jnp.inf)
    )
    weights = jnp.exp(shifted)
    if valid is not None:
        weights = jnp.where(valid, weights, 0.0)
    weights = weights / jnp.sum(weights, axis=3, keepdims=True)
    # 0 * inf is NaN: an element without weight is left out, its value replaced before the product
    # (a replacement after it would still give NaN derivatives).
    values = jnp.where(weights > 0, values, 0.0)
    return jnp.sum(weights * values, axis=3)


def soft_pool(
    x: jax.Array,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: Padding = "VALID",
) -> jax.Array:
    r"""SoftPool (Stergiou, Poppe & Kalliatakis, ICCV 2021): a softmax-weighted mean of the window.

    .. math::
      y = \sum_{i \in R} \frac{e^{x_i}}{\sum_{j \in R} e^{x_j}}\, x_i

    per channel.  The window's maximum is subtracted before ``exp``, so large activations do not
    overflow (the official CPU and CUDA code exponentiate directly).  No parameters, not random.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``, any float dtype (the math runs in float32, as in
        every pooler).
      window_shape: int or ``(kh, kw)``; 2.
      strides: int, pair, or None for strides equal to the window.
      padding: ``'VALID'``, ``'SAME'``, or explicit pixels (see the module docstring).

    Returns:
      ``(N, Ho, Wo, C)`` (or ``(Ho, Wo, C)``), the dtype of ``x``.

    References:
      Stergiou, Poppe, Kalliatakis. Refining activation downsampling with SoftPool. ICCV 2021
      (arXiv:2101.00440).
    """
    batched, unbatched = _windows.check_input(x)
    spec = window_geometry(batched.shape[1:3], window_shape, strides, padding)
    values, valid = stacked_windows(batched, spec)
    return _windows.to_output(softmax_weighted_mean(values, values, valid), x.dtype, unbatched)


def lp_pool(
    x: jax.Array,
    p: jax.Array,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: Padding = "VALID",
    *,
    eps: float = 1e-6,
) -> jax.Array:
    r"""Learnable power-mean pooling: LP pooling (Sermanet et al., 2012) with GeM's clamp
    (Radenović, Tolias & Chum, TPAMI 2018).

    .. math::
      y = \Big(\frac{1}{|R|} \sum_{i \in R} \max(x_i, \epsilon)^p\Big)^{1/p}

    ``p = 1`` is average pooling (of the clamped input) and ``p \to \infty`` approaches max
    pooling.  Computed as ``m (mean (c / m)^p)^{1/p}`` with ``c = max(x, eps)`` and ``m`` the
    window's largest ``c``: the same value, without overflow for large ``p``.  ``p`` is not
    constrained (as GeM): ``p`` near 0 divides by zero.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      p: the power, shape ``()`` (one per layer) or ``(C,)`` (one per channel).
      window_shape, strides, padding: as :func:`soft_pool`.
      eps: the clamp; 1e-6 as GeM.

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.

    References:
      Sermanet, Chintala, LeCun. Convolutional Neural Networks Applied to House Numbers Digit
      Classification. ICPR 2012.  Radenović, Tolias, Chum. Fine-tuning CNN Image Retrieval with No
      Human Annotation. TPAMI 2018 (arXiv:1711.02512).
    """
    batched, unbatched = _windows.check_input(x)
    _windows.check_positive(eps, "eps", normal=True)
    p = _window_ops.per_layer_or_channel(p, "p", batched.shape[-1])
    spec = window_geometry(batched.shape[1:3], window_shape, strides, padding)
    values, valid = stacked_windows(batched, spec)
    clamped = jnp.maximum(values, eps)
    if valid is None:
        count = spec.num_elements
        top = jnp.max(clamped, axis=3, keepdims=True)
    else:
        count = valid.sum(axis=2)  # (Ho, Wo, 1)
        top = jnp.max(jnp.where(valid, clamped, 0.0), axis=3, keepdims=True)
    # m is any positive constant of the identity y = m (mean (c/m)^p)^(1/p): no gradient through it
    top = jax.lax.stop_gradient(top)
    # XLA may divide by m as a product with 1/m, which flushes to 0 for m above ~1/tiny (8.5e37 in
    # float32): a large m is scaled down by 2^64 on both sides first (exact).
    scale = jnp.where(top > 2.0**64, 2.0**-64, 1.0).astype(top.dtype)
    powered = ((clamped * scale) / (top * scale)) ** p
    if valid is not None:
        powered = jnp.where(valid, powered, 0.0)
    mean = jnp.sum(powered, axis=3) / count
    return _windows.to_output(top[:, :, :, 0] * mean ** (1.0 / p), x.dtype, unbatched)


def conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    r"""Stride-1 ``'SAME'`` convolution ``(N, H, W, C) * (kh, kw, C, O) -> (N, H, W, O)``, written
    as one matrix product of the input's ``kh * kw`` shifted copies (im2col):
    :math:`z = [x_{pad}[:, a:a+H, b:b+W]]_{a, b} \cdot \mathrm{reshape}(W, (kh\,kw\,C, O))`.

    Equal to ``lax.conv_general_dilated(x, kernel, (1, 1), 'SAME')`` (padding split as lax's).
    Why not that: inside a ``lax.fori_loop`` (the training loop of ``train``) XLA:CPU runs the
    kernel gradient of ``lax.conv_general_dilated`` on a slow generic path: 1.6–2.0 s per step
    against 12–77 ms for this form, at batch 64, 32×32×16 and 16×16×32, jaxlib 0.10.2.
    """
    kh, kw, channels, out = kernel.shape
    _, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    shifted = [padded[:, a : a + h, b : b + w] for a in range(kh) for b in range(kw)]
    return jnp.concatenate(shifted, axis=-1) @ kernel.reshape(kh * kw * channels, out)


def lip_logits(
    x: jax.Array,
    kernel: jax.Array,
    norm_scale: jax.Array,
    norm_bias: jax.Array,
    *,
    coefficient: float = 12.0,
    epsilon: float = 1e-5,
) -> jax.Array:
    r"""The logit module of the official "simplified LIP" (Gao, Wang & Wu, ICCV 2019).

    .. math::
      \text{logit} = 12\,\sigma\big(\gamma \cdot \mathrm{IN}(\mathrm{conv}(x, W)) + \beta\big)

    a ``'SAME'`` convolution without bias (C → C, :func:`conv_same`), instance normalisation (per example and
    channel over the spatial axes, biased variance, ``epsilon`` 1e-5 as PyTorch's
    ``InstanceNorm2d``) with affine ``gamma``/``beta``, then ``coefficient * sigmoid``.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      kernel: ``W``, ``(kh, kw, C, C)`` (HWIO); the official one is 3×3.
      norm_scale: ``gamma``, ``(C,)``.
      norm_bias: ``beta``, ``(C,)``.
      coefficient: the gate's scale; 12 as the official code.
      epsilon: the normalisation's variance floor.

    Returns:
      float32 logits, the shape of ``x``, in ``(0, coefficient)``.
    """
    batched, unbatched = _windows.check_input(x)
    _windows.check_positive(epsilon, "epsilon", " (the variance floor)", normal=True)
    channels = batched.shape[-1]
    kernel = jnp.asarray(kernel)
    if kernel.ndim != 4 or kernel.shape[2:] != (channels, channels):
        raise ValueError(
            f"kernel must have shape (kh, kw, C, C) = (kh, kw, {channels}, {channels}) for an input "
            f"with C={channels}; got {kernel.shape}"
        )
    scale = _window_ops.per_layer_or_channel(norm_scale, "norm_scale", channels)
    bias = _window_ops.per_layer_or_channel(norm_bias, "norm_bias", channels)
    z = conv_same(batched.astype(_F32), kernel.astype(_F32))
    mean = jnp.mean(z, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(z - mean), axis=(1, 2), keepdims=True)
    normalised = (z - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias
    logits = coefficient * jax.nn.sigmoid(normalised)
    return logits[0] if unbatched else logits


def lip_pool(
    x: jax.Array,
    logits: jax.Array,
    window_shape: Window = 3,
    strides: Window | None = 2,
    padding: Padding = 1,
) -> jax.Array:
    r"""Local Importance-based Pooling (Gao, Wang & Wu, ICCV 2019).

    .. math::
      y = \frac{\sum_{i \in R} e^{\text{logit}_i}\, x_i}{\sum_{i \in R} e^{\text{logit}_i}}

    a mean of the window weighted by importance ``F(x) = exp(logit)``; the logits come from a
    learned module (:func:`lip_logits` for the official "simplified LIP").  Equal logits give
    average pooling.  The official ``lip2d`` divides two ``avg_pool2d`` calls, so its padding
    (zeros in both) never counts either; this is that quotient.  Defaults are the official window
    3, stride 2, padding 1.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      logits: the shape of ``x``.
      window_shape, strides, padding: as :func:`soft_pool` (defaults 3, 2, 1).

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.

    References:
      Gao, Wang, Wu. LIP: Local Importance-based Pooling. ICCV 2019 (arXiv:1908.04156).
    """
    batched, unbatched = _windows.check_input(x)
    batched_logits, _ = _windows.check_input(logits, "logits")
    if batched_logits.shape != batched.shape:
        raise ValueError(f"logits must have the shape of x, {x.shape}; got {logits.shape}")
    spec = window_geometry(batched.shape[1:3], window_shape, strides, padding)
    values, valid = stacked_windows(batched, spec)
    weights_logits, _ = stacked_windows(batched_logits, spec)
    y = softmax_weighted_mean(values, weights_logits, valid)
    return _windows.to_output(y, x.dtype, unbatched)
