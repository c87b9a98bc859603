"""A GPU's or a TPU's numerics and choices on the CPU, for running the suite as an accelerator
computes: ``JAXPOOL_TEST_AS=gpu`` (or ``tpu``) ``python -m pytest ...`` (``tests/conftest.py``
calls :func:`install`).  Two things differ there:

- **Matmul precision.**  At the default precision a GPU computes float32 matmuls and convolutions
  in TF32 (inputs rounded to a 10-bit mantissa, products summed in float32) and a TPU in one
  bfloat16 pass (7-bit mantissa); XLA:CPU computes them in float32 whatever the precision asks.
  :func:`install` registers CPU lowerings of ``dot_general`` and ``conv_general_dilated`` that
  round both float32 operands so (to nearest even) where the precision is the default, and keep
  float32 where a precision is asked for (under ``jax.default_matmul_precision("highest")`` for
  instance).  Reverse mode is covered too: JAX differentiates a convolution or a matmul into
  others with the same precision.
- **``implementation='auto'``** takes the reference paths, as off the CPU
  (:func:`jaxpool._windows.on_measured_backend` answers False).

It reproduces the rounding, not an accelerator's algorithms (another summation order,
Winograd): a test that passes with it can still fail on a GPU by reduction order, but one that
fails with it is sure to be sensitive to the precision or to the path.  Tests that start their own
processes (the virtual-device ones, forced onto the CPU) are not affected, as on an accelerator's
machine.

It uses JAX internals (``jax._src``): where they changed, :func:`install` fails rather than
leaving the emulation silently off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

MANTISSA_BITS = {"gpu": 10, "tpu": 7}  # TF32, bfloat16; float32 keeps 23


def round_mantissa(x: jax.Array, bits: int) -> jax.Array:
    """float32 ``x`` rounded to ``bits`` mantissa bits, to nearest even (other dtypes as given)."""
    if x.dtype != jnp.float32:
        return x
    drop = 23 - bits
    word = lax.bitcast_convert_type(x, jnp.uint32)
    half = jnp.uint32((1 << (drop - 1)) - 1)
    odd = (word >> drop) & jnp.uint32(1)
    word = (word + half + odd) & jnp.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
    return lax.bitcast_convert_type(word, jnp.float32)


def _is_default(precision) -> bool:
    if precision is None:
        return True
    return isinstance(precision, tuple) and all(p == lax.Precision.DEFAULT for p in precision)


def install(accelerator: str) -> None:
    """Emulates ``accelerator`` (a key of :data:`MANTISSA_BITS`) in this process."""
    if accelerator not in MANTISSA_BITS:
        raise ValueError(
            f"JAXPOOL_TEST_AS: expected one of {sorted(MANTISSA_BITS)}, got {accelerator!r}"
        )
    from jaxpool import _windows

    _windows.on_measured_backend = lambda: False
    _round_default_precision_matmuls(MANTISSA_BITS[accelerator])


def _round_default_precision_matmuls(bits: int) -> None:
    """Registers the CPU lowerings that round default-precision float32 operands to ``bits``."""
    from jax._src.interpreters import mlir
    from jax._src.lax import convolution
    from jax._src.lax import lax as lax_internal

    highest = (lax.Precision.HIGHEST, lax.Precision.HIGHEST)
    for primitive, lowering in (
        (lax_internal.dot_general_p, lax_internal._dot_general_lower),
        (convolution.conv_general_dilated_p, convolution._conv_general_dilated_lower),
    ):

        def rounded(lhs, rhs, primitive=primitive, **params):
            params = dict(params, precision=highest)
            return primitive.bind(round_mantissa(lhs, bits), round_mantissa(rhs, bits), **params)

        def rule(ctx, lhs, rhs, lowering=lowering, rounded=rounded, **params):
            if not _is_default(params.get("precision")):
                return lowering(ctx, lhs, rhs, **params)
            return mlir.lower_fun(rounded, multiple_results=False)(ctx, lhs, rhs, **params)

        mlir.register_lowering(primitive, rule, platform="cpu")
