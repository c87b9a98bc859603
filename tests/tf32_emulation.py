"""TF32 on the CPU, for running the suite as a GPU computes: ``JAXPOOL_TEST_TF32=1 python -m
pytest ...`` (``tests/conftest.py`` calls :func:`install` when the variable is ``1``).

A GPU computes float32 matmuls and convolutions at the default precision in TF32: their inputs
are rounded to a 10-bit mantissa (round to nearest even) and the products summed in float32.
XLA:CPU computes them in float32 whatever the precision asks.  :func:`install` registers CPU
lowerings of ``dot_general`` and ``conv_general_dilated`` that round both float32 operands so
where the precision is the default, and keep float32 where a precision is asked for (under
``jax.default_matmul_precision("highest")`` for instance).  Reverse mode is covered too: JAX
differentiates a convolution or a matmul into others with the same precision.

It reproduces the rounding, not a GPU's algorithms (another summation order, Winograd): a test that
passes with it can still fail on a GPU by reduction order, but one that fails with it is sure to
be sensitive to TF32.  Tests that start their own processes (the virtual-device ones, forced onto
the CPU) are not affected, as on a GPU machine.

It uses JAX internals (``jax._src``): where they changed, :func:`install` fails rather than
leaving the emulation silently off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_MANTISSA_DROP = 13  # float32 keeps 23 mantissa bits, TF32 10


def round_to_tf32(x: jax.Array) -> jax.Array:
    """float32 ``x`` rounded to TF32's 10-bit mantissa, to nearest even (other dtypes as given)."""
    if x.dtype != jnp.float32:
        return x
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    half = jnp.uint32((1 << (_MANTISSA_DROP - 1)) - 1)
    odd = (bits >> _MANTISSA_DROP) & jnp.uint32(1)
    bits = (bits + half + odd) & jnp.uint32(~((1 << _MANTISSA_DROP) - 1) & 0xFFFFFFFF)
    return lax.bitcast_convert_type(bits, jnp.float32)


def _is_default(precision) -> bool:
    if precision is None:
        return True
    return isinstance(precision, tuple) and all(p == lax.Precision.DEFAULT for p in precision)


def install() -> None:
    """Registers the TF32-rounding CPU lowerings (for this process)."""
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
            return primitive.bind(round_to_tf32(lhs), round_to_tf32(rhs), **params)

        def rule(ctx, lhs, rhs, lowering=lowering, rounded=rounded, **params):
            if not _is_default(params.get("precision")):
                return lowering(ctx, lhs, rhs, **params)
            return mlir.lower_fun(rounded, multiple_results=False)(ctx, lhs, rhs, **params)

        mlir.register_lowering(primitive, rule, platform="cpu")
