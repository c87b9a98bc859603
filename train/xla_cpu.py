"""XLA:CPU settings the training tool applies before JAX starts its CPU backend.

jaxlib 0.10 hands stride-1 convolutions to its YNNPACK library by default; for the standard
CNN's small-channel 3x3 convolutions XNNPACK is faster (measured on a 2-core x86 CPU, training
step of the standard CNN, batch 64 and 256, in alternating runs: +15-35% images/s for max and
avg pooling). :func:`prefer_xnnpack_convolutions` moves the convolutions over by adding
:data:`CONV_FLAGS` to ``XLA_FLAGS``:

* only on jaxlib 0.10.x, where these flags were verified (XLA aborts the process on a flag it
  does not know, so other versions are left alone);
* only when ``XLA_FLAGS`` does not already choose library fusion types (the user's choice wins);
* only if it runs before JAX creates its CPU backend (``import train`` does it; a notebook that
  already ran JAX code keeps its backend as it is). GPU and TPU ignore the flags.

The results are the same float32 convolutions, only the kernel library differs
(``tests/test_conv.py`` checks them against a NumPy float64 reference).
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import MutableMapping

CONV_FLAGS = (
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "--xla_cpu_experimental_xnn_fusion_type=+individual_convolution",
)
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
    environ["XLA_FLAGS"] = " ".join([current, *CONV_FLAGS]).strip()
    return True
