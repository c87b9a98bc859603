r"""Pure pooling functions (NHWC), the math behind :mod:`jaxpool.modules`.

Every function takes ``x`` of shape ``(N, H, W, C)`` or unbatched ``(H, W, C)`` and any floating
dtype, and returns the same dtype; probability and softmax math runs in float32.  ``strides=None``
means strides equal to the window (as in PyTorch; note that ``flax.linen.max_pool`` defaults to
stride 1).  ``padding`` is ``'VALID'`` (a window larger than the input is an error) or ``'SAME'``
(output ``ceil(H / stride)``, as flax); padded positions are never the max, never counted in an
average or expectation, and never sampled.  Inside each window ``R`` the ``K = kh * kw`` elements
are flattened in row-major ``(kh, kw)`` order; learnable window-shaped kernels use the same order.

Stochastic functions take an explicit ``key`` and raise without one unless ``deterministic=True``.
Their per-element noise (uniforms, Gumbels) comes from the Threefry-2x32-20 generator of
``jax.random`` seeded by ``key`` and written in jnp ops (:func:`jaxpool._rng.uniform`): the
distributions of ``jax.random.uniform`` and ``jax.random.gumbel``, other bits.  As with
``jax.random``, a ``vmap`` over keys equals a loop over them, and the samples do not depend on how
the batch is sharded.

The stochastic poolers are written in :mod:`jaxpool._stochastic` and :mod:`jaxpool._s3`, the poolers
that came after the study's papers in :mod:`jaxpool._weighted` (SoftPool, LP/GeM, LIP),
:mod:`jaxpool._antialiased` (MaxBlurPool) and :mod:`jaxpool._fractional` (fractional max pooling);
all are exported from here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpool import _window_ops, _windows
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
    x: jax.Array, window_shape: Window = 2, strides: Window | None = None, padding: str = "VALID"
) -> jax.Array:
    r"""Max pooling: :math:`y = \max_{i \in R} x_i` over each window ``R``.

    Equal to ``flax.linen.max_pool(x, window_shape, strides, padding)`` with the same strides.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      window_shape: int or ``(kh, kw)``.
      strides: int, ``(sh, sw)``, or None for strides equal to the window.
      padding: ``'VALID'`` or ``'SAME'``.

    Returns:
      ``(N, Ho, Wo, C)`` (or ``(Ho, Wo, C)``), the dtype of ``x``.
    """
    x4, unbatched = _windows.check_input(x)
    spec = _windows.window_spec(x4.shape[1:3], window_shape, strides, padding)
    x6 = _windows.window_view(x4, spec)
    if x6 is not None:
        return _windows.finish(
            _window_ops.view_max(x6.shape[2], x6.shape[4], x6), x.dtype, unbatched
        )
    elems = _windows.window_elements(x4, spec)
    return _windows.finish(
        _window_ops.window_max(elems, _windows.valid_masks(spec)), x.dtype, unbatched
    )


def avg_pool(
    x: jax.Array, window_shape: Window = 2, strides: Window | None = None, padding: str = "VALID"
) -> jax.Array:
    r"""Average pooling over the real (non-padding) elements: :math:`y = \frac{1}{|R|}\sum_{i\in R} x_i`.

    Equal to ``flax.linen.avg_pool(x, window_shape, strides, padding, count_include_pad=False)``.
    Shapes as :func:`max_pool`; the sum runs in float32.
    """
    x4, unbatched = _windows.check_input(x)
    elems, masks, spec = _windows.windows(x4, window_shape, strides, padding)
    return _windows.finish(_window_ops.window_mean(elems, spec, masks), x.dtype, unbatched)


# ----------------------------------------------------------------------------- Lee et al.
def mixed_pool(
    x: jax.Array,
    alpha: jax.Array,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: str = "VALID",
) -> jax.Array:
    r"""Mixed max-average pooling (Lee, Gallagher & Tu, AISTATS 2016).

    .. math::
      y = s \max_{i \in R} x_i + (1 - s) \frac{1}{|R|} \sum_{i \in R} x_i,
      \qquad s = \sigma(\alpha)

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      alpha: mixing logit, shape ``(C,)`` (one per channel) or ``()`` (one per layer).
      window_shape, strides, padding: as :func:`max_pool`.

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.

    References:
      Lee, Gallagher, Tu. Generalizing Pooling Functions in Convolutional Neural Networks: Mixed,
      Gated, and Tree. AISTATS 2016 (arXiv:1509.08985).
    """
    x4, unbatched = _windows.check_input(x)
    alpha = jnp.asarray(alpha)
    channels = x4.shape[-1]
    if alpha.shape not in ((), (channels,)):
        raise ValueError(
            f"alpha must have shape () or (C,) = ({channels},) for an input with C={channels}; "
            f"got {alpha.shape}"
        )
    spec = _windows.window_spec(x4.shape[1:3], window_shape, strides, padding)
    x6 = _windows.window_view(x4.astype(_F32), spec)
    if x6 is not None:
        z = _window_ops.broadcast_param(alpha.astype(_F32), (x6.shape[0], *spec.out_size, channels))
        return _windows.finish(_window_ops.view_gate_mix(*spec.window, x6, z), x.dtype, unbatched)
    elems, masks = _windows.window_elements(x4, spec), _windows.valid_masks(spec)
    s = _window_ops.broadcast_param(jax.nn.sigmoid(alpha.astype(_F32)), elems[0].shape)
    y = s * _window_ops.window_max(elems, masks).astype(_F32) + (1 - s) * _window_ops.window_mean(
        elems, spec, masks
    )
    return _windows.finish(y, x.dtype, unbatched)


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
) -> jax.Array:
    r"""Gated max-average pooling (Lee, Gallagher & Tu, AISTATS 2016).

    .. math::
      y = g \max_{i \in R} x_i + (1 - g) \frac{1}{|R|} \sum_{i \in R} x_i,
      \qquad g = \sigma(w^\top R + b)

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      gate_kernel: the window-shaped gating mask ``w``: ``(kh, kw)`` shared by all channels (Lee et
        al.'s released code), ``(kh, kw, C)`` one per channel, or ``(Ho, Wo, kh, kw, C)`` one per
        output position and channel.
      gate_bias: ``b``, shape ``()``, ``(C,)`` or ``(Ho, Wo, C)`` to match, or None for no bias.
      window_shape, strides, padding: as :func:`max_pool`.

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.
    """
    x4, unbatched = _windows.check_input(x)
    channels = x4.shape[-1]
    spec = _windows.window_spec(x4.shape[1:3], window_shape, strides, padding)
    masks = _windows.valid_masks(spec)
    x6, values = _window_ops.f32_windows(x4, spec)
    shape = values[0].shape
    z = _window_ops.kernel_dot(gate_kernel, spec, x6, values, "gate_kernel")
    if gate_bias is not None:
        bias = _bias_for(gate_bias, jnp.ndim(gate_kernel), spec, channels)
        z = z + _window_ops.broadcast_param(bias, shape)
    if x6 is not None:
        return _windows.finish(_window_ops.view_gate_mix(*spec.window, x6, z), x.dtype, unbatched)
    g = jax.nn.sigmoid(z)
    y = g * _window_ops.window_max(values, masks) + (1 - g) * _window_ops.window_mean(
        values, spec, masks
    )
    return _windows.finish(y, x.dtype, unbatched)


def tree_pool(
    x: jax.Array,
    leaf_kernels: jax.Array,
    gate_kernel: jax.Array,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: str = "VALID",
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

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.
    """
    x4, unbatched = _windows.check_input(x)
    spec = _windows.window_spec(x4.shape[1:3], window_shape, strides, padding)
    x6, values = _window_ops.f32_windows(x4, spec)
    leaf_kernels, gate_kernel = jnp.asarray(leaf_kernels), jnp.asarray(gate_kernel)
    if leaf_kernels.shape != (2, *gate_kernel.shape):
        raise ValueError(
            f"leaf_kernels must have shape (2,) + gate_kernel.shape = {(2, *gate_kernel.shape)}; "
            f"got {leaf_kernels.shape}"
        )
    gate = jax.nn.sigmoid(_window_ops.kernel_dot(gate_kernel, spec, x6, values, "gate_kernel"))
    leaves = [
        _window_ops.kernel_dot(leaf, spec, x6, values, "leaf_kernels[i]") for leaf in leaf_kernels
    ]
    y = gate * leaves[0] + (1 - gate) * leaves[1]
    return _windows.finish(y, x.dtype, unbatched)
