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
from collections.abc import Sequence
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
# How sweep.json and sweep_run.json write a moment (UTC).
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
# What makes the runs of one dataset one experiment, besides the pooler and the seed: runs that
# differ in any of these are never averaged or compared with each other (their own table).
SETUP_FIELDS = ("num_epochs", "learning_rate", "batch_size", "standardize")


def pooler_label(pooler: str, kwargs: dict[str, Any] | None) -> str:
    """``"tdgs"``, or ``"tdgs@T=0.5"`` for ``init_temperature=0.5`` (keys sorted).

    A float is written short (``:g``: ``T=1``, ``T=0.25``) where that reads back as the same
    number, else in full (``T=0.1234567``): two different values never share a label, so never a
    run directory.
    """
    if not kwargs:
        return pooler
    parts = []
    for key in sorted(kwargs):
        value = kwargs[key]
        text = _float_text(value) if isinstance(value, float) else json.dumps(value)
        parts.append(f"{KWARG_ALIASES.get(key, key)}={text.strip(chr(34))}")
    return f"{pooler}@{','.join(parts)}"


def _float_text(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


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
    for i, command in enumerate(data["commands"]):
        problem = _command_problem(command)
        if problem:
            raise SweepRecordError(
                f"{path} is not a sweep record: command {i + 1} {problem}; repair it or move it away"
            )
    return data


_COMMAND_KEYS = {"command": str, "time": str}
_PLANNED_KEYS = {
    "run_dir": str, "dataset": str, "pooler": str, "pooler_kwargs": dict, "seed": int,
    "num_epochs": int,
}  # fmt: skip


def _command_problem(command: Any) -> str:
    """What is wrong with one entry of ``sweep.json``'s ``commands``, or ``""``."""
    if not isinstance(command, dict):
        return "is not an object"
    for key, kind in _COMMAND_KEYS.items():
        if not isinstance(command.get(key), kind):
            return f"has no {kind.__name__} '{key}'"
    seconds = command.get("seconds")
    if seconds is not None and not (isinstance(seconds, int | float) and seconds >= 0):
        return f"has a wall time that is not a number of seconds ({seconds!r})"
    if not isinstance(command.get("runs", []), list):
        return "has a 'runs' that is not a list"
    for run in command.get("runs", []):
        if not isinstance(run, dict):
            return "plans a run that is not an object"
        for key, kind in _PLANNED_KEYS.items():
            if not isinstance(run.get(key), kind) or isinstance(run.get(key), bool):
                return f"plans a run without a {kind.__name__} '{key}'"
        if not isinstance(run.get("setup", {}), dict):
            return "plans a run whose 'setup' is not an object"
    return ""


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
      setup: the run's :data:`SETUP_FIELDS` values (those known: a run planned by an older sweep
        and never started has its epochs only).
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
    setup: dict[str, Any] = dataclasses.field(default_factory=dict)

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
    """Reads one run directory; None when it holds no readable config (``config.json``, or the
    one in the sweep's record)."""
    info = run_files.read_json(os.path.join(path, RUN_FILE)) or {}
    trained = run_files.read_json(os.path.join(path, "config.json"))
    planned = info.get("config") if isinstance(info.get("config"), dict) else None
    if trained and planned and run_files.changed_run_fields(trained, planned):
        info, planned = {}, None  # the record of another run, refused here: not this run's
    # The sweep's config is the newer one (e.g. more epochs), where it is readable.
    config = planned if _valid_config(planned) else trained
    if not _valid_config(config):
        return None
    summary = run_files.read_json(os.path.join(path, "summary.json")) or {}
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
        pooler_params=run_files.read_json(os.path.join(path, "pooler_params.json")) or {},
        info=info,
        setup={k: config[k] for k in SETUP_FIELDS if k in config},
    )


def _valid_config(config: Any) -> bool:
    """Whether ``config`` has the fields a report needs, with values of the right types."""
    if not isinstance(config, dict):
        return False
    checks = {
        "dataset": lambda v: isinstance(v, str),
        "pooler": lambda v: isinstance(v, str),
        "pooler_kwargs": lambda v: v is None or isinstance(v, dict),
        "seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "num_epochs": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    }
    return all(check(config.get(k)) for k, check in checks.items())


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
    setup: dict[str, Any],
) -> dict[str, Any]:
    """What ``sweep.json`` keeps of one run a sweep command planned: enough to list it as not
    started, in the table of its setup (:data:`SETUP_FIELDS`), when its directory never got a run."""
    return {
        "run_dir": os.path.relpath(run_dir, workdir),
        "dataset": dataset,
        "pooler": pooler,
        "pooler_kwargs": dict(pooler_kwargs),
        "seed": int(seed),
        "num_epochs": int(setup["num_epochs"]),
        "setup": {k: setup[k] for k in SETUP_FIELDS if k in setup},
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
        setup={**planned.get("setup", {}), "num_epochs": int(planned["num_epochs"])},
    )


def _order(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, int | float) else (1, 0, str(value))


def setup_groups(runs: list[Run]) -> list[tuple[dict[str, Any], list[Run]]]:
    """``runs`` (of one dataset) split by setup (:data:`SETUP_FIELDS`), each group in the runs'
    order, groups by epochs and then the other fields.  A run whose setup is partly unknown (see
    :attr:`Run.setup`) joins the first group it agrees with, else forms its own."""
    groups: list[tuple[dict[str, Any], list[Run]]] = []
    complete = [r for r in runs if len(r.setup) == len(SETUP_FIELDS)]
    for run in complete + [r for r in runs if len(r.setup) < len(SETUP_FIELDS)]:
        for setup, members in groups:
            if all(setup.get(k) == v for k, v in run.setup.items()):
                members.append(run)
                break
        else:
            groups.append((dict(run.setup), [run]))
    position = {id(r): i for i, r in enumerate(runs)}
    for _, members in groups:
        members.sort(key=lambda r: position[id(r)])
    return sorted(groups, key=lambda g: tuple(_order(g[0].get(k)) for k in SETUP_FIELDS))


def describe_setup(setup: dict[str, Any], fields: Sequence[str]) -> str:
    """``"10 epochs, learning rate 0.01, batch size 32"``: the epochs and the other ``fields``."""
    epochs = setup.get("num_epochs")
    parts = [f"{epochs} epoch{'s' * (epochs != 1)}" if epochs is not None else "epochs unknown"]
    for field in fields:
        if field != "num_epochs":
            parts.append(f"{field.replace('_', ' ')} {setup.get(field, 'unknown')}")
    return ", ".join(parts)


def varying_fields(setups: Sequence[dict[str, Any]]) -> list[str]:
    """The :data:`SETUP_FIELDS` whose value is not the same in all ``setups``."""
    return [k for k in SETUP_FIELDS if len({json.dumps(s.get(k)) for s in setups}) > 1]


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
