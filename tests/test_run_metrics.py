"""An epoch's running sums, its metrics row and the run summary (train.core.run_metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from configs import digits
from train.core import run_config, run_metrics


def test_accumulate_sums_in_order_and_stops_at_the_first_non_finite_loss():
    meta = run_metrics.epoch_start(3, seed=7)
    assert meta == {
        "epoch": 3,
        "data_seed": 7,
        "loss_sum": 0.0,
        "correct": 0,
        "count": 0,
        "train_seconds": 0.0,
        "includes_startup": False,
    }
    assert run_metrics.accumulate(meta, np.float32([0.5, 0.25]), np.int32([3, 4]), 4) is None
    assert meta["loss_sum"] == 0.5 * 4 + 0.25 * 4 and meta["correct"] == 7 and meta["count"] == 8
    # A NaN at step 1 of the next chunk: its index comes back, the step before it is counted.
    assert run_metrics.accumulate(meta, np.float32([1.0, np.nan, 2.0]), np.int32([1, 1, 1]), 4) == 1
    assert meta["loss_sum"] == 3.0 + 4.0 and meta["correct"] == 8 and meta["count"] == 12
    assert run_metrics.accumulate(meta, [math.inf], [0], 4) == 0


def test_epoch_row_means_and_rates():
    meta = {"loss_sum": 6.0, "correct": 9, "count": 12, "train_seconds": 2.0}
    meta["includes_startup"] = True
    row = run_metrics.epoch_row(0, 3, meta, {"loss": 0.4, "accuracy": 0.9}, eval_seconds=0.5)
    assert row == {
        "epoch": 1,
        "step": 3,
        "train_loss": 0.5,
        "train_accuracy": 0.75,
        "test_loss": 0.4,
        "test_accuracy": 0.9,
        "train_seconds": 2.0,
        "includes_startup": True,
        "eval_seconds": 0.5,
        "epoch_seconds": 2.5,
        "images_per_second": 6.0,
    }


@pytest.mark.parametrize("history_len", [0, 3])
def test_summary_names_the_best_epoch_and_counts_pooler_parameters(history_len):
    config = digits.get_config()
    config.update(pooler="tdgs", seed=2, num_epochs=5)
    spec = run_config.describe(config, (8, 8, 1), 10, 64)
    accuracies = [0.5, 0.8, 0.7][:history_len]
    history = [{"epoch": i + 1, "test_accuracy": a} for i, a in enumerate(accuracies)]
    params = {"conv1": {"kernel": np.zeros((3, 3, 1, 4))}, "pool1": {"temperature": np.zeros(4)}}
    summary = run_metrics.summary("done", spec, history, params, "/w")
    assert summary["status"] == "done" and summary["epochs_completed"] == history_len
    assert summary["param_count"] == 40 and summary["pooler_param_count"] == 4
    if history_len:
        assert summary["best_epoch"] == 2 and summary["best_test_accuracy"] == 0.8
        assert summary["final"] == history[-1]
    else:
        assert summary["best_epoch"] is None and summary["final"] is None
