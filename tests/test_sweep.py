"""train.sweep: flags, and a few tiny end-to-end sweeps on digits (slow)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from conftest import ROOT, drop_a_ctrl_c, held_by_another_process, mock_tfds
from PIL import Image

from train import report, sweep
from train.core import input_pipeline, loop, run_files
from train.study import plan, run_records, runner, stats

# Every end-to-end sweep uses the same shapes (digits, batch 64) so compiled steps are shared.
# Seeds apart on every backend ('auto' groups them on a GPU/TPU, where the tests that replace
# loop.train_and_evaluate would then not reach it); tests/test_seed_group.py covers groups.
TINY = ["--datasets", "digits", "--batch-size", "64", "--quiet", "--seeds-together", "off"]


def run_sweep(workdir, *args):
    return sweep.main(["sweep", "--workdir", str(workdir), *TINY, *args])


def read_csv(workdir):
    with open(os.path.join(workdir, "report", "results.csv")) as f:
        return list(csv.DictReader(f))


def read_metrics(path):
    with open(os.path.join(path, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def count_training(monkeypatch):
    """Wraps loop.train_and_evaluate; returns the list of run dirs it was called on."""
    calls = []
    real = loop.train_and_evaluate

    def counted(config, workdir, **kwargs):
        calls.append(os.path.relpath(workdir))
        return real(config, workdir, **kwargs)

    monkeypatch.setattr(loop, "train_and_evaluate", counted)
    return calls


@pytest.fixture(scope="module")
def done_sweep(tmp_path_factory):
    """max, mixed × digits × seeds 0, 1, 2 epochs: the sweep every slow test starts from."""
    workdir = tmp_path_factory.mktemp("sweep") / "w"
    assert run_sweep(workdir, "--poolers", "max,mixed", "--seeds", "2", "--epochs", "2") == 0
    return workdir


def copy_of(done_sweep, tmp_path):
    target = tmp_path / "w"
    shutil.copytree(done_sweep, target)
    return target


# --------------------------------------------------------------------------- fast: flags


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--poolers", "max,nope"], "unknown pooler(s) nope"),
        (["--datasets", "imagenet"], "unknown dataset(s) imagenet"),
        (["--datasets", "digits,"], "--datasets: an empty item in 'digits,'"),
        (["--seeds", "0"], "--seeds must be between 1 and 2**32 = 4294967296, got 0"),
        (["--seeds", str(2**32 + 1)], "--seeds must be between 1 and 2**32"),
        (["--seeds", "two"], "--seeds"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--tdgs-init-temperatures", "1,-2"], "positive numbers"),
        (["--batch-size", "0"], "batch size must be a positive integer"),
        (["--no-such-flag"], "no-such-flag"),
        (["extra"], "unexpected arguments: extra"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, capsys, tmp_path):
    assert sweep.main(["sweep", "--workdir", str(tmp_path / "w"), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error:") and captured.err.count("\n") == 1
    assert message in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_workdir_that_is_a_file_exits_2(dry_run, capsys, tmp_path):
    (tmp_path / "afile").write_text("")
    argv = ["sweep", "--workdir", str(tmp_path / "afile"), "--poolers", "max", *dry_run]
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: --workdir {tmp_path / 'afile'} exists and is not a directory\n"
    # Its report folder a file: refused before training, not after it.
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "report").write_text("")
    argv = ["sweep", "--workdir", str(tmp_path / "w"), "--poolers", "max", *dry_run]
    assert sweep.main(argv) == 2
    assert "report exists and is not a directory; move it away" in capsys.readouterr().err
    assert os.listdir(tmp_path / "w") == ["report"]


def test_dry_run_on_empty_workdir_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "w"
    argv = ["--poolers", "all", "--seeds", "2", "--tdgs-init-temperatures", "0.5,1", "--dry-run"]
    assert run_sweep(workdir, *argv) == 0
    out = capsys.readouterr().out
    # tdgs@T=1 is plain tdgs (the default temperature): not run twice.
    assert "28 runs" in out and "would run 28 of 28 runs" in out
    assert "tdgs@T=1" not in out
    assert "new      digits/tdgs@T=0.5/s1" in out
    assert not os.path.exists(workdir)


def test_cli_entry_point_help():
    result = subprocess.run(
        [sys.executable, "-m", "train.sweep", "--help"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--tdgs-init-temperatures" in result.stdout and "--[no]dry-run" in result.stdout


# --------------------------------------------------------------------------- slow: end to end


@pytest.mark.slow
def test_sweep_writes_report_with_valid_plots(done_sweep):
    out = done_sweep / "report"
    rows = read_csv(done_sweep)
    assert [(r["pooler"], r["seed"], r["status"]) for r in rows] == [
        ("max", "0", "done"),
        ("max", "1", "done"),
        ("mixed", "0", "done"),
        ("mixed", "1", "done"),
    ]
    md = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy_digits.png", "curves_digits.png", "mixing_weights_digits.png"]
    for name in pngs:
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()
        assert matplotlib.image.imread(path).shape[-1] in (3, 4)
        assert f"![{name}]({name})" in md
    assert "python -m train.sweep --workdir" in md and "--poolers max,mixed" in md
    for name in ("jax", "flax", "optax", "jaxpool"):
        assert f"{name} " in md
    assert f"Device: {jax.devices()[0].device_kind} × {jax.device_count()}" in md
    commit = runner.code_commit()  # None where the tests run outside a git checkout
    if (ROOT / ".git").exists():
        assert (
            commit.split()[0]
            == subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        )
        assert f"- Code: git commit {commit}\n" in md
    assert "Wall time of the sweep commands:" in md and "of which compiling ≈" in md


@pytest.mark.slow
def test_table_numbers_equal_metrics(done_sweep):
    rows = read_csv(done_sweep)
    finals = {}
    for row in rows:
        metrics = read_metrics(done_sweep / row["run_dir"])
        assert len(metrics) == int(row["epochs"]) == 2
        assert float(row["final_test_accuracy"]) == metrics[-1]["test_accuracy"]
        assert float(row["final_test_loss"]) == metrics[-1]["test_loss"]
        assert float(row["best_test_accuracy"]) == max(m["test_accuracy"] for m in metrics)
        # Seconds per epoch leave out epoch 1 (compilation).
        assert [m["includes_startup"] for m in metrics] == [True, False]
        assert float(row["train_seconds_per_epoch"]) == metrics[1]["train_seconds"]
        finals.setdefault(row["pooler"], []).append(metrics[-1]["test_accuracy"])
    md = (done_sweep / "report" / "report.md").read_text()
    for pooler, accs in finals.items():
        mean, std = np.mean(accs), np.std(accs, ddof=1)
        assert f"| {pooler} | 2/2 | {100 * mean:.2f} ± {100 * std:.2f} |" in md.replace(
            f"**{pooler}** ★", pooler
        )
    diff = stats.paired_difference(finals["mixed"], finals["max"])
    assert f"| {100 * diff.mean:+.2f} (n = 2: no interval) |" in md  # two seeds: too wide to read
    extra = int(rows[2]["param_count"]) - int(rows[0]["param_count"])
    assert extra == int(rows[2]["pooler_param_count"]) > 0
    assert f"({extra:+,})" in md


@pytest.mark.slow
def test_rerun_does_no_work(done_sweep, tmp_path, count_training, capsys):
    workdir = copy_of(done_sweep, tmp_path)
    csv_before = (workdir / "report" / "results.csv").read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in workdir.glob("runs/**/metrics.jsonl")}
    assert run_sweep(workdir, "--poolers", "max,mixed", "--seeds", "2", "--epochs", "2") == 0
    assert count_training == []
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert (workdir / "report" / "results.csv").read_bytes() == csv_before
    assert "0 trained, 4 already done, 0 failed" in capsys.readouterr().out


@pytest.mark.slow
def test_deleted_final_checkpoint_resumes_exactly_that_run(done_sweep, tmp_path, count_training):
    workdir = copy_of(done_sweep, tmp_path)
    run = workdir / "runs" / "digits" / "mixed" / "s1"
    before = read_metrics(run)
    steps = run_files.checkpoint_steps(str(run))
    shutil.rmtree(run / "checkpoints" / str(steps[-1]))
    assert run_sweep(workdir, "--poolers", "max,mixed", "--seeds", "2", "--epochs", "2") == 0
    assert count_training == [os.path.relpath(run)]
    record = json.loads((run / run_records.RUN_FILE).read_text())
    assert (record["action"], record["status"]) == ("resume", "done")
    after = read_metrics(run)
    # Epoch 1 came from the checkpoint (its row, timings included, is untouched); epoch 2 reran.
    assert after[0] == before[0]
    assert after[1]["step"] == before[1]["step"]
    assert after[0]["includes_startup"] and after[1]["includes_startup"]  # two processes
    assert after[1]["test_accuracy"] == pytest.approx(before[1]["test_accuracy"], abs=0.01)
    assert run_files.checkpoint_steps(str(run))[-1] == steps[-1]


@pytest.mark.slow
def test_failed_runs_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    """seed 0 hits a real non-finite loss, seed 1 raises; seed 2 trains; reruns skip/retry."""
    workdir = tmp_path / "w"
    real_train, real_chunk = loop.train_and_evaluate, loop._run_chunk
    calls = []

    def nan_chunk(*args, **kwargs):
        state, out = real_chunk(*args, **kwargs)
        return state, {**out, "loss": out["loss"] * jnp.nan}

    def flaky_train(config, run_dir, **kwargs):
        calls.append(config.seed)
        if config.seed == 1:
            raise RuntimeError("disk on fire")
        if config.seed == 0:
            monkeypatch.setattr(loop, "_run_chunk", nan_chunk)
        try:
            return real_train(config, run_dir, **kwargs)
        finally:
            monkeypatch.setattr(loop, "_run_chunk", real_chunk)

    monkeypatch.setattr(loop, "train_and_evaluate", flaky_train)
    args = ("--poolers", "max", "--seeds", "3", "--epochs", "1")
    assert run_sweep(workdir, *args) == sweep.EXIT_FAILED
    assert calls == [0, 1, 2]
    rows = {r["seed"]: r for r in read_csv(workdir)}
    assert rows["0"]["status"] == "failed" and "NonFiniteLossError" in rows["0"]["error"]
    assert rows["1"]["status"] == "failed" and rows["1"]["error"] == "RuntimeError: disk on fire"
    assert rows["2"]["status"] == "done" and float(rows["2"]["final_test_accuracy"]) > 0.1
    md = (workdir / "report" / "report.md").read_text()
    assert "Runs not done" in md and "disk on fire" in md
    assert "1 trained, 0 already done, 2 failed" in capsys.readouterr().out

    # Rerun: the non-finite run is deterministic and skipped; the other error is retried.
    calls.clear()
    assert run_sweep(workdir, *args, "--dry-run") == 0
    listing = capsys.readouterr().out
    assert "failed   digits/max/s0" in listing and "--retry-failed" in listing
    assert "retry    digits/max/s1" in listing and "done     digits/max/s2" in listing
    monkeypatch.setattr(loop, "train_and_evaluate", real_train)
    assert run_sweep(workdir, *args) == sweep.EXIT_FAILED  # s0 is still failed
    rows = {r["seed"]: r for r in read_csv(workdir)}
    assert [rows[s]["status"] for s in "012"] == ["failed", "done", "done"]


@pytest.mark.slow
def test_dry_run_lists_done_and_todo(done_sweep, capsys):
    mtime = (done_sweep / "sweep.json").stat().st_mtime_ns
    argv = ["--poolers", "max,mixed,avg", "--seeds", "2", "--epochs", "2", "--dry-run"]
    assert run_sweep(done_sweep, *argv) == 0
    out = capsys.readouterr().out
    assert "done     digits/max/s0" in out and "test accuracy" in out
    assert "new      digits/avg/s1" in out
    assert "would run 2 of 6 runs" in out
    assert (done_sweep / "sweep.json").stat().st_mtime_ns == mtime
    assert not (done_sweep / "runs" / "digits" / "avg").exists()


@pytest.mark.slow
def test_report_cli_rebuilds_identical_csv(done_sweep, tmp_path):
    workdir = copy_of(done_sweep, tmp_path)
    before = (workdir / "report" / "results.csv").read_bytes()
    shutil.rmtree(workdir / "report")
    assert report.main(["report", str(workdir)]) == 0
    assert (workdir / "report" / "results.csv").read_bytes() == before
    assert (workdir / "report" / "accuracy_digits.png").exists()


@pytest.mark.slow
def test_sweep_on_mock_tfds_mnist(tmp_path):
    """The TFDS path (--data-dir reaches every run) on tfds.testing.mock_data: no files needed."""
    workdir = tmp_path / "w"
    argv = ["sweep", "--workdir", str(workdir), "--datasets", "mnist", "--poolers", "max"]
    argv += ["--seeds", "1", "--epochs", "1", "--batch-size", "64", "--data-dir", "/nowhere"]
    with mock_tfds(num_examples=128):
        assert sweep.main([*argv, "--quiet"]) == 0
    (row,) = read_csv(workdir)
    assert (row["dataset"], row["pooler"], row["status"], row["epochs"]) == (
        "mnist",
        "max",
        "done",
        "1",
    )
    config = json.loads((workdir / row["run_dir"] / "config.json").read_text())
    assert config["data_dir"] == "/nowhere"
    assert (workdir / "report" / "accuracy_mnist.png").exists()


@pytest.mark.slow
def test_interrupt_stops_the_sweep_and_rerun_resumes(done_sweep, tmp_path, monkeypatch, capsys):
    workdir = copy_of(done_sweep, tmp_path)
    for seed in (0, 1):
        run = workdir / "runs" / "digits" / "max" / f"s{seed}"
        shutil.rmtree(run / "checkpoints" / str(run_files.checkpoint_steps(str(run))[-1]))
    (workdir / "report" / "results.csv").unlink()

    def interrupted(config, run_dir, **kwargs):
        raise loop.Interrupted(2, f"interrupted by signal 2 in {run_dir}")

    monkeypatch.setattr(loop, "train_and_evaluate", interrupted)
    args = ("--poolers", "max,mixed", "--seeds", "2", "--epochs", "2")
    assert run_sweep(workdir, *args) == 128 + 2
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert (workdir / "report" / "results.csv").exists()  # the report is written on the way out
    record = json.loads((workdir / "runs/digits/max/s0" / run_records.RUN_FILE).read_text())
    assert record["status"] == "interrupted"
    assert "interrupted" not in (workdir / "runs/digits/max/s1" / run_records.RUN_FILE).read_text()

    monkeypatch.undo()
    assert run_sweep(workdir, *args, "--dry-run") == 0
    listing = capsys.readouterr().out
    assert "resume   digits/max/s0" in listing and "resume   digits/max/s1" in listing
    assert run_sweep(workdir, *args) == 0
    assert [r["status"] for r in read_csv(workdir)] == ["done"] * 4


def test_runs_a_stopped_sweep_never_reached_are_reported(tmp_path, monkeypatch, capsys):
    """Stopped in its first run: the report lists both seeds, the second as not started."""

    def interrupted(config, run_dir, **kwargs):
        raise loop.Interrupted(15, f"interrupted by signal 15 in {run_dir}")

    monkeypatch.setattr(loop, "train_and_evaluate", interrupted)
    workdir = tmp_path / "w"
    assert run_sweep(workdir, "--poolers", "max", "--seeds", "2", "--epochs", "3") == 128 + 15
    rows = read_csv(workdir)
    assert [(r["seed"], r["status"], r["num_epochs"]) for r in rows] == [
        ("0", "interrupted", "3"),  # before training wrote a summary: the sweep's record says
        ("1", "not started", "3"),
    ]
    assert rows[1]["run_dir"] == os.path.join("runs", "digits", "max", "s1")
    assert "| max | 0/2 |" in (workdir / "report" / "report.md").read_text()
    assert not (workdir / "runs" / "digits" / "max" / "s1").exists()
    assert "rerun the same command to resume" in capsys.readouterr().err


class _TermKilled(Exception):
    """What the test's own SIGTERM handler raises: a command that left SIGTERM to it."""


