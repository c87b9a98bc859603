"""train.report on hand-made run directories: table numbers, CI marking, CSV, plots, CLI."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from PIL import Image

import jaxpool
from train import report
from train.core import run_files
from train.study import plots as report_plots
from train.study import run_records, stats, tables

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(
    workdir,
    dataset,
    pooler,
    seed,
    accuracies,
    *,
    kwargs=None,
    status="done",
    error="",
    param_count=1000,
    pooler_params=None,
    train_seconds=1.0,
    learning_rate=1e-3,
):
    """Writes the files train.core.loop and train.sweep would leave for one run."""
    kwargs = kwargs or {}
    path = run_records.run_dir(
        str(workdir), dataset, run_records.pooler_label(pooler, kwargs), seed
    )
    os.makedirs(path)
    config = {
        "dataset": dataset,
        "pooler": pooler,
        "pooler_kwargs": kwargs,
        "seed": seed,
        "num_epochs": len(accuracies),
        "batch_size": 64,
        "learning_rate": learning_rate,
        "standardize": False,
    }
    rows = [
        {
            "epoch": e + 1,
            "step": 10 * (e + 1),
            "train_loss": 1.0 / (e + 1) + 0.01 * seed,
            "train_accuracy": acc - 0.01,
            "test_loss": 0.5 / (e + 1),
            "test_accuracy": acc,
            "train_seconds": train_seconds * (3.0 if e == 0 else 1.0),  # epoch 1 compiles
            "includes_startup": e == 0,  # no seeds_in_program: as the published study's runs
            "eval_seconds": 0.1,
            "epoch_seconds": train_seconds + 0.1,
            "images_per_second": 640.0 / train_seconds,
        }
        for e, acc in enumerate(accuracies)
    ]
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    summary = {
        "status": "failed" if status == "failed" else status,
        "epochs_completed": len(rows),
        "num_epochs": len(rows),
        "final": rows[-1],
        "param_count": param_count,
        "pooler_param_count": param_count - 1000,
    }
    with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump(summary, f)
    with open(os.path.join(path, "pooler_params.json"), "w") as f:
        json.dump(pooler_params or {"pooler": pooler, "layers": {}}, f)
    info = {
        "config": config,
        "status": status,
        "error": error,
        "device_kind": "cpu",
        "num_devices": 1,
        "versions": {"jax": "0.0", "flax": "0.0", "optax": "0.0", "jaxpool": "0.1.0"},
        "finished": "2026-01-01 00:00:00 UTC",
    }
    with open(os.path.join(path, run_records.RUN_FILE), "w") as f:
        json.dump(info, f)
    return path


def _mixed_params(seed):
    s = [0.5 + 0.01 * seed, 0.6, 0.7]
    return {
        "pooler": "mixed",
        "layers": {
            f"pool{i}": {"alpha": {"mixing_weight_s": s, "mean": float(np.mean(s))}}
            for i in (1, 2, 3)
        },
    }


def _tdgs_params(_seed):
    def t(n):
        grid = np.full((n, n), 1.1).tolist()
        return {"temperature": {"mean": 1.1, "std": 0.1, "min": 1.0, "max": 1.2, "map": grid}}

    return {"pooler": "tdgs", "layers": {"pool1": t(4), "pool2": t(2), "pool3": t(1)}}


def _gated_params(_seed):
    layer = {
        "gate_kernel": {"shape": [2, 2, 3], "mean": 0.05, "std": 0.01, "min": 0.0, "max": 0.1},
        "gate_bias": {"mean": 0.1, "sigmoid": [0.52, 0.53, 0.55], "sigmoid_mean": 0.533},
    }
    return {"pooler": "gated", "layers": {f"pool{i}": layer for i in (1, 2, 3)}}


# Final accuracies per pooler, seeds 0..2. mixed beats max by exactly +0.01 every seed (interval
# [0.01, 0.01], excludes 0 -> marked best); avg is worse by a noisy margin.
MAX = [0.90, 0.92, 0.94]
MIXED = [0.91, 0.93, 0.95]
AVG = [0.88, 0.93, 0.90]


def _plateau(final):
    """Four epochs that reach ``final`` at epoch 2 and stay there (converged)."""
    return [0.5, final, final, final]


@pytest.fixture
def workdir(tmp_path):
    for seed in range(3):
        make_run(tmp_path, "digits", "max", seed, _plateau(MAX[seed]))
        make_run(
            tmp_path,
            "digits",
            "mixed",
            seed,
            _plateau(MIXED[seed]),
            param_count=1112,
            pooler_params=_mixed_params(seed),
            train_seconds=2.0,
        )
        make_run(tmp_path, "digits", "avg", seed, _plateau(AVG[seed]))
        make_run(
            tmp_path,
            "digits",
            "gated",
            seed,
            _plateau(0.9),
            param_count=1500,
            pooler_params=_gated_params(seed),
        )
        for temp in (0.5, 2.0):
            make_run(
                tmp_path,
                "digits",
                "tdgs",
                seed,
                _plateau(0.8 + 0.01 * temp),
                kwargs={"init_temperature": temp},
                param_count=1448,
                pooler_params=_tdgs_params(seed),
            )
    make_run(
        tmp_path,
        "digits",
        "tree",
        0,
        [0.5],
        status="failed",
        error="NonFiniteLossError: non-finite training loss (nan)",
    )
    return str(tmp_path)


def test_pooler_order_is_the_registry_order_and_report_reading_needs_no_jax():
    assert run_records.POOLER_ORDER == jaxpool.available()
    default = jaxpool.TDGSPool.__dataclass_fields__["init_temperature"].default
    assert run_records.TDGS_DEFAULT_INIT_TEMPERATURE == default
    code = "import sys, train.report; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_labels_and_run_dirs():
    assert run_records.pooler_label("max", {}) == "max"
    assert run_records.pooler_label("tdgs", {"init_temperature": 0.5}) == "tdgs@T=0.5"
    assert run_records.pooler_label("tdgs", {"init_temperature": 2.0, "tau": 1}) == "tdgs@T=2,tau=1"
    assert run_records.run_dir("w", "mnist", "tdgs@T=0.5", 1) == os.path.join(
        "w", "runs", "mnist", "tdgs@T=0.5", "s1"
    )
    assert run_records.run_dir("w", "mnist", "gated@per=[1, 2]", 0).endswith("gated@per=_1,_2_/s0")


def test_collect_orders_and_reads_status(workdir):
    runs = run_records.collect(workdir)
    labels = list(dict.fromkeys(r.label for r in runs))
    assert labels == ["max", "avg", "mixed", "gated", "tree", "tdgs@T=0.5", "tdgs@T=2"]
    (tree,) = [r for r in runs if r.pooler == "tree"]
    assert tree.status == "failed" and "non-finite" in tree.error


def test_a_done_run_missing_metrics_lines_is_not_counted(tmp_path):
    path = make_run(tmp_path, "digits", "max", 0, [0.5, 0.6, 0.7])
    metrics = os.path.join(path, "metrics.jsonl")
    with open(metrics) as f:
        lines = f.readlines()
    with open(metrics, "w") as f:
        f.writelines([*lines[:2], lines[2][:10]])  # the last line torn
    (run,) = run_records.collect(str(tmp_path))
    assert (run.status, run.done) == ("damaged", False)
    assert run.error == "metrics.jsonl holds 2 of its 3 epochs"


def test_planned_runs_never_started_are_counted_and_listed(tmp_path):
    """A sweep stopped before its third seed: the table says 2/3, not 2/2, and lists the third."""
    workdir = str(tmp_path)
    make_run(tmp_path, "digits", "max", 0, [0.90, 0.91])
    make_run(tmp_path, "digits", "max", 1, [0.92, 0.93])

    def planned(seed, epochs):
        path = run_records.run_dir(workdir, "digits", "max", seed)
        fields = {"dataset": "digits", "pooler": "max", "pooler_kwargs": {}, "seed": seed}
        return run_records.planned_run(workdir, path, **fields, setup={"num_epochs": epochs})

    commands = [
        {"command": "first", "time": "t1", "runs": [planned(s, 2) for s in range(3)]},
        {"command": "second", "time": "t2", "runs": [planned(2, 3)]},  # the newest plan counts
    ]
    with open(os.path.join(workdir, run_records.SWEEP_FILE), "w") as f:
        json.dump({"commands": commands}, f)
    runs = run_records.collect(workdir)
    assert [(r.seed, r.status, r.num_epochs) for r in runs] == [
        (0, "done", 2),
        (1, "done", 2),
        (2, "not started", 3),
    ]
    (row,) = tables.table(runs)
    assert (row.n_done, row.n_total) == (2, 3)
    md = tables.markdown(runs, workdir, {})
    assert "3 runs, 2 done" in md and "3 seeds" in md
    # per epoch budget (the third run's newest plan has 3 epochs)
    assert "| max | 2/2 |" in md.split("### 3 epochs")[0] and "| max | 0/1 |" in md
    assert f"| {os.path.join('runs', 'digits', 'max', 's2')} | not started | 0/3 |  |" in md
    # Once the run exists, its directory is what counts.
    make_run(tmp_path, "digits", "max", 2, [0.94, 0.95])
    assert [r.status for r in run_records.collect(workdir)] == ["done"] * 3


@pytest.mark.parametrize("text", ['{"commands": [{"comm', "[]", "{}"])
def test_an_unreadable_sweep_record_is_said_in_the_report_and_left_as_it_is(tmp_path, text):
    make_run(tmp_path, "digits", "max", 0, [0.90, 0.91])
    record = tmp_path / run_records.SWEEP_FILE
    record.write_text(text)
    assert [r.status for r in run_records.collect(str(tmp_path))] == ["done"]
    assert report.main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"The sweep's record could not be read: {record}" in md
    assert record.read_text() == text


def test_runs_of_other_epoch_budgets_get_their_own_table(tmp_path):
    """A sweep extended to 2 epochs for seeds 0-1 after a 1-epoch sweep of seeds 0-2: seed 2 is not
    averaged with, or compared against, runs of the other budget."""
    for seed in (0, 1):
        make_run(tmp_path, "digits", "max", seed, [0.50, 0.80])
        make_run(tmp_path, "digits", "avg", seed, [0.40, 0.70])
    make_run(tmp_path, "digits", "max", 2, [0.55])
    make_run(tmp_path, "digits", "avg", 2, [0.35])
    md = tables.markdown(run_records.collect(str(tmp_path)), str(tmp_path), {})
    one, two = md.split("### 1 epoch per run")[1].split("### 2 epochs per run")
    assert "| max | 1/1 | 55.00 |" in one and "| avg | 1/1 | 35.00 |" in one
    assert "| -20.00 (n = 1: no interval) |" in one
    assert "| max | 2/2 | 80.00 ± 0.00 |" in two and "| avg | 2/2 | 70.00 ± 0.00 |" in two
    assert "| -10.00 (n = 2: no interval) |" in two


def test_table_numbers_and_best_marking(workdir):
    rows = {r.label: r for r in tables.table(run_records.collect(workdir))}
    mean, std = rows["mixed"].accuracy
    assert mean == pytest.approx(np.mean(MIXED))
    assert std == pytest.approx(np.std(MIXED, ddof=1))
    diff = rows["mixed"].diff
    assert diff.mean == pytest.approx(0.01)
    assert diff.low == pytest.approx(0.01) and diff.high == pytest.approx(0.01)
    assert rows["mixed"].best  # highest mean, interval excludes 0
    expected = stats.paired_difference(AVG, MAX)
    assert rows["avg"].diff.low == pytest.approx(expected.low)
    assert not rows["avg"].best and not rows["max"].best
    # Speed excludes epoch 1 (compilation): 2.0 s vs 1.0 s per epoch.
    assert rows["mixed"].relative_seconds == pytest.approx(2.0)
    assert rows["mixed"].extra_params == 112
    assert rows["tree"].n_done == 0 and rows["tree"].n_total == 1


def test_no_mark_when_interval_contains_zero(tmp_path):
    for seed, (a, b) in enumerate([(0.90, 0.91), (0.93, 0.90)]):
        make_run(tmp_path, "digits", "max", seed, [a])
        make_run(tmp_path, "digits", "avg", seed, [b])
    rows = tables.table(run_records.collect(str(tmp_path)))
    assert not any(r.best for r in rows)


def test_write_produces_csv_markdown_and_valid_pngs(workdir):
    written = tables.write(workdir)
    names = sorted(os.path.basename(p) for p in written["plots"])
    assert names == [
        "accuracy_digits.png",
        "curves_digits.png",
        "gates_digits.png",
        "mixing_weights_digits.png",
        "tdgs_init_temperature.png",
        "tdgs_temperature_digits.png",
    ]
    md = open(written["markdown"]).read()
    for path in written["plots"]:
        with open(path, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE
        with Image.open(path) as im:
            im.verify()
        assert matplotlib.image.imread(path).ndim == 3
        assert f"]({os.path.basename(path)})" in md
    # Table text equals the numbers: mixed 93.00 ± 2.00, +1.00 [+1.00, +1.00], marked best.
    # Its own interval: 93 ± 4.302653 * 2 / sqrt(3) = 93 ± 4.97; no rise over the last 2 epochs.
    assert (
        "| **mixed** ★ | 3/3 | 93.00 ± 2.00 | [88.03, 97.97] | +1.00 [+1.00, +1.00] | +0.00 |" in md
    )
    assert "| +0.00 | 93.00 ± 2.00 (2, 2, 2) |" in md  # best at epoch 2, the first of the plateau
    assert "NonFiniteLossError" in md and "Runs not done" in md
    assert "jaxpool 0.1.0" in md and "cpu × 1" in md
    # 18 finished runs of 4 epochs of 1.1 s (mixed: 2.1 s): 15 * 4.4 + 3 * 8.4 = 91.2 s.  Epoch 1
    # trains 3x as long as the others (1 s, mixed 2 s): compiling 15 * 2 + 3 * 4 = 42 s.
    assert "time of the 72 epochs of finished runs: 1 min 31 s, of which compiling ≈ 42 s" in md
    with open(written["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 6 + 1
    assert tuple(rows[0]) == tables.CSV_FIELDS
    first = rows[0]
    assert (first["pooler"], first["seed"], first["status"]) == ("max", "0", "done")
    assert float(first["final_test_accuracy"]) == MAX[0]
    assert float(first["train_seconds_per_epoch"]) == 1.0


def test_plain_tdgs_is_the_default_temperature_point_of_the_study(tmp_path):
    make_run(tmp_path, "digits", "tdgs", 0, [0.9])
    make_run(tmp_path, "digits", "tdgs", 0, [0.8], kwargs={"init_temperature": 0.5})
    make_run(tmp_path, "digits", "tdgs", 0, [0.7], kwargs={"tau": 0.5})  # not the study
    make_run(tmp_path, "mnist", "tdgs", 0, [0.95])  # no temperature study on mnist
    make_run(tmp_path, "digits", "tdgs", 0, [0.9], kwargs={"init_temperature": 1.0})  # = tdgs
    runs = report_plots.init_temperature_runs(run_records.collect(str(tmp_path)))
    points = sorted((r.dataset, report_plots.init_temperature(r)) for r in runs)
    assert points == [("digits", 0.5), ("digits", 1.0)]  # T = 1 once per seed


def test_seconds_per_epoch_leave_out_the_epochs_that_compiled():
    def run(*rows):
        metrics = [{"train_seconds": t, **flags} for t, flags in rows]
        return run_records.Run(
            "p", "digits", "max", {}, 0, len(rows), "done", "", metrics, {}, {}, {}
        )

    fresh = {"includes_startup": True}
    plain = {"includes_startup": False}
    # Resumed at epoch 3: epochs 1 and 3 compiled, epoch 2 and 4 did not.
    assert run((9, fresh), (1, plain), (7, fresh), (3, plain)).seconds_per_epoch == 2.0
    assert run((9, fresh), (1, plain), (7, fresh), (3, plain)).compile_seconds == 7 + 5
    assert run((9, fresh), (7, fresh)).compile_seconds == 0.0  # no steady epoch to compare
    assert run((9, fresh), (7, fresh)).seconds_per_epoch == 8.0  # nothing else to use


def test_rebuild_gives_identical_csv(workdir):
    first = open(tables.write(workdir)["csv"], "rb").read()
    assert report.main(["report", workdir]) == 0
    assert open(os.path.join(workdir, "report", "results.csv"), "rb").read() == first


def test_stale_plots_are_removed(workdir, tmp_path):
    out = os.path.join(workdir, "report")
    os.makedirs(out)
    stale = os.path.join(out, "accuracy_cifar10.png")
    open(stale, "wb").close()
    tables.write(workdir)
    assert not os.path.exists(stale)


@pytest.mark.parametrize("argv", [["report"], ["report", "a", "b"], ["report", "--bogus"]])
def test_cli_usage_errors(argv, capsys):
    assert report.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


def test_cli_missing_or_empty_workdir(tmp_path, capsys):
    assert report.main(["report", str(tmp_path / "nope")]) == 2
    assert report.main(["report", str(tmp_path)]) == 2
    (tmp_path / "a-file").write_text("")
    assert report.main(["report", str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "does not exist" in err[0] and "no run directories" in err[1]
    assert err[2].endswith("a-file is not a directory")


def test_pairs_only_seeds_both_finished(tmp_path):
    # max finished seeds 0, 1; avg finished seeds 1, 2: only seed 1 pairs (n=1, no interval).
    make_run(tmp_path, "digits", "max", 0, [0.90])
    make_run(tmp_path, "digits", "max", 1, [0.92])
    make_run(tmp_path, "digits", "avg", 1, [0.95])
    make_run(tmp_path, "digits", "avg", 2, [0.80])
    rows = {r.label: r for r in tables.table(run_records.collect(str(tmp_path)))}
    diff = rows["avg"].diff
    assert diff.n == 1 and diff.mean == pytest.approx(0.03)
    assert "+3.00 (n = 1: no interval)" in "\n".join(tables.table_markdown(rows.values()))


def test_two_seeds_print_no_interval_and_mark_nothing(tmp_path):
    # avg beats max by 0.01 and 0.012: the 95% interval [-0.0027, +0.0247]... is computable but
    # with n = 2 it spans 12.7 standard errors; the table prints none and marks no winner.
    for seed, (a, b) in enumerate([(0.90, 0.91), (0.92, 0.932)]):
        make_run(tmp_path, "digits", "max", seed, _plateau(a))
        make_run(tmp_path, "digits", "avg", seed, _plateau(b))
    rows = {r.label: r for r in tables.table(run_records.collect(str(tmp_path)))}
    assert rows["avg"].diff.n == 2 and not rows["avg"].interval_readable
    assert not any(r.best for r in rows.values())
    text = "\n".join(tables.table_markdown(rows.values()))
    assert "| avg | 2/2 | 92.10 ± 1.56 | n = 2: no interval | +1.10 (n = 2: no interval) |" in text


def test_runs_still_improving_are_marked_not_converged(tmp_path):
    # max plateaus; avg rises 0.80 -> 0.85 -> 0.90 over the last two epochs (+10 pp, far above
    # its seed std of 0.01): its comparison with max is not read, even though avg is better.
    for seed in range(3):
        make_run(tmp_path, "digits", "max", seed, _plateau(0.85 + 0.001 * seed))
        make_run(tmp_path, "digits", "avg", seed, [0.5, 0.8, 0.85, 0.9 + 0.01 * seed])
    runs = run_records.collect(str(tmp_path))
    avg = [r for r in runs if r.label == "avg"]
    assert tables.late_rise(avg) == pytest.approx(0.91 - 0.80)
    assert tables.converged(avg) is False
    assert tables.converged([r for r in runs if r.label == "max"]) is True
    rows = {r.label: r for r in tables.table(runs)}
    assert rows["avg"].diff.excludes_zero and not rows["avg"].interval_readable
    assert not rows["avg"].best and not rows["max"].best
    text = "\n".join(tables.table_markdown(rows.values()))
    diff = rows["avg"].diff
    interval = f"[{100 * diff.low:+.2f}, {100 * diff.high:+.2f}]"
    assert f"| +5.90 {interval} (not converged: avg) | +11.00 not converged |" in text
    # A rise within the seed std is converged; one epoch cannot be judged.
    assert tables.converged([run_records.load_run(r.path) for r in avg[:1]]) is False  # n = 1
    one_epoch = make_run(tmp_path, "mnist", "max", 0, [0.9])
    assert tables.converged([run_records.load_run(one_epoch)]) is None


def test_tdgs_maps_share_a_colour_scale_per_layer_and_1x1_is_a_number(tmp_path):
    def params(scale):
        def t(n):
            grid = (scale * (1 + np.arange(n * n).reshape(n, n))).tolist()
            return {"temperature": {"mean": float(np.mean(grid)), "map": grid}}

        return {"pooler": "tdgs", "layers": {"pool1": t(2), "pool2": t(1)}}

    for seed, scale in enumerate([1.0, 3.0]):
        make_run(tmp_path, "digits", "tdgs", seed, [0.9], pooler_params=params(scale))
    runs = run_records.collect(str(tmp_path))
    fig = report_plots.plot_tdgs_temperatures(runs, "t", str(tmp_path / "t.png"))
    axes = fig.axes[:4]  # rows: seeds 0, 1; columns: pool1 (2x2), pool2 (1x1); then colour bars
    limits = [ax.images[0].get_clim() for ax in (axes[0], axes[2])]
    assert limits == [(1.0, 12.0), (1.0, 12.0)]  # both seeds' pool1 maps on one scale
    for ax, value in ((axes[1], "1.000"), (axes[3], "3.000")):
        assert not ax.images and [t.get_text() for t in ax.texts] == [value]


def test_lp_powers_and_lip_logits_get_a_table_and_a_plot(tmp_path):
    for seed, (p1, spread) in enumerate([(3.0, 1.0), (4.0, 2.0), (5.0, 3.0)]):
        lp = {
            "layers": {
                "pool1": {"p": {"p": p1, "mean": p1}},
                "pool2": {"p": {"p": 2.0, "mean": 2.0}},
            }
        }
        lip = {"layers": {"pool1": {"logits": {"mean": 6.0, "channel_std_mean": spread}}}}
        make_run(tmp_path, "digits", "max", seed, _plateau(0.9))
        make_run(tmp_path, "digits", "lp", seed, _plateau(0.9), pooler_params=lp)
        make_run(tmp_path, "digits", "lip", seed, _plateau(0.9), pooler_params=lip)
    result = tables.write(str(tmp_path))
    text = open(result["markdown"]).read()
    # p: mean 4 and sample std 1 over the seeds in pool1; 2 with std 0 in pool2
    assert "LP power p (1 = average, large = max) (3 runs):" in text
    assert "| pool1 | pool2 |\n|---|---|\n| 4.00 ± 1.00 | 2.00 ± 0.00 |" in text
    assert "(3 runs):\n\n| pool1 |\n|---|\n| 2.00 ± 1.00 |" in text  # the LIP logit spread
    png = os.path.join(result["dir"], "learned_scalars_digits.png")
    with open(png, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE


def _set_per_epoch(run_dir, key, values):
    """Sets ``key`` in each of the run's metrics.jsonl rows, epoch by epoch."""
    path = os.path.join(run_dir, "metrics.jsonl")
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    with open(path, "w") as f:
        for row, value in zip(rows, values, strict=True):
            f.write(json.dumps({**row, key: value}) + "\n")


