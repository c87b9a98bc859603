"""Tests of train/bench.py: flag checks and the keys of its JSON (speed itself is never asserted)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import jax
import numpy as np
import pytest

from train import bench


def test_pool_table_has_every_key_and_positive_times():
    results = bench.run(["max", "avg"], repeats=1, with_cnn=False)
    for name in ("max", "avg"):
        for shape in bench.POOL_SHAPES:
            assert results["pool_fwdbwd_ms"][f"{name}@{bench._shape_key(shape)}"] > 0
    assert set(results["misc_ms"]) == {f"copy@{bench._shape_key(s)}" for s in bench.POOL_SHAPES}
    assert set(results["page_faults_per_call"]) == set(results["pool_fwdbwd_ms"]) | set(
        results["misc_ms"]
    )
    assert all(f >= 0 for f in results["page_faults_per_call"].values())
    assert results["malloc"] == "default"
    assert results["xla_flags"] == os.environ.get("XLA_FLAGS", "")
    assert results["device"].startswith(("cpu:", "gpu:", "tpu:", "cuda:", "rocm:"))


def test_pooler_step_returns_the_forward_and_takes_the_cotangent_as_an_argument():
    # A cotangent closed over as a constant let XLA fold avg's backward pass at compile time, and
    # an unreturned forward output let it drop the forward pass: the timing missed both.
    step, (params, x, key, cotangent) = bench.pooler_step("avg", (2, 4, 6, 3))
    y, (_, dx) = step(params, x, key, cotangent)
    windows = np.asarray(x).reshape(2, 2, 2, 3, 2, 3)
    np.testing.assert_allclose(y, windows.mean(axis=(2, 4)), rtol=1e-6)
    y2, (_, dx2) = step(params, x, key, 2.0 * cotangent)
    expected = np.repeat(np.repeat(np.asarray(cotangent), 2, axis=1), 2, axis=2) / 4
    np.testing.assert_allclose(dx, expected, rtol=1e-6)
    np.testing.assert_allclose(dx2, 2.0 * expected, rtol=1e-6)
    assert cotangent.shape == y.shape == y2.shape


def test_keep_freed_memory_reports_what_it_did():
    # In a subprocess: mallopt changes the whole process's allocator.
    code = "from train import bench; print(bench.keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = out.stdout.strip()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert line == "glibc, freed memory kept (M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB)"
    else:
        assert line.startswith("default (")


def test_cnn_steps_run_on_mnist_sized_input():
    compile_s, train, evaluate = bench.cnn_steps("max", 8, (28, 28, 1))
    state, out = train()
    assert compile_s > 0 and out["loss"].shape == () and int(state.step) == 1
    # Each call trains on from the previous call's state, which it donates; the eval state is
    # untouched.
    first_params = jax.tree_util.tree_leaves(state.params)
    state, _ = train()
    assert int(state.step) == 2
    assert all(leaf.is_deleted() for leaf in first_params)
    assert float(evaluate()["count"]) == 8


@pytest.mark.parametrize(
    ("text", "message"),
    [("median", "unknown pooler(s) median"), ("", "unknown pooler(s) (none given)")],
)
def test_bad_poolers_name_the_allowed_ones(text, message):
    with pytest.raises(ValueError, match=r"allowed: all or a comma-separated subset of max, avg"):
        bench.parse_poolers(text)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bench.parse_poolers(text)


@pytest.mark.parametrize("text", ["28,28", "a,b,c", "4,4,1", "28,28,0"])
def test_bad_cnn_input_is_refused(text):
    with pytest.raises(ValueError, match="--cnn-input: expected H,W,C"):
        bench.parse_cnn_input(text)
    assert bench.parse_cnn_input("28,28,1") == (28, 28, 1)


def test_cli_bad_flag_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "train.bench", "--poolers", "median", "--json", str(tmp_path / "b")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "train.bench: --poolers: unknown pooler(s) median; allowed: all or a comma-separated "
        "subset of " + ", ".join(bench.jaxpool.available())
    ]
    assert not (tmp_path / "b").exists()


def test_time_interleaved_times_round_robin_after_warm_up():
    calls = []

    def fn(name):
        return lambda: calls.append(name) or 0

    faults = {}
    seconds = bench.time_interleaved(
        {"a": fn("a"), "b": fn("b")}, repeats=3, target_s=0.0, faults=faults
    )
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())
    assert set(faults) == {"a", "b"} and all(f >= 0 for f in faults.values())
    # 3 warm-up/calibration calls each, then one batch (of 1 call: target 0 s) per round, in turn
    assert calls == ["a"] * 3 + ["b"] * 3 + ["a", "b"] * 3


def test_time_interleaved_counts_the_page_faults_of_each_call():
    # Each call writes one value per 4 KiB page of a fresh 40 MiB numpy buffer: above glibc's
    # largest mmap threshold (32 MiB), so it is mapped afresh and faulted in on every call: 10240
    # faults, or 20 where the kernel backs it with 2 MiB pages (numpy asks for them).  A no-op
    # must stay near 0.
    def touch():
        buf = np.empty(40 * 2**20 // 8)
        buf[::512] = 1.0

    faults = {}
    bench.time_interleaved(
        {"touch": touch, "noop": lambda: 0}, repeats=3, target_s=0.0, faults=faults
    )
    if bench.resource is None:
        pytest.skip("no resource module on this platform")
    assert faults["touch"] >= 20
    assert faults["noop"] < 5
