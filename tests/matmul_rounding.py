"""An accelerator's default matmul precision on the CPU, for running the suite as a GPU or a TPU
computes: ``JAXPOOL_TEST_MATMUL=tf32`` (GPU) or ``=bf16`` (TPU) ``python -m pytest ...``
(``tests/conftest.py`` calls :func:`install`).

At the default precision a GPU computes float32 matmuls and convolutions in TF32 (inputs rounded
to a 10-bit mantissa, products summed in float32) and a TPU in one bfloat16 pass (7-bit
mantissa).  XLA:CPU computes them in float32 whatever the precision asks.  :func:`install`
registers CPU lowerings of ``dot_general`` and ``conv_general_dilated`` that round both float32
operands to nearest even at the given mantissa width where the precision is the default, and keep
float32 where a precision is asked for (under ``jax.default_matmul_precision("highest")`` for
instance).  Reverse mode is covered too: JAX differentiates a convolution or a matmul into others
with the same precision.

It reproduces the rounding, not an accelerator's algorithms (another summation order,
Winograd): a test that passes with it can still fail on a GPU by reduction order, but one that
fails with it is sure to be sensitive to the precision.  Tests that start their own processes
(the virtual-device ones, forced onto the CPU) are not affected, as on an accelerator's machine.

It uses JAX internals (``jax._src``): where they changed, :func:`install` fails rather than
leaving the emulation silently off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

MANTISSA_BITS = {"tf32": 10, "bf16": 7}  # float32 keeps 23


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


def install(mode: str) -> None:
    """Registers the rounding CPU lowerings for ``mode`` (a key of :data:`MANTISSA_BITS`) in this
    process."""
    if mode not in MANTISSA_BITS:
        raise ValueError(
            f"JAXPOOL_TEST_MATMUL: expected one of {sorted(MANTISSA_BITS)}, got {mode!r}"
        )
    from jax._src.interpreters import mlir
    from jax._src.lax import convolution
    from jax._src.lax import lax as lax_internal

    bits = MANTISSA_BITS[mode]
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