def test_runs_trained_partly_in_a_seed_group_are_counted_per_epoch(tmp_path):
    # s0: 2 of 3 epochs in a group, its last command alone; s1: all in a group; s2: alone.
    for seed, grouped in ((0, (2, 2, 1)), (1, (2, 2, 2)), (2, (1, 1, 1))):
        path = make_run(tmp_path, "digits", "max", seed, [0.5, 0.6, 0.7])
        _set_per_epoch(path, "seeds_in_program", grouped)
        info_path = os.path.join(path, run_records.RUN_FILE)
        with open(info_path) as f:
            info = json.load(f)
        with open(info_path, "w") as f:
            json.dump({**info, "seeds_in_program": grouped[-1]}, f)
    tables.write(str(tmp_path))
    with open(tmp_path / "report" / "report.md") as f:
        report = f.read()
    assert "2 of 3 runs trained with other seeds in one program (`--seeds-together`; 5 of the " in (
        report
    )
    assert "runs' 9 epochs)" in report


def test_runs_of_other_learning_rates_get_their_own_table_and_plots(tmp_path, monkeypatch):
    """max at learning rate 0.01 and avg at 0.001 are not one experiment: no Δ between them, and
    the plots show one setup, saying which."""
    for seed in range(3):
        make_run(tmp_path, "digits", "max", seed, _plateau(0.3), learning_rate=0.01)
        make_run(tmp_path, "digits", "avg", seed, _plateau(0.9))
    make_run(tmp_path, "digits", "max", 3, _plateau(0.9))
    runs = run_records.collect(str(tmp_path))
    md = tables.markdown(runs, str(tmp_path), {})
    low, high = md.split("### 4 epochs, learning rate 0.001 per run")[1].split(
        "### 4 epochs, learning rate 0.01 per run"
    )
    assert "| avg | 3/3 | 90.00 ± 0.00 |" in low and "| max | 1/1 | 90.00 |" in low
    assert "| [90.00, 90.00] | – |" in low  # no Δ: max at 0.001 shares no seed with avg
    assert "| max | 3/3 | 30.00 ± 0.00 |" in high and "avg" not in high
    rows = list(csv.DictReader(io.StringIO(_csv_text(runs, tmp_path))))
    assert {(r["pooler"], r["learning_rate"]) for r in rows} == {("max", "0.01"), ("avg", "0.001"),
                                                                 ("max", "0.001")}  # fmt: skip
    drawn = {}
    monkeypatch.setattr(
        report_plots, "plot_curves", lambda runs, *a: drawn.setdefault("curves", (runs, a[-2]))
    )
    monkeypatch.setattr(report_plots, "plot_curve_panels", lambda *a: None)
    report_plots.draw_all(runs, str(tmp_path), tables.BASELINE)
    shown, title = drawn["curves"]
    assert {(r.label, r.setup["learning_rate"]) for r in shown} == {("avg", 0.001), ("max", 0.001)}
    assert title.endswith("[runs of 4 epochs, learning rate 0.001 only]")