def test_a_sigterm_outside_training_stops_the_sweep_with_its_report(tmp_path, monkeypatch, capsys):
    """SIGTERM while a run is set up (the dataset read, checkpoints restored): as a Ctrl-C there,
    the runs are recorded as interrupted, the report is written and the exit code is 143 (before,
    SIGTERM ended the process on the spot, its records saying "running" and no report)."""

    def terminated(config, run_dir, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    def stand_in(signum, frame):
        raise _TermKilled

    monkeypatch.setattr(loop, "train_and_evaluate", terminated)
    previous = signal.signal(signal.SIGTERM, stand_in)
    try:
        workdir = tmp_path / "w"
        assert run_sweep(workdir, "--poolers", "max", "--seeds", "2", "--epochs", "1") == 143
        assert signal.getsignal(signal.SIGTERM) is stand_in  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert [r["status"] for r in read_csv(workdir)] == ["interrupted", "not started"]
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_a_dataset_that_cannot_be_read_stops_the_sweep_before_any_run(tmp_path, capsys):
    """One line and exit 2 before anything is trained or written (before: every run of it
    failed in turn, each retrying the read, and the sweep exited 1)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ("--poolers", "max,avg", "--datasets", "digits,mnist", "--data-dir", str(empty))
    assert run_sweep(tmp_path / "w", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset 'mnist' is not prepared in ") and err.count("\n") == 1
    assert not (tmp_path / "w" / "runs").exists()
    assert run_sweep(tmp_path / "w", *argv, "--dry-run") == 0  # listing needs no data


def test_a_dataset_a_sweep_cannot_read_is_read_once(tmp_path, monkeypatch):
    loads = []

    def unreadable(name, data_dir=None):
        loads.append(name)
        raise input_pipeline.DataError(f"dataset {name!r} cannot be read here")

    monkeypatch.setattr(input_pipeline, "load", unreadable)
    plans = [
        plan.plan_entry(e, plan.make_config(e, epochs=1), str(tmp_path))
        for e in plan.entries(["max", "avg"], ["digits"], 1)
    ]
    outcome = runner.sweep(plans, str(tmp_path), verbose=False)
    assert len(outcome["failed"]) == 2 and loads == ["digits"]
    record = json.loads((tmp_path / "runs/digits/avg/s0" / run_records.RUN_FILE).read_text())
    assert record["error"] == "DataError: dataset 'digits' cannot be read here"


def test_an_unreadable_sweep_record_is_refused_and_kept(tmp_path, capsys):
    workdir = tmp_path / "w"
    workdir.mkdir()
    cut_short = '{"commands": [{"command": "python -m tr'
    (workdir / run_records.SWEEP_FILE).write_text(cut_short)
    assert run_sweep(workdir, "--poolers", "max", "--seeds", "1", "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sweep.json cannot be read" in err and "move it away" in err
    assert (workdir / run_records.SWEEP_FILE).read_text() == cut_short
    assert not (workdir / "runs").exists()


def test_a_ctrl_c_a_library_turned_into_another_error_stops_the_sweep(tmp_path, monkeypatch):
    """Not recorded as the run's failure, and the sweep does not go on to its next run."""

    def interrupted(config, run_dir, **kwargs):
        drop_a_ctrl_c()
        raise RuntimeError("a library's error that stands for the KeyboardInterrupt it caught")

    monkeypatch.setattr(loop, "train_and_evaluate", interrupted)
    workdir = tmp_path / "w"
    assert run_sweep(workdir, "--poolers", "max", "--seeds", "2", "--epochs", "1") == 130
    assert [r["status"] for r in read_csv(workdir)] == ["interrupted", "not started"]


@pytest.mark.slow
def test_each_dataset_is_read_once_per_sweep(tmp_path, monkeypatch):
    loads = []
    real = input_pipeline.load

    def counted(name, data_dir=None, **kwargs):
        loads.append(name)
        return real(name, data_dir, **kwargs)

    monkeypatch.setattr(input_pipeline, "load", counted)
    assert run_sweep(tmp_path / "w", "--poolers", "max,avg", "--seeds", "2", "--epochs", "1") == 0
    assert loads == ["digits"]  # four runs, one read
    assert [r["status"] for r in read_csv(tmp_path / "w")] == ["done"] * 4


def test_code_commit_is_none_for_an_install_inside_another_repository(tmp_path, monkeypatch):
    # e.g. pip install --target into a project's folder: that project's commit is not ours.
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "site" / "train").mkdir(parents=True)
    (tmp_path / "site" / "train" / "cli.py").write_text("")
    git("add", ".")
    git("-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "-m", "other project")
    monkeypatch.setattr(runner.cli, "__file__", str(tmp_path / "site" / "train" / "cli.py"))
    assert runner.code_commit() is None
    monkeypatch.setattr(runner.cli, "__file__", str(tmp_path / "train" / "cli.py"))  # its root
    assert runner.code_commit() is not None


def test_a_run_another_process_trains_is_left_to_it(tmp_path, capsys):
    # Two sweeps on one workdir: each run is trained by one of them, never by both at once.
    held = tmp_path / "runs" / "digits" / "max" / "s0"
    with held_by_another_process(held) as pid:
        assert run_sweep(tmp_path, "--poolers", "max", "--seeds", "2", "--epochs", "1") == 1
        assert not (held / run_records.RUN_FILE).exists()  # its record is the other's to write
    out = capsys.readouterr().out
    assert f"in use: process {pid} is training it; rerun the sweep once that has ended" in out
    assert "1 trained, 0 already done, 1 failed" in out
    assert run_sweep(tmp_path, "--poolers", "max", "--seeds", "2", "--epochs", "1") == 0
    assert "1 trained, 1 already done, 0 failed" in capsys.readouterr().out


def test_a_full_disk_stops_the_sweep_in_one_line(tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "report" / "report.md"))

    monkeypatch.setattr(sweep, "sweep", full)
    assert run_sweep(tmp_path, "--poolers", "max", "--epochs", "1") == 1
    assert capsys.readouterr().err == (
        f"error: cannot write {tmp_path}/report/report.md: No space left on device; the sweep "
        "stopped: fix that (room, permissions) and rerun the same command to resume\n"
    )


