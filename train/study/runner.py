"""Running a sweep's plans one after another in this process, recording each outcome in the run's
``sweep_run.json`` and the commands in ``<workdir>/sweep.json``, then writing the report.

The training core (and so JAX) is imported only when a run starts.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from train import cli
from train.core import run_files
from train.study import run_records, tables
from train.study.plan import Plan

SWEEP_FILE = "sweep.json"

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- running


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def environment() -> dict[str, Any]:
    """Device kind, device count and library versions, recorded with every run."""
    import flax
    import jax
    import optax

    import jaxpool

    return {
        "device_kind": jax.devices()[0].device_kind,
        "num_devices": jax.device_count(),
        "versions": {
            "jax": jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "jaxpool": jaxpool.__version__,
        },
    }


def run_one(
    plan: Plan,
    env: dict[str, Any],
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    datasets: dict[tuple[str, str | None], Any] | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) one planned run and records the outcome in ``sweep_run.json``.

    ``datasets``: datasets already read by this process, by ``(name, data_dir)``; the run's is
    read and added when missing, so a sweep decodes each dataset once (seconds per run).

    Returns:
      The record: ``status`` (``done``/``failed``/``stopped``) and ``error`` among others.

    Raises:
      loop.Interrupted, KeyboardInterrupt: after recording ``interrupted``; the sweep stops.
    """
    from train.core import input_pipeline, loop, run_config

    entry = plan.entry
    os.makedirs(plan.run_dir, exist_ok=True)
    record_path = os.path.join(plan.run_dir, run_records.RUN_FILE)
    record = {
        "label": entry.label,
        "dataset": entry.dataset,
        "pooler": entry.pooler,
        "pooler_kwargs": entry.kwargs,
        "seed": entry.seed,
        "config": json.loads(plan.config.to_json_best_effort()),
        "status": "running",
        "error": "",
        "error_type": "",
        "action": plan.action,
        "started": _now(),
        **env,
    }
    run_files.write_json(record_path, record)
    t0 = time.perf_counter()
    try:
        data = None
        if datasets is not None:
            source = (plan.config.dataset, plan.config.data_dir)
            if source not in datasets:
                datasets[source] = input_pipeline.load(*source)
            data = datasets[source]
        loop.train_and_evaluate(plan.config, plan.run_dir, on_epoch=on_epoch, data=data)
        summary = run_records.read_json(os.path.join(plan.run_dir, "summary.json")) or {}
        record["status"] = summary.get("status", "done")
    except (loop.Interrupted, KeyboardInterrupt):
        record.update(status="interrupted", finished=_now())
        run_files.write_json(record_path, record)
        raise
    except Exception as e:  # any failure of one run is recorded; the sweep goes on
        # Expected failures in one line; anything else with its traceback (a bug to report).
        expected = (loop.NonFiniteLossError, run_config.ConfigError, input_pipeline.DataError)
        logger.error(
            "%s failed: %s", entry.name(), cli.first_line(e), exc_info=not isinstance(e, expected)
        )
        record.update(
            status="failed",
            error=f"{type(e).__name__}: {cli.first_line(e)}"
            if str(e).strip()
            else type(e).__name__,
            error_type=type(e).__name__,
        )
    record.update(finished=_now(), seconds=round(time.perf_counter() - t0, 3))
    run_files.write_json(record_path, record)
    return record


def record_command(workdir: str, command: str) -> int:
    """Appends ``command`` to ``<workdir>/sweep.json`` (the report quotes it); returns its index."""
    path = os.path.join(workdir, SWEEP_FILE)
    data = run_records.read_json(path) or {"commands": []}
    data["commands"].append({"command": command, "time": _now()})
    os.makedirs(workdir, exist_ok=True)
    run_files.write_json(path, data)
    return len(data["commands"]) - 1


def record_command_time(workdir: str, index: int, seconds: float) -> None:
    """Adds the wall time of the command recorded at ``index`` (one that ran to its end)."""
    path = os.path.join(workdir, SWEEP_FILE)
    data = run_records.read_json(path) or {"commands": []}
    if index < len(data["commands"]):
        data["commands"][index]["seconds"] = round(seconds, 1)
        run_files.write_json(path, data)


def sweep(
    plans: Sequence[Plan],
    workdir: str,
    *,
    verbose: bool = True,
    command: tuple[int, float] | None = None,
) -> dict[str, list[Plan]]:
    """Runs every plan that needs running, then writes the report.

    ``command``: the index of this sweep's command in ``sweep.json`` and its
    ``time.perf_counter()`` start; when every plan has run, its wall time is recorded there
    before the report is written.

    Returns:
      ``{"done": [...], "failed": [...], "skipped": [...]}`` (skipped = already done before).

    Raises:
      loop.Interrupted, KeyboardInterrupt: the report is written first.
    """
    outcome: dict[str, list[Plan]] = {"done": [], "failed": [], "skipped": []}
    env = environment()
    datasets: dict[tuple[str, str | None], Any] = {}  # each dataset decoded once per sweep
    todo = [p for p in plans if p.runs]
    for p in plans:
        if p.action == "done":
            outcome["skipped"].append(p)
        elif not p.runs:
            outcome["failed"].append(p)
            print(f"  skip {p.entry.name()}: {p.action}: {p.detail}", flush=True)
    try:
        for i, p in enumerate(todo, start=1):
            detail = f" ({p.detail})" if p.detail else ""
            print(f"[{i}/{len(todo)}] {p.entry.name()}: {p.action}{detail}", flush=True)
            t0 = time.perf_counter()
            printer = (
                cli.epoch_printer(p.config.num_epochs, indent="      ", brief=True)
                if verbose
                else None
            )
            record = run_one(p, env, on_epoch=printer, datasets=datasets)
            seconds = time.perf_counter() - t0
            if record["status"] == "done":
                outcome["done"].append(p)
                summary = run_records.read_json(os.path.join(p.run_dir, "summary.json")) or {}
                acc = (summary.get("final") or {}).get("test_accuracy", math.nan)
                print(f"      done: test accuracy {acc:.2%} ({seconds:.1f} s)", flush=True)
            else:
                outcome["failed"].append(p)
                print(f"      {record['status']}: {record['error']}", flush=True)
        if command is not None:
            record_command_time(workdir, command[0], time.perf_counter() - command[1])
    finally:
        tables.write(workdir)
    return outcome