def _csv_text(runs, workdir):
    path = os.path.join(workdir, "results.csv")
    tables.write_csv(runs, str(workdir), path)
    with open(path) as f:
        return f.read()


def test_tied_best_labels_are_all_marked_and_one_epoch_marks_none(tmp_path):
    for seed, base in enumerate([0.90, 0.92, 0.94]):
        make_run(tmp_path, "digits", "max", seed, _plateau(base))
        for pooler in ("avg", "tree"):
            make_run(tmp_path, "digits", pooler, seed, _plateau(base + 0.05))
    rows = {r.label: r for r in tables.table(run_records.collect(str(tmp_path)))}
    assert rows["avg"].best and rows["tree"].best and not rows["max"].best
    # One epoch: convergence cannot be judged, so no pooler is called the best.
    one = tmp_path / "one"
    for seed, base in enumerate([0.90, 0.92, 0.94]):
        make_run(one, "digits", "max", seed, [base])
        make_run(one, "digits", "avg", seed, [base + 0.05])
    rows = {r.label: r for r in tables.table(run_records.collect(str(one)))}
    assert rows["avg"].converged is None and not rows["avg"].best


def test_a_nan_final_accuracy_prints_no_numbers(tmp_path):
    for seed in range(3):
        make_run(tmp_path, "digits", "max", seed, [0.9, 0.9, 0.9])
        make_run(tmp_path, "digits", "avg", seed, [0.9, 0.9, math.nan if seed == 0 else 0.9])
    runs = run_records.collect(str(tmp_path))
    md = tables.markdown(runs, str(tmp_path), {})
    avg = next(line for line in md.splitlines() if line.startswith("| avg |"))
    assert "nan" not in avg and avg.split(" | ")[2:5] == ["–", "–", "–"]
    # The best epoch of the NaN seed is the first of its numbers, not the NaN.
    row = next(r for r in csv.DictReader(io.StringIO(_csv_text(runs, tmp_path)))
               if r["pooler"] == "avg" and r["seed"] == "0")  # fmt: skip
    assert (row["best_test_accuracy"], row["best_epoch"]) == ("0.9", "1")


