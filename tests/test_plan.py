"""train.study.plan: the runs of a sweep, their configs, and what a rerun does with each one
(without training: the run directories are written by hand)."""

from __future__ import annotations

import json
import os
import re

import pytest

from train import cli
from train.core import run_files
from train.study import plan, run_records


def test_entries_order_and_labels():
    entries = plan.entries(["max", "tdgs"], ["digits", "mnist"], 2, temperatures=[0.5])
    names = [e.name() for e in entries]
    assert names[:6] == [
        "digits/max/s0",
        "digits/tdgs/s0",
        "digits/tdgs@T=0.5/s0",
        "digits/max/s1",
        "digits/tdgs/s1",
        "digits/tdgs@T=0.5/s1",
    ]
    assert len(names) == 12 and names[-1] == "mnist/tdgs@T=0.5/s1"
    config = plan.make_config(entries[2], epochs=3, batch_size=32, data_dir="/d")
    assert (config.pooler, config.pooler_kwargs.to_dict(), config.seed) == (
        "tdgs",
        {"init_temperature": 0.5},
        0,
    )
    assert (config.num_epochs, config.batch_size, config.data_dir) == (3, 32, "/d")


def test_parsers_reject_what_they_do_not_know():
    assert plan.parse_temperatures("0.5, 1,2") == [0.5, 1.0, 2.0]
    assert plan.parse_temperatures(None) == []
    assert plan.parse_datasets("digits, mnist") == ["digits", "mnist"]
    for parse, text, message in [
        (plan.parse_datasets, "imagenet", "unknown dataset(s) imagenet"),
        (plan.parse_datasets, "digits,mnist,digits", "--datasets: digits listed twice"),
        (plan.parse_temperatures, "1,nan", "got 'nan'"),
        (plan.parse_temperatures, "0", "got '0'"),
        (plan.parse_temperatures, " ", "--tdgs-init-temperatures is empty"),
        (plan.parse_temperatures, "1,", "--tdgs-init-temperatures: an empty item in '1,'"),
        (plan.parse_datasets, "digits,", "--datasets: an empty item in 'digits,'"),
        (plan.parse_temperatures, "0.5,1,0.50", "--tdgs-init-temperatures: 0.50 listed twice"),
    ]:
        with pytest.raises(cli.UsageError, match=re.escape(message)):
            parse(text)


def metrics_row(epoch, test_accuracy=0.9):
    return {
        "epoch": epoch,
        "test_accuracy": test_accuracy,
        "train_seconds": 1.0,
        "images_per_second": 100.0,
        "includes_startup": epoch == 1,
    }


@pytest.fixture
def planned(tmp_path):
    """``plan_it(**files)``: writes a run directory for digits/max/s0, then plans it."""
    entry = plan.entries(["max"], ["digits"], 1)[0]
    config = plan.make_config(entry, epochs=2)
    path = run_records.run_dir(str(tmp_path), "digits", "max", 0)

    def plan_it(
        config_json=None, summary=None, record=None, checkpoints=(), retry_failed=False, epochs=None
    ):
        os.makedirs(os.path.join(path, "checkpoints"), exist_ok=True)
        if epochs is not None:  # metrics.jsonl with that many finished epochs
            with open(os.path.join(path, "metrics.jsonl"), "w") as f:
                f.writelines(json.dumps(metrics_row(e)) + "\n" for e in range(1, epochs + 1))
        if config_json is not None:
            run_files.write_json(os.path.join(path, "config.json"), config_json)
        if summary is not None:
            run_files.write_json(os.path.join(path, "summary.json"), summary)
        if record is not None:
            run_files.write_json(os.path.join(path, run_records.RUN_FILE), record)
        for step in checkpoints:
            os.makedirs(os.path.join(path, "checkpoints", str(step)), exist_ok=True)
        return plan.plan_entry(entry, config, str(tmp_path), retry_failed=retry_failed)

    return plan_it, json.loads(config.to_json_best_effort()), path


