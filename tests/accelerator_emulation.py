"""A GPU's or a TPU's numerics and choices on the CPU, for running the suite as an accelerator
computes: ``JAXPOOL_TEST_AS=gpu`` (or ``tpu``) ``python -m pytest ...`` (``tests/conftest.py``
calls :func:`install`).  Four things differ there:

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
- **Transcendental functions.**  An accelerator's float32 ``exp``, ``log``, ``tanh``, ``pow``, ...
  are other approximations than XLA:CPU's, each within a few units in the last place (CUDA's
  ``expf``, ``tanhf``, ``powf`` and ``rsqrtf``: 2 ulp; ``logf``, ``log1pf``, ``expm1f``: 1).
  :func:`install` moves every float32 result of those primitives (:data:`TRANSCENDENTALS`) by -2
  to +2 ulp, chosen by a hash of the input's bits (so equal inputs give equal outputs, in any
  program, as on a device), except where a backend's result is exact (``exp(0) = 1``, ``log(1) =
  0``, ``tanh(0) = 0``, ...) and where the move would cross such a point or leave the function's
  range (``tanh`` beyond 1, ``exp`` of a positive number below 1): what any correct library keeps.
  Sigmoid, which JAX writes with ``exp``, moves with it.
- **Deterministic ops (GPU).**  Under ``--xla_gpu_deterministic_ops`` (which the suite sets,
  ``tests/conftest.py``) XLA:GPU refuses to compile select-and-scatter, the derivative of
  ``lax.reduce_window``'s max (``flax.linen.max_pool``'s), for want of a deterministic
  implementation; :func:`install` makes its lowering raise the same way when ``XLA_FLAGS`` asks
  for them.

It reproduces the rounding and the size of the errors, not an accelerator's algorithms (another
summation order, Winograd, its own error in each ulp): a test that passes with it can still fail on
a GPU by reduction order, but one that fails with it is sure to be sensitive to the precision, to
the path or to a few ulp of a transcendental function.  Tests that start their own processes (the
virtual-device ones, forced onto the CPU) are not affected, as on an accelerator's machine.

It uses JAX internals (``jax._src``): where they changed, :func:`install` fails rather than
leaving the emulation silently off.
"""

from __future__ import annotations

import functools
import os
import re

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
    _move_transcendentals()
    if accelerator == "gpu" and deterministic_gpu_ops(os.environ.get("XLA_FLAGS", "")):
        _refuse_select_and_scatter()


def deterministic_gpu_ops(xla_flags: str) -> bool:
    """Whether ``xla_flags`` turns on XLA:GPU's deterministic ops (either flag, bare or true)."""
    pattern = r"--xla_gpu_(exclude_non)?deterministic_ops(=(true|1))?(\s|$)"
    return re.search(pattern, xla_flags) is not None


def _refuse_select_and_scatter() -> None:
    """Makes lowering select-and-scatter raise, as XLA:GPU's compiler does under deterministic ops."""
    from jax._src.interpreters import mlir
    from jax._src.lax import windowed_reductions

    def rule(ctx, *args, **params):
        raise NotImplementedError(
            "select-and-scatter does not have a deterministic implementation, but run-to-run "
            "determinism is required by --xla_gpu_deterministic_ops (XLA:GPU, as emulated by "
            "JAXPOOL_TEST_AS=gpu)"
        )

    mlir.register_lowering(windowed_reductions.select_and_scatter_p, rule, platform="cpu")


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


# Primitive name -> (the result that is exact: exp(0) = 1, log(1) = 0, x ** 0 = 1, ...; the lowest
# and the highest result).  Not logistic (sigmoid): JAX lowers it as 1 / (1 + exp(-x)) on every
# backend, so it carries exp's move already.
TRANSCENDENTALS = {
    "exp": (1.0, 0.0, float("inf")),
    "exp2": (1.0, 0.0, float("inf")),
    "expm1": (0.0, -1.0, float("inf")),
    "log": (0.0, -float("inf"), float("inf")),
    "log1p": (0.0, -float("inf"), float("inf")),
    "tanh": (0.0, -1.0, 1.0),
    "pow": (1.0, -float("inf"), float("inf")),
    "rsqrt": (1.0, 0.0, float("inf")),
}
MAX_ULPS = 2


def ulp_moves(x: jax.Array) -> jax.Array:
    """int32 moves in ``[-MAX_ULPS, MAX_ULPS]``, a hash of the bits of float32 ``x``."""
    h = lax.bitcast_convert_type(x, jnp.uint32) * jnp.uint32(0x9E3779B1)
    h = h ^ (h >> 15)
    return (h % jnp.uint32(2 * MAX_ULPS + 1)).astype(jnp.int32) - MAX_ULPS


def move_result(name: str, y: jax.Array, *xs: jax.Array) -> jax.Array:
    """``y``, the float32 result of transcendental primitive ``name`` on ``xs``, moved by
    :func:`ulp_moves` of the input (of both inputs' bits for ``pow``) where the move keeps it a
    normal number on its side of the exact result and within the range (:data:`TRANSCENDENTALS`).
    """
    exact, lowest, highest = TRANSCENDENTALS[name]
    seed = (
        xs[0]
        if len(xs) == 1
        else lax.bitcast_convert_type(
            lax.bitcast_convert_type(xs[0], jnp.uint32)
            ^ lax.bitcast_convert_type(xs[1], jnp.uint32),
            jnp.float32,
        )
    )
    word = lax.bitcast_convert_type(y, jnp.int32)
    # Adding to the bit pattern moves a finite float away from zero (or towards it) by whole ulps;
    # normal numbers only, so no move reaches zero or changes the sign.
    moved = lax.bitcast_convert_type(word + ulp_moves(seed), jnp.float32)
    normal = jnp.isfinite(y) & (jnp.abs(y) >= jnp.finfo(jnp.float32).tiny)
    same_side = jnp.sign(moved - exact) == jnp.sign(y - exact)
    in_range = (moved >= lowest) & (moved <= highest) & jnp.isfinite(moved)
    keep = y == exact
    if name == "pow":  # x ** 1 = x
        keep = keep | (xs[1] == 1)
    return jnp.where(normal & same_side & in_range & ~keep, moved, y)


def _move_transcendentals() -> None:
    """Registers CPU lowerings of :data:`TRANSCENDENTALS` that apply :func:`move_result` to the
    float32 results of the standard lowering."""
    from jax._src.interpreters import mlir

    for name in TRANSCENDENTALS:
        primitive = getattr(lax, f"{name}_p")
        standard = mlir._lowerings[primitive].rule

        def rule(ctx, *args, name=name, standard=standard, **params):
            # Each lowering on its own copy of the context: one that is itself written with
            # lower_fun records its effect tokens there, and a context takes them only once.
            results = standard(ctx.replace(tokens_out=None), *args, **params)
            (aval,) = ctx.avals_out
            if aval.dtype != jnp.float32:
                return results
            (y,) = results
            moved = mlir.lower_fun(functools.partial(move_result, name), multiple_results=False)
            sub = ctx.replace(avals_in=[aval, *ctx.avals_in], avals_out=[aval], tokens_out=None)
            return moved(sub, y, *args)

        mlir.register_lowering(primitive, rule, platform="cpu")
