"""A sweep's run directories: where :mod:`train.sweep` puts each run and how :mod:`train.report`
reads one back (config, metrics, summary, learned pooler parameters, the sweep's own record).

A run lives in ``<workdir>/runs/<dataset>/<pooler label>/s<seed>/``; the pooler label is the registry
name, followed by ``@key=value,...`` when the run has pooler keyword arguments (``init_temperature``
is written ``T``: ``tdgs@T=0.5``).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
from typing import Any

import numpy as np

from train.core import run_files

DATASET_ORDER = ("mnist", "cifar10", "cifar100", "digits")
# jaxpool.available()'s order, written out so that reading a sweep back needs no JAX
# (tests/test_report.py checks the two agree).
POOLER_ORDER = (
    "max", "avg", "mixed", "gated", "tree", "stochastic", "s3", "tdgs",
    "softpool", "lp", "lip", "blur", "fractional",
)  # fmt: skip
# TDGSPool's default init_temperature: a plain "tdgs" run is the point T = 1 of the temperature
# study (a test ties the two; this module imports no JAX).
TDGS_DEFAULT_INIT_TEMPERATURE = 1.0
# Short names of pooler keyword arguments in labels.
KWARG_ALIASES = {"init_temperature": "T"}
RUN_FILE = "sweep_run.json"  # written by train.sweep into every run directory
# <workdir>/sweep.json: every sweep command that ran in the workdir and the runs it planned.
SWEEP_FILE = "sweep.json"
NOT_STARTED = "not started"


def pooler_label(pooler: str, kwargs: dict[str, Any] | None) -> str:
    """``"tdgs"``, or ``"tdgs@T=0.5"`` for ``init_temperature=0.5`` (keys sorted)."""
    if not kwargs:
        return pooler
    parts = []
    for key in sorted(kwargs):
        value = kwargs[key]
        text = f"{value:g}" if isinstance(value, float) else json.dumps(value)
        parts.append(f"{KWARG_ALIASES.get(key, key)}={text.strip(chr(34))}")
    return f"{pooler}@{','.join(parts)}"


def run_dir(workdir: str, dataset: str, label: str, seed: int) -> str:
    """``<workdir>/runs/<dataset>/<label>/s<seed>`` (odd characters of the label become ``_``)."""
    safe = re.sub(r"[^A-Za-z0-9._=@,+-]", "_", label)
    return os.path.join(workdir, "runs", dataset, safe, f"s{seed}")


class SweepRecordError(ValueError):
    """``<workdir>/sweep.json`` exists but cannot be read as a sweep's record."""


def read_sweep_record(workdir: str) -> dict[str, Any]:
    """``<workdir>/sweep.json``: ``{"commands": [...]}``, with no commands where there is none.

    Raises:
      SweepRecordError: the file exists but is not JSON with a ``commands`` list (cut short, or
        edited by hand); the message names the file and what to do.
    """
    path = os.path.join(workdir, SWEEP_FILE)
    if not os.path.exists(path):
        return {"commands": []}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise SweepRecordError(
            f"{path} cannot be read ({getattr(e, 'strerror', None) or e}); repair it or move it "
            "away (it holds the commands the report quotes)"
        ) from e
    if not isinstance(data, dict) or not isinstance(data.get("commands"), list):
        raise SweepRecordError(
            f"{path} is not a sweep record (no 'commands' list); repair it or move it away"
        )
    return data


def read_json(path: str) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


@dataclasses.dataclass
class Run:
    """Everything the report needs from one run directory.

    Attributes:
      path: the run directory.
      dataset, pooler, pooler_kwargs, seed, num_epochs: from the run's config.
      status: ``done``, ``failed``, ``stopped``, ``interrupted``, ``incomplete`` (started, no
        summary), ``running``, ``damaged`` (done, but ``metrics.jsonl`` lacks epochs: left
        out of the table, listed with the runs not done), or ``not started`` (planned by a sweep
        command, e.g. one stopped before reaching it, and no run in its directory).
      error: the error message of a failed run, else ``""``.
      metrics: the ``metrics.jsonl`` rows.
      summary: ``summary.json`` (or ``{}``).
      pooler_params: ``pooler_params.json`` (or ``{}``).
      info: ``sweep_run.json`` (or ``{}``).
    """

    path: str
    dataset: str
    pooler: str
    pooler_kwargs: dict[str, Any]
    seed: int
    num_epochs: int
    status: str
    error: str
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    pooler_params: dict[str, Any]
    info: dict[str, Any]

    @property
    def label(self) -> str:
        return pooler_label(self.pooler, self.pooler_kwargs)

    @property
    def done(self) -> bool:
        return self.status == "done" and bool(self.metrics)

    @property
    def final(self) -> dict[str, Any]:
        return self.metrics[-1] if self.metrics else {}

    def timing_rows(self) -> list[dict[str, Any]]:
        """Epochs used for speed: those whose time does not include starting the step
        (``includes_startup``: the first epoch of each process that trained the run), or all of
        them when no other is left."""
        rows = [r for r, startup in zip(self.metrics, self._startup(), strict=True) if not startup]
        return rows or self.metrics

    def _startup(self) -> list[bool]:
        return [bool(r["includes_startup"]) for r in self.metrics]

    @property
    def compile_seconds(self) -> float:
        """Training seconds of the epochs that compiled the step beyond the steady time per
        epoch (0 when no epoch ran without compiling: nothing to compare with)."""
        steady = self.seconds_per_epoch
        startup = [r for r, s in zip(self.metrics, self._startup(), strict=True) if s]
        if len(startup) == len(self.metrics):
            return 0.0
        return float(sum(max(r["train_seconds"] - steady, 0.0) for r in startup))

    @property
    def seconds_per_epoch(self) -> float:
        rows = self.timing_rows()
        return float(np.mean([r["train_seconds"] for r in rows])) if rows else math.nan

    @property
    def images_per_second(self) -> float:
        rows = self.timing_rows()
        return float(np.mean([r["images_per_second"] for r in rows])) if rows else math.nan