@pytest.mark.parametrize(
    "path, content",
    [
        ("summary.json", b"\xff\xfe{"),
        ("config.json", b"[1, 2]"),
        ("metrics.jsonl", b"[1, 2]\n"),
        ("metrics.jsonl", b'{"epoch": 1}\n'),
        ("metrics.jsonl", b'{"epoch": 1, "test_accuracy": "x"}\n\xff\n'),
        ("metrics.jsonl", None),  # a directory
        (run_records.RUN_FILE, b'"x"'),
        (run_records.SWEEP_FILE, b'{"commands": [{"command": "c"}]}'),
        (run_records.SWEEP_FILE, b'{"commands": [{"command": "c", "time": "t", "runs": [{}]}]}'),
    ],
)
def test_damaged_files_give_a_report_not_a_traceback(tmp_path, path, content):
    run = make_run(tmp_path, "digits", "max", 0, [0.9, 0.91])
    make_run(tmp_path, "digits", "avg", 0, [0.9, 0.92])
    target = os.path.join(str(tmp_path) if path == run_records.SWEEP_FILE else run, path)
    if os.path.exists(target):
        os.remove(target)
    if content is None:
        os.makedirs(target)
    else:
        with open(target, "wb") as f:
            f.write(content)
    assert report.main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| avg | 1/1 | 92.00 |" in md  # the intact run is reported as it is