def test_plan_of_each_kind_of_run_directory(planned):
    plan_it, config_json, path = planned
    done = {"status": "done", "num_epochs": 2, "epochs_completed": 2}
    done["final"] = {"step": 40, "test_accuracy": 0.9}
    assert (plan_it().action, plan_it().detail) == ("new", "")
    assert plan_it().run_dir == path
    assert (plan_it(config_json, done).action, plan_it().detail) == (
        "new",
        "starts over: no checkpoint",
    )
    # A finished run whose final checkpoint is gone resumes from the newest one left.
    result = plan_it(config_json, done, checkpoints=[20])
    assert (result.action, result.detail) == (
        "resume",
        "final checkpoint missing; from checkpoint step 20",
    )
    # With its final checkpoint it is skipped.
    result = plan_it(config_json, done, checkpoints=[40], epochs=2)
    assert (result.action, result.runs) == ("done", False)
    assert "test accuracy 90.00%" in result.detail
    # Its metrics.jsonl cut short: damaged, left alone (and the sweep exits 1).
    result = plan_it(config_json, done, epochs=1)
    assert (result.action, result.runs) == ("damaged", False)
    assert "metrics.jsonl holds 1 of its 2 epochs; delete the directory" in result.detail
    assert plan_it(config_json, done, epochs=2).action == "done"
    # Orbax's unfinished temporary directories are not checkpoints.
    os.makedirs(os.path.join(path, "checkpoints", "60.orbax-checkpoint-tmp-1"))
    assert run_files.checkpoint_steps(path) == [20, 40]
    # More epochs than the finished run: resume from its last checkpoint.
    more = dict(done, num_epochs=1, epochs_completed=1)
    result = plan_it(config_json, more)
    assert (result.action, result.detail) == (
        "resume",
        "extends 1 to 2 epochs; from checkpoint step 40",
    )
    # Fewer: refused (resuming would relabel a 3-epoch result as 2 epochs).
    fewer = dict(done, num_epochs=3, epochs_completed=3)
    result = plan_it(config_json, fewer)
    assert (result.action, result.runs) == ("conflict", False)
    assert "trained for 3 epochs, more than --epochs 2; ask for 3 or more" in result.detail


def test_a_finished_run_without_checkpoints_keeps_its_results(planned):
    """Checkpoints deleted to save space: the run stays done, is never trained over by a
    smaller --epochs, and a cut metrics.jsonl is damaged, not started over."""
    plan_it, config_json, path = planned
    done = {"status": "done", "num_epochs": 2, "epochs_completed": 2, "final": {"step": 40}}
    result = plan_it(config_json, done, epochs=2)
    assert (result.action, result.detail) == (
        "done",
        "2 epochs, test accuracy 90.00%; checkpoints deleted",
    )
    assert plan_it(config_json, done, epochs=1).action == "damaged"
    three = dict(done, num_epochs=3, epochs_completed=3)
    result = plan_it(config_json, three, epochs=3)
    assert (result.action, result.runs) == ("conflict", False)
    assert "trained for 3 epochs, more than --epochs 2" in result.detail
    # Unfinished, with finished epochs and no checkpoint: training anew would overwrite them.
    stopped = dict(done, status="interrupted", epochs_completed=1)
    result = plan_it(config_json, stopped, epochs=1)
    assert (result.action, result.runs) == ("conflict", False)
    assert "holds 1 finished epoch(s) but no checkpoint to continue them from" in result.detail
    # A summary without metrics or checkpoints holds nothing to keep: trained again.
    os.remove(os.path.join(path, "metrics.jsonl"))
    assert plan_it(config_json, done).action == "new"


def test_a_run_killed_while_its_first_checkpoint_was_written_starts_over(planned):
    """Epoch 1's row alone, no checkpoint, no summary: killed before that epoch's checkpoint was
    finalised; training again reproduces the row (train.main starts over there too)."""
    plan_it, config_json, _ = planned
    result = plan_it(config_json, epochs=1)
    assert (result.action, result.detail) == (
        "new",
        "starts over: stopped while its first checkpoint was written",
    )
    assert plan_it(config_json, epochs=2).action == "conflict"  # checkpoints deleted by hand


def test_plan_of_failed_and_conflicting_runs(planned):
    plan_it, config_json, _ = planned
    nan = {"status": "failed", "error_type": "NonFiniteLossError", "error": "loss is nan"}
    result = plan_it(config_json, record=nan)
    assert (result.action, result.runs) == ("failed", False)
    assert plan_it(config_json, record=nan, retry_failed=True).action == "retry"
    crash = {"status": "failed", "error_type": "OSError", "error": "disk"}
    result = plan_it(config_json, record=crash)
    assert (result.action, result.runs, result.detail) == ("retry", True, "failed before: disk")
    other = dict(config_json, learning_rate=config_json["learning_rate"] * 2, seed=5)
    # Without a checkpoint there is nothing to keep: the new settings start over, even where
    # the old ones ended in a non-finite loss.
    result = plan_it(other, record=nan)
    assert (result.action, result.runs) == ("new", True)
    assert result.detail == "starts over with other learning_rate, seed: no checkpoint"
    # Finished epochs without checkpoints (deleted to save space) are results to keep.
    assert plan_it(other, epochs=1).action == "conflict"
    result = plan_it(other, checkpoints=[20])
    assert (result.action, result.runs) == ("conflict", False)
    assert "learning_rate, seed" in result.detail


def test_describe_lists_every_run_and_counts_those_to_run(planned):
    plan_it, _, _ = planned
    plans = [plan_it(), plan_it()]
    lines = plan.describe(plans)
    assert lines[0].split() == ["new", "digits/max/s0"]
    assert lines[-1] == "would run 2 of 2 runs (0 done or skipped)"
