r"""A stride-1 "SAME" 2-D convolution (NHWC, HWIO) with a hand-written backward pass.

Same values and gradients as ``lax.conv_general_dilated(x, w, (1, 1), "SAME")`` and ``flax.linen.Conv``;
the backward pass is written as two forward convolutions:

* :math:`dx = dy \star \mathrm{flip}(w)^{\top}` (kernel flipped in space, in/out channels swapped);
* :math:`dw[i, j, c, o] = \sum_{n, h, w} x_{pad}[n, h + i, w + j, c]\, dy[n, h, w, o]`, computed as a
  convolution of ``x`` as ``(C, H, W, N)`` with ``dy`` as ``(H, W, N, O)`` as the kernel.

Why: XLA:CPU hands forward-form convolutions to its fast library kernels, but inside a
``lax.fori_loop`` (the compiled training chunks of :mod:`train.core.device_loop`) it left autodiff's
backward convolutions in forms that its slow generic kernel runs; the training step inside a
loop was ~8x slower. Written this way, the loop body runs as fast as a standalone step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

_DN = ("NHWC", "HWIO", "NHWC")


def _same_pads(k: int) -> tuple[int, int]:
    """(low, high) padding of one axis for "SAME" at stride 1: the split lax uses."""
    return (k - 1) // 2, k // 2


def _conv(x: jax.Array, w: jax.Array, pads) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_DN)


@jax.custom_vjp
def conv_same(x: jax.Array, w: jax.Array) -> jax.Array:
    """``(N, H, W, C) * (kh, kw, C, O) -> (N, H, W, O)``, stride 1, "SAME" padding."""
    return _conv(x, w, (_same_pads(w.shape[0]), _same_pads(w.shape[1])))


def _conv_same_fwd(x, w):
    return conv_same(x, w), (x, w)


def _conv_same_bwd(residuals, dy):
    x, w = residuals
    (top, bottom), (left, right) = _same_pads(w.shape[0]), _same_pads(w.shape[1])
    w_flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)  # (kh, kw, O, C)
    dx = _conv(dy, w_flipped, ((bottom, top), (right, left)))
    # (C, H, W, N) * (H, W, N, O) -> (C, kh, kw, O): the batch is the contracted channel axis.
    dw = _conv(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), ((top, bottom), (left, right)))
    return dx, dw.transpose(1, 2, 0, 3).astype(w.dtype)


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


class ConvSame(nn.Module):
    """``flax.linen.Conv(features, kernel_size, padding="SAME")`` (stride 1, with bias) computed
    by :func:`conv_same`; the same parameters (``kernel`` HWIO, ``bias``) and initialisers.
    One difference: it computes in the input's dtype (bfloat16 in, bfloat16 out), where
    ``nn.Conv`` promotes to its float32 parameters.  The CNN feeds float32.

    Attributes:
      features: output channels ``O``.
      kernel_size: ``(kh, kw)``.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``(N, H, W, C)`` -> ``(N, H, W, features)``."""
        if x.ndim != 4:
            raise ValueError(f"ConvSame expects NHWC input (4 dims), got shape {x.shape}")
        kernel = self.param(
            "kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features)
        )
        bias = self.param("bias", self.bias_init, (self.features,))
        return conv_same(x, kernel.astype(x.dtype)) + bias.astype(x.dtype)
