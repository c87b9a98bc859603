"""The numbers a training run writes: an epoch's running sums (kept in the checkpoint), its
``metrics.jsonl`` row and the run's ``summary.json`` (keys in :mod:`train.core.loop`)."""

from __future__ import annotations

import math
from typing import Any

import jax

from train.core import models, run_config


def epoch_start(epoch: int, seed: int) -> dict[str, Any]:
    """Checkpoint metadata at the start of ``epoch`` (0-based): the epoch's data order is
    ``device_loop.epoch_order(data_key(seed), epoch, n)``; the sums and seconds accumulate over
    its steps."""
    return {
        "epoch": epoch,
        "data_seed": seed,
        "loss_sum": 0.0,
        "correct": 0,
        "count": 0,
        "train_seconds": 0.0,
        "includes_startup": False,
    }


def accumulate(meta: dict[str, Any], losses, correct, batch_size: int) -> int | None:
    """Adds a chunk's per-step losses and correct counts to the epoch's running sums in ``meta``.

    Sequential float64 sums, continued from the checkpoint: a resumed epoch adds the same numbers
    in the same order as an uninterrupted one.  Returns the index of the first non-finite loss
    (the sums then hold the steps before it), or None.
    """
    for i, (loss, right) in enumerate(zip(losses, correct, strict=True)):
        loss = float(loss)
        if not math.isfinite(loss):
            return i
        meta["loss_sum"] += loss * batch_size
        meta["correct"] += int(right)
        meta["count"] += batch_size
    return None


def epoch_row(
    epoch: int, step: int, meta: dict[str, Any], test: dict[str, float], eval_seconds: float
) -> dict[str, Any]:
    """The ``metrics.jsonl`` line of the finished ``epoch`` (0-based) from its running sums."""
    train_seconds = meta["train_seconds"]
    return {
        "epoch": epoch + 1,
        "step": step,
        "train_loss": meta["loss_sum"] / meta["count"],
        "train_accuracy": meta["correct"] / meta["count"],
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "train_seconds": train_seconds,
        # The first epoch a train_and_evaluate call trains (a new run or a resumed one) may
        # also compile the step, or load it from the cache.
        "includes_startup": bool(meta["includes_startup"]),
        "eval_seconds": eval_seconds,
        "epoch_seconds": train_seconds + eval_seconds,
        "images_per_second": meta["count"] / max(train_seconds, 1e-9),
    }


def summary(
    status: str,
    spec: run_config.RunSpec,
    history: list[dict[str, Any]],
    params,
    workdir: str,
    dataset_version: str = "",
) -> dict[str, Any]:
    """``summary.json``: the run's status, identity, final and best epochs, and sizes."""
    best = max(history, key=lambda r: r["test_accuracy"]) if history else None
    return {
        "status": status,
        "dataset": spec.dataset,
        "dataset_version": dataset_version,
        "pooler": spec.pooler,
        "pooler_kwargs": spec.pooler_kwargs,
        "seed": spec.seed,
        "num_epochs": spec.num_epochs,
        "epochs_completed": len(history),
        "final": history[-1] if history else None,
        "best_test_accuracy": best["test_accuracy"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "param_count": models.count_params(params),
        "pooler_param_count": models.count_params(models.pooler_subtrees(params)),
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
        "workdir": workdir,
    }
