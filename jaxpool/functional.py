r"""Pure pooling functions (NHWC), the math behind :mod:`jaxpool.modules`.

Every function takes ``x`` of shape ``(N, H, W, C)`` or unbatched ``(H, W, C)`` and any floating
dtype, and returns the same dtype; the arithmetic runs in float32 (float16 and bfloat16 gain range
and precision; float64 gets float32 precision, except max pooling, which selects exactly).
``strides=None``
means strides equal to the window (as in PyTorch; note that ``flax.linen.max_pool`` defaults to
stride 1).  ``padding`` is ``'VALID'`` (a window larger than the input is an error) or ``'SAME'``
(output ``ceil(H / stride)``, as flax); padded positions are never the max, never counted in an
average or expectation, and never sampled.  Inside each window ``R`` the ``K = kh * kw`` elements
are flattened in row-major ``(kh, kw)`` order; learnable window-shaped kernels use the same order.

Each function's body is its reference implementation: plain ``jnp``/``lax``, noise from
``jax.random``, derivatives by JAX's autodiff (so ``jax.jvp``, ``jax.jacfwd``, ``jax.hessian`` and
``grad`` of ``grad`` work).  Some have a fast path for one backend, in the private ``_fast_*``
modules, chosen by the keyword-only ``implementation``:

- ``'reference'``: the reference;
- ``'fast'``: the fast path where one exists for these arguments, else the reference;
- ``'auto'`` (default): the fast path only on a backend and window geometry where it was measured
  faster (each function says where: the tables are in the fast modules' docstrings); on GPU and
  TPU, where nothing was measured, the reference.  Where a fast path needs the input's size
  (tree's choice, the fast noise generator) and the size is symbolic (``jax.export`` with a
  polymorphic batch), the reference; ``'fast'`` then raises for the noise generator.

A fast path computes the same values and gradients up to float rounding for finite inputs and has
forward mode too, but a stochastic fast path draws its noise from its own generator
(:mod:`jaxpool._fast_rng`): the same distributions as ``jax.random``, other random numbers.  So a
key gives different samples under ``'reference'`` and ``'fast'``.  Second derivatives may differ:
TDGS's fast rule in training mode differentiates its straight-through estimator once, so
``jax.hessian`` there is not the reference's (both are derivatives of an estimator, not of the
sample); take ``implementation='reference'`` for second-order work.

Non-finite inputs: max propagates NaN and ±inf; stochastic, TDGS and SoftPool take the limits
their docstrings state.  Where an infinity meets a zero or an opposite weight (avg's and mixed's
means of +inf and -inf, gated and tree mixtures, LP, LIP's normalisation, S3Pool's expectation,
whose other grid blocks weigh an entry 0) the output may be NaN, and the reference and fast
paths may put NaN in different places.

Stochastic functions take an explicit ``key`` and raise without one unless ``deterministic=True``.
As with ``jax.random`` (under its default threefry PRNG; not under ``rbg``), a ``vmap`` over keys
equals a loop over them, and the samples do not depend on how the batch is sharded.  The
stochastic poolers are written in :mod:`jaxpool._stochastic` and :mod:`jaxpool._s3`; the poolers that came after the study's papers, reference implementations
only, in :mod:`jaxpool._weighted` (SoftPool, LP/GeM, LIP), :mod:`jaxpool._antialiased` (MaxBlurPool)
and :mod:`jaxpool._fractional` (fractional max pooling); all are exported from here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpool import _fast_windows, _window_ops, _windows
from jaxpool._antialiased import binomial_filter as binomial_filter
from jaxpool._antialiased import max_blur_pool as max_blur_pool
from jaxpool._fractional import fractional_max_pool as fractional_max_pool
from jaxpool._s3 import s3_pool as s3_pool  # re-exported: `x as x` marks a public name
from jaxpool._stochastic import gumbel_softmax as gumbel_softmax
from jaxpool._stochastic import stochastic_pool as stochastic_pool
from jaxpool._stochastic import tdgs_pool as tdgs_pool
from jaxpool._weighted import conv_same as conv_same
from jaxpool._weighted import lip_logits as lip_logits
from jaxpool._weighted import lip_pool as lip_pool
from jaxpool._weighted import lp_pool as lp_pool
from jaxpool._weighted import soft_pool as soft_pool
from jaxpool._windows import Window

_F32 = jnp.float32


# ----------------------------------------------------------------------------- baselines
def max_pool(
    x: jax.Array,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: str = "VALID",
    *,
    implementation: str = "auto",
) -> jax.Array:
    r"""Max pooling over each window ``R``.

    .. math::
      y = \max_{i \in R} x_i

    Equal to ``flax.linen.max_pool(x, window_shape, strides, padding)`` with the same strides,
    derivative included: it goes to the first maximal element (row-major) of a window, not split
    between ties.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      window_shape: int or ``(kh, kw)``.
      strides: int, ``(sh, sw)``, or None for strides equal to the window.
      padding: ``'VALID'`` or ``'SAME'``.
      implementation: ``'auto'``, ``'reference'`` or ``'fast'`` (module docstring).  The fast
        path applies to non-overlapping VALID windows; ``'auto'`` takes it on CPU
        (measurements: :mod:`jaxpool._fast_windows`).

    Returns:
      ``(N, Ho, Wo, C)`` (or ``(Ho, Wo, C)``), the dtype of ``x``.
    """
    batched, unbatched = _windows.check_input(x)
    spec = _windows.window_spec(batched.shape[1:3], window_shape, strides, padding)
    if (
        _windows.use_fast(implementation, _fast_windows.MAX_WINS)
        and (view := _windows.window_view(batched, spec)) is not None
    ):
        return _windows.to_output(_fast_windows.view_max(view), x.dtype, unbatched)
    elements = _windows.window_elements(batched, spec)
    y = _window_ops.window_max(elements, _windows.valid_masks(spec))
    return _windows.to_output(y, x.dtype, unbatched)


def avg_pool(
    x: jax.Array,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: str = "VALID",
    *,
    implementation: str = "auto",
) -> jax.Array:
    r"""Average pooling over the real (non-padding) elements of each window ``R``.

    .. math::
      y = \frac{1}{|R|} \sum_{i \in R} x_i

    Equal to ``flax.linen.avg_pool(x, window_shape, strides, padding, count_include_pad=False)``.
    The sum runs in float32.

    Args:
      x, window_shape, strides, padding: as :func:`max_pool`.
      implementation: ``'auto'``, ``'reference'`` or ``'fast'``; all three run the reference
        (there is no fast path).

    Returns:
      ``(N, Ho, Wo, C)`` (or ``(Ho, Wo, C)``), the dtype of ``x``.
    """
    _windows.check_implementation(implementation)
    batched, unbatched = _windows.check_input(x)
    elements, masks, spec = _windows.windows(batched, window_shape, strides, padding)
    return _windows.to_output(_window_ops.window_mean(elements, spec, masks), x.dtype, unbatched)


# ----------------------------------------------------------------------------- Lee et al.
def _max_mean_mix(
    gate: jax.Array, elements: _window_ops.WindowElements, spec: _windows.WindowSpec
) -> jax.Array:
    """``gate * max(R) + (1 - gate) * mean(R)`` per window, float32."""
    masks = _windows.valid_masks(spec)
    window_max = _window_ops.window_max(elements, masks).astype(_F32)
    return gate * window_max + (1 - gate) * _window_ops.window_mean(elements, spec, masks)


def mixed_pool(
    x: jax.Array,
    alpha: jax.Array,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: str = "VALID",
    *,
    implementation: str = "auto",
) -> jax.Array:
    r"""Mixed max-average pooling (Lee, Gallagher & Tu, AISTATS 2016).

    .. math::
      y = s \max_{i \in R} x_i + (1 - s) \frac{1}{|R|} \sum_{i \in R} x_i,
      \qquad s = \sigma(\alpha)

    The max's derivative goes to the first maximal element, as in :func:`max_pool`.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      alpha: mixing logit, shape ``(C,)`` (one per channel) or ``()`` (one per layer).
      window_shape, strides, padding: as :func:`max_pool`.
      implementation: ``'auto'``, ``'reference'`` or ``'fast'`` (module docstring).  The fast
        path applies to non-overlapping VALID windows; ``'auto'`` takes it on CPU
        (measurements: :mod:`jaxpool._fast_windows`).

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.

    References:
      Lee, Gallagher, Tu. Generalizing Pooling Functions in Convolutional Neural Networks: Mixed,
      Gated, and Tree. AISTATS 2016 (arXiv:1509.08985).
    """
    batched, unbatched = _windows.check_input(x)
    channels = batched.shape[-1]
    alpha = _window_ops.per_layer_or_channel(alpha, "alpha", channels)
    spec = _windows.window_spec(batched.shape[1:3], window_shape, strides, padding)
    out_shape = (batched.shape[0], *spec.out_size, channels)
    if (
        _windows.use_fast(implementation, _fast_windows.MIXED_WINS)
        and (view := _windows.window_view(batched.astype(_F32), spec)) is not None
    ):
        logit = _fast_windows.broadcast_param(alpha, out_shape)
        return _windows.to_output(_fast_windows.view_gate_mix(view, logit), x.dtype, unbatched)
    s = jnp.broadcast_to(jax.nn.sigmoid(alpha), out_shape)
    y = _max_mean_mix(s, _windows.window_elements(batched, spec), spec)
    return _windows.to_output(y, x.dtype, unbatched)


def _bias_for(bias, kernel_rank: int, spec: _windows.WindowSpec, channels: int) -> jax.Array:
    expected = {2: (), 3: (channels,), 5: (*spec.out_size, channels)}[kernel_rank]
    bias = jnp.asarray(bias)
    if bias.shape != expected:
        raise ValueError(
            f"gate_bias must have shape {expected} to match gate_kernel of rank {kernel_rank}; "
            f"got {bias.shape}"
        )
    return bias.astype(_F32)


def gated_pool(
    x: jax.Array,
    gate_kernel: jax.Array,
    gate_bias: jax.Array | None = None,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: str = "VALID",
    *,
    implementation: str = "auto",
) -> jax.Array:
    r"""Gated max-average pooling (Lee, Gallagher & Tu, AISTATS 2016).

    .. math::
      y = g \max_{i \in R} x_i + (1 - g) \frac{1}{|R|} \sum_{i \in R} x_i,
      \qquad g = \sigma(w^\top R + b)

    The max's derivative goes to the first maximal element, as in :func:`max_pool`.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      gate_kernel: the window-shaped gating mask ``w``: ``(kh, kw)`` shared by all channels (Lee et
        al.'s released code), ``(kh, kw, C)`` one per channel, or ``(Ho, Wo, kh, kw, C)`` one per
        output position and channel.
      gate_bias: ``b``, shape ``()``, ``(C,)`` or ``(Ho, Wo, C)`` to match, or None for no bias.
      window_shape, strides, padding: as :func:`max_pool`.
      implementation: ``'auto'``, ``'reference'`` or ``'fast'`` (module docstring).  The fast
        path applies to non-overlapping VALID windows; ``'auto'`` takes it on CPU
        (measurements: :mod:`jaxpool._fast_windows`).

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.

    References:
      Lee, Gallagher, Tu. AISTATS 2016 (arXiv:1509.08985), as :func:`mixed_pool`.
    """
    batched, unbatched = _windows.check_input(x)
    channels = batched.shape[-1]
    spec = _windows.window_spec(batched.shape[1:3], window_shape, strides, padding)
    weights = _window_ops.kernel_weights(gate_kernel, spec, channels, "gate_kernel")
    bias = None
    if gate_bias is not None:
        bias = _bias_for(gate_bias, jnp.ndim(gate_kernel), spec, channels)
    if (
        _windows.use_fast(implementation, _fast_windows.GATED_WINS)
        and (view := _windows.window_view(batched.astype(_F32), spec)) is not None
    ):
        logit = _fast_windows.kernel_dot(gate_kernel, spec, view)
        if bias is not None:
            logit = logit + _fast_windows.broadcast_param(bias, logit.shape)
        return _windows.to_output(_fast_windows.view_gate_mix(view, logit), x.dtype, unbatched)
    elements = _window_ops.f32(_windows.window_elements(batched, spec))
    logit = _window_ops.window_dot(weights, elements)
    if bias is not None:
        logit = logit + bias
    y = _max_mean_mix(jax.nn.sigmoid(logit), elements, spec)
    return _windows.to_output(y, x.dtype, unbatched)


def tree_pool(
    x: jax.Array,
    leaf_kernels: jax.Array,
    gate_kernel: jax.Array,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: str = "VALID",
    *,
    implementation: str = "auto",
) -> jax.Array:
    r"""Two-level tree pooling (Lee, Gallagher & Tu, AISTATS 2016).

    .. math::
      y = \sigma(w^\top R)\, v_1^\top R + \left(1 - \sigma(w^\top R)\right) v_2^\top R

    Two learned leaf pooling filters ``v1, v2`` and one gating mask ``w``, window-shaped, no bias
    (as Lee et al.).  The leaves are free linear filters, so ``y`` need not lie in ``[min R, max R]``.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      leaf_kernels: ``(2,) +`` a gate-kernel shape (see :func:`gated_pool`): ``v1 = leaf_kernels[0]``,
        ``v2 = leaf_kernels[1]``.
      gate_kernel: ``w``, same sharing as the leaves: ``(kh, kw)``, ``(kh, kw, C)`` or
        ``(Ho, Wo, kh, kw, C)``.
      window_shape, strides, padding: as :func:`max_pool`.
      implementation: ``'auto'``, ``'reference'`` or ``'fast'`` (module docstring).  The fast
        path applies to non-overlapping VALID windows; ``'auto'`` takes it on CPU for inputs of
        at least ``2**22`` elements (measurements: :mod:`jaxpool._fast_windows`).

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.

    References:
      Lee, Gallagher, Tu. AISTATS 2016 (arXiv:1509.08985), as :func:`mixed_pool`.
    """
    batched, unbatched = _windows.check_input(x)
    channels = batched.shape[-1]
    spec = _windows.window_spec(batched.shape[1:3], window_shape, strides, padding)
    leaf_kernels, gate_kernel = jnp.asarray(leaf_kernels), jnp.asarray(gate_kernel)
    if leaf_kernels.shape != (2, *gate_kernel.shape):
        raise ValueError(
            f"leaf_kernels must have shape (2,) + gate_kernel.shape = {(2, *gate_kernel.shape)}; "
            f"got {leaf_kernels.shape}"
        )
    kernels = {"gate_kernel": gate_kernel, "leaf_kernels[0]": leaf_kernels[0]}
    kernels["leaf_kernels[1]"] = leaf_kernels[1]
    for name, kernel in kernels.items():  # shape checks
        _window_ops.kernel_weights(kernel, spec, channels, name)
    if (
        _windows.use_fast(implementation, _fast_windows.tree_wins(batched.size))
        and (view := _windows.window_view(batched.astype(_F32), spec)) is not None
    ):
        gate, first, second = (_fast_windows.kernel_dot(k, spec, view) for k in kernels.values())
    else:
        elements = _window_ops.f32(_windows.window_elements(batched, spec))
        gate, first, second = (
            _window_ops.window_dot(_window_ops.kernel_weights(k, spec, channels, name), elements)
            for name, k in kernels.items()
        )
    gate = jax.nn.sigmoid(gate)
    y = gate * first + (1 - gate) * second
    return _windows.to_output(y, x.dtype, unbatched)