def load_run(path: str) -> Run | None:
    """Reads one run directory; None when it holds neither a config nor a sweep record."""
    info = read_json(os.path.join(path, RUN_FILE)) or {}
    config = info.get("config") or read_json(os.path.join(path, "config.json"))
    if not config:
        return None
    summary = read_json(os.path.join(path, "summary.json")) or {}
    completed = summary.get("epochs_completed")
    metrics = run_files.read_metrics(
        os.path.join(path, "metrics.jsonl"), math.inf if completed is None else completed
    )
    status = info.get("status") or ""
    error = info.get("error") or ""
    if status != "failed":
        # No summary: the sweep's record says whether the run is running or was interrupted
        # before training wrote one (e.g. while the dataset was read).
        status = summary.get("status") or (
            status if status in ("running", "interrupted") else "incomplete"
        )
        if status == "failed" and not error:
            error = "non-finite training loss"
    if status == "done" and completed is not None and len(metrics) != completed:  # torn file
        status = "damaged"
        error = f"metrics.jsonl holds {len(metrics)} of its {completed} epochs"
    return Run(
        path=path,
        dataset=config["dataset"],
        pooler=config["pooler"],
        pooler_kwargs=dict(config.get("pooler_kwargs") or {}),
        seed=int(config["seed"]),
        num_epochs=int(config["num_epochs"]),
        status=status,
        error=error,
        metrics=metrics,
        summary=summary,
        pooler_params=read_json(os.path.join(path, "pooler_params.json")) or {},
        info=info,
    )


def _sort_key(run: Run) -> tuple:
    d = DATASET_ORDER.index(run.dataset) if run.dataset in DATASET_ORDER else len(DATASET_ORDER)
    p = POOLER_ORDER.index(run.pooler) if run.pooler in POOLER_ORDER else len(POOLER_ORDER)
    kwargs = tuple(
        (k, v if isinstance(v, int | float) else 0, str(v))
        for k, v in sorted(run.pooler_kwargs.items())
    )
    return (d, run.dataset, p, run.pooler, len(kwargs), kwargs, run.seed)


def planned_run(
    workdir: str,
    run_dir: str,
    *,
    dataset: str,
    pooler: str,
    pooler_kwargs: dict[str, Any],
    seed: int,
    num_epochs: int,
) -> dict[str, Any]:
    """What ``sweep.json`` keeps of one run a sweep command planned: enough to list it as not
    started when its directory never got a run."""
    return {
        "run_dir": os.path.relpath(run_dir, workdir),
        "dataset": dataset,
        "pooler": pooler,
        "pooler_kwargs": dict(pooler_kwargs),
        "seed": int(seed),
        "num_epochs": int(num_epochs),
    }


def _not_started(workdir: str, planned: dict[str, Any]) -> Run:
    return Run(
        path=os.path.join(workdir, planned["run_dir"]),
        dataset=planned["dataset"],
        pooler=planned["pooler"],
        pooler_kwargs=dict(planned["pooler_kwargs"]),
        seed=int(planned["seed"]),
        num_epochs=int(planned["num_epochs"]),
        status=NOT_STARTED,
        error="",
        metrics=[],
        summary={},
        pooler_params={},
        info={},
    )


def collect(workdir: str) -> list[Run]:
    """Every run under ``<workdir>/runs/<dataset>/<label>/s<seed>``, and every run a sweep
    command in ``sweep.json`` planned whose directory holds none (status ``not started``; the
    newest command's plan of it), in report order."""
    runs = []
    for path in sorted(glob.glob(os.path.join(workdir, "runs", "*", "*", "s*"))):
        if os.path.isdir(path):
            run = load_run(path)
            if run is not None:
                runs.append(run)
    found = {os.path.normpath(r.path) for r in runs}
    planned: dict[str, dict[str, Any]] = {}
    try:
        commands = read_sweep_record(workdir)["commands"]
    except SweepRecordError:  # the report says so (train.study.tables)
        commands = []
    for command in commands:
        for entry in command.get("runs", []):
            planned[os.path.normpath(os.path.join(workdir, entry["run_dir"]))] = entry
    runs += [_not_started(workdir, p) for path, p in planned.items() if path not in found]
    return sorted(runs, key=_sort_key)
