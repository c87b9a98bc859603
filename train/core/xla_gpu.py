"""XLA:GPU determinism for the training tool: the same program on the same inputs gives the same
bits, run after run, so a resumed run ends with an uninterrupted run's metrics on a GPU as on a
CPU.

By default XLA:GPU may pick reductions that use atomics (the summation order varies from run to
run) and autotune cuDNN convolution algorithms per compilation; ``--xla_gpu_deterministic_ops``
turns both off.  Under it XLA:GPU refuses to compile select-and-scatter (the derivative of
``lax.reduce_window``'s max, google/flax#4233) and rewrites each scatter whose result could depend
on the order of its updates into a slower program; no pooler's training or evaluation program
has either (``tests/test_xla_gpu.py``).

:func:`request_deterministic_ops` adds it to ``XLA_FLAGS`` unless the user's ``XLA_FLAGS``
already chooses (``--xla_gpu_deterministic_ops=false`` trades exactness for whatever speed the
atomics give).  The CLI entry points call it before JAX starts its backend
(:func:`train.cli.run_main`); CPU and TPU ignore the flag.  Its cost on a GPU is not measured
yet.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from train.core import xla_cpu

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
_USER_CHOICES = ("xla_gpu_deterministic_ops", "xla_gpu_exclude_nondeterministic_ops")


def request_deterministic_ops(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Adds :data:`DETERMINISTIC_FLAG` to ``environ["XLA_FLAGS"]`` unless the user chose already;
    returns whether it did.  Effective only before JAX initialises its backend."""
    current = environ.get("XLA_FLAGS", "")
    if any(name in current for name in _USER_CHOICES):
        return False
    xla_cpu.append_flags(environ, (DETERMINISTIC_FLAG,))
    return True
