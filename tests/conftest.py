"""Shared test helpers: an independent NumPy reference for windows, and the pooler cases."""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import jaxpool
from train import cli

# The XLA options of the CLI, before the tests start JAX: the faster XLA:CPU flags, and
# deterministic GPU ops, without which equalities between two ways of running the same program
# (chunk splits, resume) do not hold bitwise on a GPU.
cli.set_xla_options()
# The xdist workers, and the CLI processes the tests start, share one GPU: each takes memory as it
# needs it, not JAX's default of 75% of the device at start-up, which leaves the next process none.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

if os.environ.get("JAXPOOL_TEST_AS"):  # the suite as a GPU/TPU computes (accelerator_emulation.py)
    from accelerator_emulation import install as _install_accelerator_emulation

    _install_accelerator_emulation(os.environ["JAXPOOL_TEST_AS"])

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _CtrlCWhenFinalised:
    def __del__(self):
        signal.raise_signal(signal.SIGINT)


def drop_a_ctrl_c() -> None:
    """SIGINT whose KeyboardInterrupt Python drops: raised in a finaliser, as in JAX's gc
    callback (Python prints it as "ignored" and goes on)."""
    _CtrlCWhenFinalised()  # no reference kept: finalised here


def assert_gradients_close(a, b) -> None:
    """Adam's first moments (the gradients, scaled) of two train states agree in float32: rtol
    1e-4 and atol 1e-6 of the largest, room for two programs that sum in other orders.  Compare
    one step from a common state: parameters after several steps drift further, as Adam's first
    step is about lr * sign(g) and flips for gradients near 0 on rounding noise."""
    import optax

    mu_a, mu_b = (optax.tree_utils.tree_get(s.opt_state, "mu") for s in (a, b))
    scale = max(float(np.abs(v).max()) for v in jax.tree_util.tree_leaves(mu_b))
    jax.tree_util.tree_map(
        lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6 * scale), mu_a, mu_b
    )


@contextlib.contextmanager
def held_by_another_process(run_dir) -> Iterator[int]:
    """``run_dir`` locked (:func:`train.core.run_files.locked_run_dir`) by another process, as a
    second ``train.main`` or sweep training it holds it; yields that process's id."""
    script = (
        "import sys\n"
        "from train.core import run_files\n"
        "with run_files.locked_run_dir(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(run_dir)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def run_on_cpu_devices(script: str, devices: int = 8, flags: str = "", timeout: int = 300) -> str:
    """Runs ``python -c script`` from the project root in a fresh process that sees ``devices``
    virtual CPU devices (JAX fixes its device count at start-up); asserts that it exited 0 and
    returns the last line it printed."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {flags}".strip()
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture
def highest_precision():
    """float32 matmuls and convolutions computed in float32 on every backend.  A GPU's default
    rounds their inputs to TF32 (10-bit mantissa), a TPU's to bfloat16 (7 bits), which moves a
    result by ~1e-3 relative or more: more than the tests that compare two ways of computing one
    thing (finite differences, a vmapped against a separate program) can tell from a real
    difference."""
    with jax.default_matmul_precision("highest"):
        yield


# Every registered pooler and how to build/call it in the generic tests.
STOCHASTIC = tuple(name for name in jaxpool.available() if jaxpool.is_stochastic(name))
CONVEX = ("max", "avg", "mixed", "gated", "stochastic", "tdgs")


def ref_window_positions(h: int, w: int, window, strides, padding: str):
    """Loop-based reference geometry: dict (i, j) -> the (row, col) of each real element of
    window (i, j), row-major; and the output size (ho, wo).

    Written independently of jaxpool._windows (explicit index arithmetic, TF/flax SAME split).
    """
    (kh, kw), (sh, sw) = window, strides
    if padding == "VALID":
        ho, wo, pt, pl = (h - kh) // sh + 1, (w - kw) // sw + 1, 0, 0
    else:
        ho, wo = math.ceil(h / sh), math.ceil(w / sw)
        pt = max((ho - 1) * sh + kh - h, 0) // 2
        pl = max((wo - 1) * sw + kw - w, 0) // 2
    positions = {}
    for i in range(ho):
        for j in range(wo):
            rows_cols = [(i * sh + a - pt, j * sw + b - pl) for a in range(kh) for b in range(kw)]
            positions[i, j] = [(r, q) for r, q in rows_cols if 0 <= r < h and 0 <= q < w]
    return positions, (ho, wo)


def ref_windows(x: np.ndarray, window, strides, padding: str):
    """Loop-based NumPy reference: dict (i, j) -> (N, n_real, C) real elements of each window
    (:func:`ref_window_positions`); and the output size (ho, wo)."""
    positions, size = ref_window_positions(x.shape[1], x.shape[2], window, strides, padding)
    out = {ij: np.stack([x[:, r, q, :] for r, q in rc], axis=1) for ij, rc in positions.items()}
    return out, size


def init_and_apply(module, x, *, deterministic, key=0):
    """Initialises ``module`` on ``x`` and applies it; returns (variables, output)."""
    k_params, k_init, k_apply = jax.random.split(jax.random.key(key), 3)
    variables = module.init({"params": k_params, "pooling": k_init}, x, deterministic=True)
    y = module.apply(variables, x, deterministic=deterministic, rngs={"pooling": k_apply})
    return variables, y


@pytest.fixture(params=jaxpool.available())
def pooler_name(request):
    return request.param


@contextlib.contextmanager
def mock_tfds(num_examples: int):
    """Random TFDS data; ``is_prepared`` and the file format (the mock's metadata says tfrecord)
    are patched because the mock has no files on disk."""
    array_record = mock.PropertyMock(return_value=tfds.core.FileFormat.ARRAY_RECORD)
    with (
        tfds.testing.mock_data(num_examples=num_examples),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
        mock.patch.object(tfds.core.DatasetInfo, "file_format", new_callable=lambda: array_record),
    ):
        yield


def pytest_collection_modifyitems(config, items):
    """The slow end-to-end tests first (stable, so each file's order holds within each group):
    ``pytest -n 2`` hands tests to its workers in this order, and a minute-long test started
    last leaves the other worker idle while it runs."""
    del config
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
