r"""The CNN's fast convolution: a stride-1 "SAME" 2-D convolution (NHWC, HWIO) whose derivative
is written so that its backward pass is two forward-form convolutions.

Same values and derivatives as ``lax.conv_general_dilated(x, w, (1, 1), "SAME")`` and
``flax.linen.Conv``.  The derivative is a ``jax.custom_jvp`` rule, linear in the tangents, so
forward mode (``jax.jvp``, ``jax.jacfwd``) works and JAX transposes it for reverse mode.  Each of
its two terms is the same convolution with dimension numbers chosen so that JAX's transpose of it
is a forward-form convolution (``NHWC`` input, ``HWIO`` kernel, ``NHWC`` output) on arrays
transposed in memory:

* by the input, :math:`\dot x \star w`, the kernel read as ``HWOI``: its transpose is
  :math:`dx = dy \star \mathrm{flip}(w)^{\top}` (kernel flipped in space, in/out channels swapped);
* by the kernel, :math:`x \star \dot w` with ``x`` as ``(C, H, W, N)``, ``\dot w`` as
  ``(C, kh, kw, O)`` and the output as ``(H, W, N, O)``: its transpose is
  :math:`dw[i, j, c, o] = \sum_{n, h, w} x_{pad}[n, h + i, w + j, c]\, dy[n, h, w, o]`, a
  convolution of ``x`` as ``(C, H, W, N)`` with ``dy`` as ``(H, W, N, O)`` as the kernel.

Why: XLA:CPU hands forward-form convolutions to its fast library kernels, but inside a loop
(the ``lax.fori_loop`` of the training chunks of :mod:`train.core.device_loop`, the ``lax.scan``
of micro-batches) it leaves autodiff's backward convolutions (other dimension numbers) to its
slow generic kernel: 16 to 34 times slower training steps in the table below.
``tests/test_conv.py`` checks that the backward pass holds forward-form convolutions only.

The CNN (:class:`train.core.models.CNN`) takes this path or ``flax.linen.Conv`` with autodiff by
its ``implementation`` field, as the poolers do: ``'fast'`` this module, ``'reference'``
``flax.linen.Conv``, ``'auto'`` (default) this module on the CPU backend only, where the table
below shows it faster (on GPU and TPU, where nothing was measured, the reference).  One training
step of the CNN (max pool, Adam, batch 64, ``train.core.steps.train_step``), milliseconds per
step, inside the compiled chunk loop of :func:`train.core.device_loop.train_chunk` (10 steps per
call) or as one jitted step; with 2 micro-batches of 32 (a ``lax.scan``, as ``train.main``
runs on CPU) or none.  Median of 7 rounds, reference and fast alternating in one process
(:func:`train.benchmarks.measure.time_interleaved`), on a 2-core Intel Xeon (AVX-512) shared
with other jobs (load average 4 to 10), jaxlib 0.10.2, the CLI's XLA:CPU flags
(:mod:`train.core.xla_cpu`); two sittings (the first figure of each pair, then the second):

  ==========  ======================  ===============  =============  ==================
  input       step                    reference ms     fast ms        reference / fast
  ==========  ======================  ===============  =============  ==================
  28, 28, 1   in the loop, 2 micro    231 / 265        11.4 / 13.5    20.3 / 19.6
  32, 32, 3   in the loop, 2 micro    609 / 573        19.0 / 16.9    32.0 / 34.0
  28, 28, 1   in the loop, 1 batch    260              9.0            28.9
  28, 28, 1   one step, 2 micro       260 / 274        16.4 / 14.1    15.9 / 19.4
  28, 28, 1   one step, 1 batch       12.5 / 11.0      13.2 / 11.2    0.95 / 0.98
  ==========  ======================  ===============  =============  ==================

The ratio is that of the medians.  Only a step outside any loop ties; training runs every step
inside one (the chunk loop, and the micro-batch scan), so ``'auto'`` takes this path on CPU
throughout.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import linen as nn

from jaxpool import _windows


def use_fast(implementation: str) -> bool:
    """Whether the CNN's convolutions take this module's path: ``'fast'`` always,
    ``'reference'`` never, ``'auto'`` on the CPU backend only (the table above).  The poolers'
    own rule (:func:`jaxpool._windows.use_fast`), so the one switch means the same for both.

    Raises:
      ValueError: ``implementation`` is not ``'auto'``, ``'reference'`` or ``'fast'``.
    """
    return _windows.use_fast(implementation, measured_faster_on_cpu=True)


def _same_pads(k: int) -> tuple[int, int]:
    """(low, high) padding of one axis for "SAME" at stride 1: the split lax uses."""
    return (k - 1) // 2, k // 2


def _conv(x: jax.Array, w: jax.Array, dimension_numbers: tuple[str, str, str]) -> jax.Array:
    kh, kw = (w.shape[dimension_numbers[1].index(axis)] for axis in "HW")
    pads = (_same_pads(kh), _same_pads(kw))
    return jax.lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=dimension_numbers)


@jax.custom_jvp
def conv_same(x: jax.Array, w: jax.Array) -> jax.Array:
    """``(N, H, W, C) * (kh, kw, C, O) -> (N, H, W, O)``, stride 1, "SAME" padding."""
    return _conv(x, w, ("NHWC", "HWIO", "NHWC"))


@conv_same.defjvp
def _conv_same_jvp(primals, tangents):
    x, w = primals
    x_dot, w_dot = tangents
    # Linear in the tangents, with the layouts of the module docstring: JAX's transposes of
    # these two convolutions are the forward-form dx and dw.
    by_input = _conv(x_dot, w.transpose(0, 1, 3, 2), ("NHWC", "HWOI", "NHWC"))
    by_kernel = _conv(
        x.transpose(3, 1, 2, 0), w_dot.transpose(2, 0, 1, 3), ("CHWN", "IHWO", "HWNC")
    ).transpose(2, 0, 1, 3)
    return conv_same(x, w), by_input + by_kernel


class ConvSame(nn.Module):
    """``flax.linen.Conv(features, kernel_size, padding="SAME")`` (stride 1, with bias) computed
    by :func:`conv_same`; the same parameters (``kernel`` HWIO, ``bias``) and initialisers, so
    checkpoints of either load into the other.  One difference: it computes in the input's dtype
    (bfloat16 in, bfloat16 out), where ``nn.Conv`` promotes to its float32 parameters.  The CNN
    feeds float32.

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