def test_a_report_path_that_is_a_file_is_refused_before_anything_runs(tmp_path, capsys):
    make_run(tmp_path, "digits", "max", 0, [0.9])
    (tmp_path / "report").write_text("not a folder")
    assert report.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: {tmp_path / 'report'} exists and is not a directory; move it away (the report goes there)\n"
    )


def test_wall_time_counts_overlapping_commands_once():
    def command(start, seconds):
        return {"command": "c", "time": f"2026-01-01 00:{start:02d}:00 UTC", "seconds": seconds}

    # 0-10 min and 5-15 min side by side, then 20-21 min: 16 min elapsed, 21 min summed.
    lines = tables._time_lines([], [command(0, 600), command(5, 600), command(20, 60)])
    assert lines == [
        "- Wall time of the sweep commands: 16 min 00 s elapsed (21 min 00 s summed: they "
        "overlapped) (3 of 3 commands timed; an interrupted one is not)"
    ]
    assert tables._time_lines([], [command(0, 60), command(5, 60)])[0].startswith(
        "- Wall time of the sweep commands: 2 min 00 s (2 of 2"
    )


def test_a_sweep_record_of_another_run_does_not_relabel_the_run_trained_there(tmp_path):
    """sweep_run.json written by a run refused in this directory (other settings) belongs to that
    attempt: the report reads the directory's own config.json and summary."""
    path = make_run(tmp_path, "digits", "max", 0, [0.9, 0.91])
    with open(os.path.join(path, run_records.RUN_FILE)) as f:
        info = json.load(f)
    info["config"] = dict(info["config"], learning_rate=0.5)
    info.update(status="failed", error="ConfigError: the workdir holds another run")
    with open(os.path.join(path, run_records.RUN_FILE), "w") as f:
        json.dump(info, f)
    (run,) = run_records.collect(str(tmp_path))
    assert (run.status, run.error, run.setup["learning_rate"]) == ("done", "", 1e-3)