def test_a_workdir_that_is_a_broken_symbolic_link_is_refused(tmp_path, capsys):
    (tmp_path / "w").symlink_to(tmp_path / "gone")
    assert run_sweep(tmp_path / "w", "--poolers", "max") == 2
    assert capsys.readouterr().err == (
        f"error: --workdir {tmp_path}/w is a symbolic link to {tmp_path}/gone, which does not "
        "exist\n"
    )
    undecodable = os.fsdecode(os.fsencode(str(tmp_path)) + b"/w\xff")  # orbax could not use it
    assert run_sweep(undecodable, "--poolers", "max") == 2
    assert "is not valid UTF-8 (orbax cannot write checkpoints there)\n" in capsys.readouterr().err


def test_a_checkpoint_that_cannot_be_written_stops_the_sweep(tmp_path, monkeypatch, capsys):
    # A full disk fails every later run too, each after an epoch of training: the sweep stops.
    trained = []

    def full(config, workdir, **kwargs):
        trained.append(workdir)
        raise run_files.WriteError(f"cannot write a checkpoint in {workdir}: No space left")

    monkeypatch.setattr(loop, "train_and_evaluate", full)
    assert run_sweep(tmp_path, "--poolers", "max,avg", "--epochs", "1") == 1
    run = tmp_path / "runs" / "digits" / "max" / "s0"
    assert trained == [str(run)]
    assert capsys.readouterr().err.endswith(
        f"error: cannot write a checkpoint in {run}: No space left; the sweep stopped: fix that "
        "(room, permissions) and rerun the same command to resume\n"
    )
    record = json.loads((run / run_records.RUN_FILE).read_text())
    assert (record["status"], record["error_type"]) == ("failed", "WriteError")
    assert (tmp_path / "report" / "report.md").exists()
