"""XLA:CPU settings the training tool applies before JAX starts its CPU backend.

jaxlib 0.10 hands stride-1 convolutions to its YNNPACK library by default; for the standard
CNN's small-channel 3x3 convolutions XNNPACK is faster (measured on a 2-core x86 CPU, training
step of the standard CNN, batch 64 and 256, in alternating runs: +15-35% images/s for max and
avg pooling). :func:`prefer_xnnpack_convolutions` moves the convolutions over by adding
:data:`CONV_FLAGS` to ``XLA_FLAGS``:

* only on jaxlib 0.10.x, where these flags were verified (XLA aborts the process on a flag it
  does not know, so other versions are left alone);
* only when ``XLA_FLAGS`` does not already choose library fusion types (the user's choice wins);
* only if it runs before JAX creates its CPU backend (the CLI entry points call it first, through
  :func:`train.cli.set_xla_options`, unless given ``--no-xla-cpu-tuning``; importing ``train``
  sets nothing; a notebook that already ran JAX code keeps its backend as it is). GPU and TPU
  ignore the flags.

The results are the same float32 convolutions, only the kernel library differs
(``tests/test_conv.py`` checks them against a NumPy float64 reference).

On a CPU with AVX-512, :func:`prefer_wide_vectors` also asks XLA to emit its own loops (the
poolers, the noise of the stochastic poolers) with 512-bit vectors instead of its default 256
(:data:`VECTOR_FLAG`), under the same jaxlib and user-choice rules. Measured on a 2-core AVX-512
x86 CPU, same process, each pooler's jitted step compiled both ways: XLA's threefry bits and
Gumbel noise about 2x faster (jaxpool's own jnp threefry, used in their place: 1.8x), pool
forward+backward at (64, 16, 16, 32) 1.7x faster for stochastic and 1.55x for TDGS pooling
(1.1-1.2x for mixed, gated, tree, s3; max and avg equal), and the standard CNN's train step 0-8%
faster with the deterministic poolers and 17-21% with TDGS.
The results were bitwise identical (every pooler's output and gradients, and a CNN train step).
Not measured on Intel CPUs, some of which lower their clock for 512-bit code: there
``XLA_FLAGS=--xla_cpu_prefer_vector_width=256`` keeps XLA's default.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import MutableMapping

CONV_FLAGS = (
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "--xla_cpu_experimental_xnn_fusion_type=+individual_convolution",
)
VECTOR_FLAG = "--xla_cpu_prefer_vector_width=512"
VERIFIED_JAXLIB = "0.10."


def _jaxlib_version() -> str:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ""


def prefer_xnnpack_convolutions(
    environ: MutableMapping[str, str] = os.environ, jaxlib_version: str | None = None
) -> bool:
    """Adds :data:`CONV_FLAGS` to ``environ["XLA_FLAGS"]`` where safe; returns whether it did."""
    version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
    current = environ.get("XLA_FLAGS", "")
    if not version.startswith(VERIFIED_JAXLIB) or "nn_fusion_type" in current:
        return False
    append_flags(environ, CONV_FLAGS)
    return True


def append_flags(environ: MutableMapping[str, str], flags: tuple[str, ...]) -> None:
    """Appends ``flags`` to ``environ["XLA_FLAGS"]``, after what the user set."""
    environ["XLA_FLAGS"] = " ".join([environ.get("XLA_FLAGS", ""), *flags]).strip()


def _cpu_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (Linux); empty elsewhere or if unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def prefer_wide_vectors(
    environ: MutableMapping[str, str] = os.environ,
    jaxlib_version: str | None = None,
    cpu_flags: set[str] | None = None,
) -> bool:
    """Adds :data:`VECTOR_FLAG` to ``environ["XLA_FLAGS"]`` on an AVX-512 CPU, where safe;
    returns whether it did.  Left alone: other jaxlib versions, CPUs without ``avx512f``, and
    ``XLA_FLAGS`` that already set a vector width."""
    version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    current = environ.get("XLA_FLAGS", "")
    if (
        not version.startswith(VERIFIED_JAXLIB)
        or "avx512f" not in flags
        or "xla_cpu_prefer_vector_width" in current
    ):
        return False
    append_flags(environ, (VECTOR_FLAG,))
    return True
