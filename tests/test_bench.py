"""Tests of train/bench.py: flag checks and the keys of its JSON (speed itself is never asserted)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxpool
from train import bench, cli
from train.benchmarks import measure


@pytest.mark.slow
def test_pool_table_measures_every_registered_pooler(monkeypatch):
    # Every pooler's forward+backward runs and gets a summary row, whatever its output size (LIP
    # ceil(N/2), fractional N/sqrt(2), MaxBlurPool's reflect padding); tiny shape, no timing.
    monkeypatch.setattr(measure, "POOL_SHAPES", ((2, 8, 8, 4),))
    timed = measure.time_interleaved
    monkeypatch.setattr(
        measure,
        "time_interleaved",
        lambda fns, repeats, **kw: timed(fns, repeats, **dict(kw, target_s=0.0)),
    )
    names = jaxpool.available()
    results = measure.run(names, repeats=1, with_cnn=False)
    assert set(results["pool_fwdbwd_ms"]) == {f"{n}@(2,8,8,4)" for n in names}
    assert all(ms > 0 for ms in results["pool_fwdbwd_ms"].values())
    assert set(results["misc_ms"]) == {"copy@(2,8,8,4)"}
    assert set(results["page_faults_per_call"]) == set(results["pool_fwdbwd_ms"]) | set(
        results["misc_ms"]
    )
    assert all(f >= 0 for f in results["page_faults_per_call"].values())
    assert results["malloc"] == "default" and results["repeats"] == 1
    assert results["xla_flags"] == os.environ.get("XLA_FLAGS", "")
    assert results["device"].startswith(("cpu:", "gpu:", "tpu:", "cuda:", "rocm:"))
    rows = measure.summary_table(results, names)[2:]
    assert [row.split()[0] for row in rows] == list(names)
    # max, the ratios' reference, is reported though not asked for
    assert "max@(2,8,8,4)" in measure.run(["avg"], repeats=1, with_cnn=False)["pool_fwdbwd_ms"]


def test_a_cnn_input_too_small_for_a_pooler_is_refused_before_measuring():
    # MaxBlurPool's third pool gets 3 rows from 12 (12 -> 6 -> 3): too few for its reflect padding.
    with pytest.raises(ValueError, match=r"--cnn-input 12,12,1: too small for the CNN with blur"):
        measure.check_cnn_input(["max", "blur"], (12, 12, 1))
    measure.check_cnn_input(["max", "blur", "lip", "fractional"], (16, 16, 1))


def test_pooler_step_returns_the_forward_and_takes_the_cotangent_as_an_argument():
    # A cotangent closed over as a constant let XLA fold avg's backward pass at compile time, and
    # an unreturned forward output let it drop the forward pass: the timing missed both.
    step, (params, x, key, cotangent) = measure.pooler_step("avg", (2, 4, 6, 3))
    y, (_, dx) = step(params, x, key, cotangent)
    # The mean of 4 floats: float32 sums in any order are within a few ulps of the largest term
    # (not of the mean, which can cancel to near 0), so the tolerance is absolute.
    windows = np.asarray(x, np.float64).reshape(2, 2, 2, 3, 2, 3)
    atol = 4 * np.finfo(np.float32).eps * np.abs(windows).max()
    np.testing.assert_allclose(y, windows.mean(axis=(2, 4)), rtol=0, atol=atol)
    y2, (_, dx2) = step(params, x, key, 2.0 * cotangent)
    # Backward: each input element gets its window's cotangent divided by 4, exact in binary.
    expected = np.repeat(np.repeat(np.asarray(cotangent), 2, axis=1), 2, axis=2) / 4
    np.testing.assert_array_equal(dx, expected)
    np.testing.assert_array_equal(dx2, 2.0 * expected)
    assert cotangent.shape == y.shape == y2.shape


def test_keep_freed_memory_reports_what_it_did():
    # In a subprocess: mallopt changes the whole process's allocator.
    code = "from train.benchmarks import measure; print(measure.keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = out.stdout.strip()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert line == "glibc, freed memory kept (M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB)"
    else:
        assert line.startswith("default (")


def test_cnn_steps_run_on_mnist_sized_input():
    compile_s, train, evaluate = measure.cnn_steps("max", 8, (28, 28, 1))
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
    [
        ("median", "unknown pooler(s) median"),
        ("", "an empty name in ''"),
        ("max,,avg", "an empty name in 'max,,avg'"),
        ("avg,max,avg", "avg listed twice"),
    ],
)
def test_bad_poolers_name_the_allowed_ones(text, message):
    with pytest.raises(ValueError, match=r"allowed: all or a comma-separated subset of max, avg"):
        cli.parse_poolers(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        cli.parse_poolers(text)
    assert cli.parse_poolers("tdgs,max") == ["tdgs", "max"]


def test_summary_table_has_a_row_per_pooler_with_every_figure():
    shapes = [measure._shape_key(s) for s in measure.POOL_SHAPES]
    results = {
        "pool_fwdbwd_ms": {f"{n}@{k}": v for k in shapes for n, v in (("max", 2.0), ("tdgs", 9.0))},
        "misc_ms": {f"copy@{k}": 0.5 for k in shapes}
        | {f"compile_train_step@tdgs@{b}": 3000.0 for b in measure.CNN_BATCHES},
        "cnn_train_img_s": {f"tdgs@{b}": 6500.0 for b in measure.CNN_BATCHES},
        "cnn_eval_img_s": {f"tdgs@{b}": 30000.0 for b in measure.CNN_BATCHES},
    }
    title, columns, max_row, tdgs_row = measure.summary_table(results, ["max", "tdgs"])
    pool_only = dict(results, cnn_train_img_s={}, cnn_eval_img_s={})  # --skip-cnn
    assert "CNN" not in measure.summary_table(pool_only, ["max"])[0]
    assert title.startswith("summary") and "train@64" in columns and "compile@256" in columns
    assert max_row.split() == ["max"] + ["2.000", "(1.00,", "4.00)"] * 2 + ["-"] * 6
    assert (
        tdgs_row.split()
        == ["tdgs"]
        + ["9.000", "(4.50,", "18.00)"] * 2
        + [
            "6500",
            "30000",
            "3.00",
        ]
        * 2
    )


def test_json_path_is_checked_before_measuring(tmp_path):
    bench.check_json_path(str(tmp_path / "b.json"))
    bench.check_json_path(None)
    for path, message in [
        (tmp_path / "nodir" / "b.json", "is not a writable directory"),
        (tmp_path, "is a directory"),
        (f"{tmp_path}/new_folder/", "is a directory"),
        ("", "expected a file path"),
    ]:
        with pytest.raises(ValueError, match=message):
            bench.check_json_path(str(path))


@pytest.mark.parametrize("text", ["28,28", "a,b,c", "4,4,1", "28,28,0"])
def test_bad_cnn_input_is_refused(text):
    with pytest.raises(ValueError, match="--cnn-input: expected H,W,C"):
        bench.parse_cnn_input(text)
    assert bench.parse_cnn_input("28,28,1") == (28, 28, 1)


def test_cli_bad_flags_exit_2_with_one_line(tmp_path):
    old_check = tmp_path / "old-check"
    old_check.mkdir()
    (old_check / "summary.txt").write_text("an earlier check")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    allowed = "allowed: all or a comma-separated subset of " + ", ".join(jaxpool.available())
    cases = [
        (["--poolers", "median"], f"error: --poolers: unknown pooler(s) median; {allowed}"),
        (["--repeats", "2.5"], "error: --repeats must be an integer; got '2.5'"),
        (["--json", str(tmp_path / "nodir" / "b.json")], "is not a writable directory"),
        (["--bogus"], "error: Unknown command line flag 'bogus'"),
        (["--poolers", "blur", "--cnn-input", "12,12,1"], "error: --cnn-input 12,12,1: too small"),
        (["--check", "--check-steps", "tests,gpu"], "error: --check-steps: expected 'all' or some"),
        (["--check", "--check-seconds", "20"], "error: --check-seconds must be at least 60"),
        (["--check", "--check-dir", str(old_check)], f"error: --check-dir {old_check} already"),
        (["--check", "--check-dir", str(a_file / "sub")], "is not a writable directory"),
        (
            ["--check", "--check-dir", str(tmp_path / "new"), "--check-data-dir", str(old_check)],
            f"error: --check-data-dir {old_check} holds no prepared TFDS mnist",
        ),
        (["--check", "--poolers", "max", "--repeats", "3"], "error: --poolers, --repeats: the"),
        (["--check-steps", "tests"], "error: --check-steps: options of --check only"),
        (["--skip-cnn", "--cnn-input", "28,28,1"], "error: --cnn-input: the CNN's input, and"),
    ]
    # Started together: each pays Python and JAX start-up, nothing is measured.  On the CPU, so
    # that no accelerator's start-up log joins the one line expected on stderr.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = []
    for args, message in cases:
        # --json keeps a bench that wrongly started from writing anywhere but tmp_path (with
        # --check it is itself refused).
        json_path = [] if "--json" in args or "--check" in args else ["--json", str(tmp_path / "b")]
        cmd = [sys.executable, "-m", "train.bench", *args, *json_path]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        procs.append((proc, message))
    for proc, message in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "b").exists()


def test_time_interleaved_times_round_robin_after_warm_up():
    calls = []

    def fn(name):
        return lambda: calls.append(name) or 0

    faults = {}
    seconds = measure.time_interleaved(
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
    measure.time_interleaved(
        {"touch": touch, "noop": lambda: 0}, repeats=3, target_s=0.0, faults=faults
    )
    if measure.resource is None:
        pytest.skip("no resource module on this platform")
    assert faults["touch"] >= 20
    assert faults["noop"] < 5


@pytest.mark.parametrize("name", ["avg", "mixed", "stochastic"])
def test_the_in_loop_pass_is_the_per_call_pass_repeated(name):
    # With c = 0 every iteration repeats the per-call forward+backward on the same inputs (with
    # its own key); with c = 1 each shifts the next one's inputs and parameters by s, the first
    # elements of its output and gradients, so the result is 3 chained calls of the per-call step.
    shape = (2, 4, 6, 3)
    loop, (params, x, key, cotangent, c) = measure.pooler_loop(name, shape, iterations=3)
    step, _ = measure.pooler_step(name, shape)
    assert float(c) == 0.0

    def chained(c):
        s = 0.0
        for i in range(3):
            shifted = jax.tree_util.tree_map(lambda p, s=s: p + s, params)
            y, (d_params, dx) = step(shifted, x + s, jax.random.fold_in(key, i), cotangent + s)
            s = c * sum(float(a.ravel()[0]) for a in jax.tree_util.tree_leaves((y, d_params, dx)))
        return s, y, d_params, dx

    for c in (0.0, 1.0):
        got, want = loop(params, x, key, cotangent, c), chained(c)
        # Two programs: their float32 sums may round differently (by a few ulps of the terms,
        # ~1), and a sum can cancel to near 0, so the tolerance is absolute.
        jax.tree_util.tree_map(
            lambda g, w: np.testing.assert_allclose(g, w, rtol=0, atol=1e-5), got, want
        )


def test_in_loop_figures_when_asked_and_in_the_summary(monkeypatch):
    monkeypatch.setattr(measure, "POOL_SHAPES", ((2, 8, 8, 4),))
    monkeypatch.setattr(measure, "CNN_BATCHES", (8,))
    monkeypatch.setattr(measure, "LOOP_ITERATIONS", 2)
    results = measure.run(["tdgs"], repeats=1, cnn_input=(8, 8, 1), in_loop=True)
    assert set(results["pool_fwdbwd_loop_ms"]) == {"max@(2,8,8,4)", "tdgs@(2,8,8,4)"}
    assert all(v > 0 for v in results["pool_fwdbwd_loop_ms"].values())
    assert set(results["cnn_train_loop_img_s"]) == {"tdgs@8"}
    lines = measure.summary_table(results, ["max", "tdgs"])
    assert "in loop" in lines[1] and len(lines[2].split()) == len(lines[3].split()) == 9
    assert lines[3].split()[4] == f"{results['pool_fwdbwd_loop_ms']['tdgs@(2,8,8,4)']:.3f}"
    default = measure.run(["avg"], repeats=1, with_cnn=False)  # on CPU: no in-loop figures
    assert ("pool_fwdbwd_loop_ms" in default) == (jax.default_backend() != "cpu")