def test_labels_of_different_temperatures_never_collide():
    labels = {run_records.pooler_label("tdgs", {"init_temperature": t})
              for t in (0.1234567, 0.1234568, 1.0, 1.0 + 1e-12, 0.5)}  # fmt: skip
    assert len(labels) == 5
    assert run_records.pooler_label("tdgs", {"init_temperature": 0.5}) == "tdgs@T=0.5"
    assert run_records.pooler_label("tdgs", {"init_temperature": 2.0}) == "tdgs@T=2"


def test_two_sweeps_recording_commands_at_once_lose_none(tmp_path):
    script = (
        "import sys; from train.study import runner\n"
        "for i in range(40): runner.record_command(sys.argv[1], f'{sys.argv[2]} {i}', [])\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), name], cwd=ROOT)
        for name in ("a", "b")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    commands = [c["command"] for c in run_records.read_sweep_record(str(tmp_path))["commands"]]
    assert sorted(commands) == sorted(f"{n} {i}" for n in "ab" for i in range(40))
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_the_rebuild_command_is_quoted_for_the_shell(tmp_path):
    workdir = tmp_path / "my sweep's runs"
    make_run(workdir, "digits", "max", 0, [0.90])
    md = tables.markdown(run_records.collect(str(workdir)), str(workdir), {})
    assert f"rebuild it with `python -m train.report {shlex.quote(str(workdir))}`" in md
    assert shlex.split(f"python -m train.report {shlex.quote(str(workdir))}")[-1] == str(workdir)


def test_runs_resumed_on_other_devices_are_counted_per_epoch(tmp_path):
    # s0 trained 2 epochs on 8 devices, then its last on 1; s1 all on 1 (sweep_run.json: 1 each).
    for seed, devices in ((0, ("cpu × 8", "cpu × 8", "cpu × 1")), (1, ("cpu × 1",) * 3)):
        _set_per_epoch(
            make_run(tmp_path, "digits", "max", seed, [0.5, 0.6, 0.7]), "device", devices
        )
    md = tables.markdown(run_records.collect(str(tmp_path)), str(tmp_path), {})
    assert "- Device: cpu × 1 (4 of the runs' 6 epochs), cpu × 8 (2 of the runs' 6 epochs)\n" in md
    one = tmp_path / "one device"
    make_run(one, "digits", "max", 0, [0.5, 0.6, 0.7])  # rows without the key: sweep_run.json's
    assert "- Device: cpu × 1\n" in tables.markdown(run_records.collect(str(one)), str(one), {})


def test_a_file_that_cannot_be_written_is_named_not_its_temporary_copy(tmp_path, monkeypatch):
    path = str(tmp_path / "missing" / "report.md")
    with pytest.raises(FileNotFoundError) as raised:
        run_files.write_text(path, "x")
    assert raised.value.filename == path
    real_fdopen = os.fdopen

    def full(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        f.write = lambda text: (_ for _ in ()).throw(OSError(28, "No space left on device"))
        return f

    monkeypatch.setattr(run_files.os, "fdopen", full)
    with pytest.raises(OSError, match="No space left on device") as raised:
        run_files.write_text(str(tmp_path / "report.md"), "x")
    assert raised.value.filename == str(tmp_path / "report.md")
    assert os.listdir(tmp_path) == []  # the temporary copy removed
