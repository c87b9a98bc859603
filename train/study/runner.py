"""Running a sweep's plans one after another in this process, recording each outcome in the run's
``sweep_run.json`` and the commands in ``<workdir>/sweep.json``, then writing the report.

The training core (and so JAX) is imported only when a run starts.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one sweep per workdir at a time there
    fcntl = None

from train import cli
from train.core import interrupts, run_files
from train.study import run_records, tables
from train.study.plan import Plan

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- running


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime(run_records.TIME_FORMAT)


def environment() -> dict[str, Any]:
    """Device kind, device count, library versions and the code's git commit (where the code is
    a git checkout), recorded with every run."""
    import flax
    import jax
    import optax
    import tensorflow_datasets as tfds

    import jaxpool

    env = {
        "device_kind": jax.devices()[0].device_kind,
        "num_devices": jax.device_count(),
        "versions": {
            "jax": jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "tensorflow_datasets": tfds.__version__,
            "jaxpool": jaxpool.__version__,
        },
    }
    commit = code_commit()
    if commit:
        env["commit"] = commit
    return env


def code_commit() -> str | None:
    """The git commit of the checkout this code runs from, with `` (modified)`` where tracked
    files have uncommitted changes, or None outside a checkout of jaxpool (e.g. installed from a
    wheel, also into a folder inside some other git repository)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", root, *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")  # None, or another repository holding an install
    if not top or not os.path.samefile(top, root):
        return None
    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    modified = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit} (modified)" if modified else commit


def group_plans(plans: Sequence[Plan], together: bool) -> list[list[Plan]]:
    """The plans that need running, in order, as groups to train in one program.

    With ``together``, the seeds of one (dataset, pooler label) whose configs are otherwise equal
    and whose run directories are at the same position (the same newest checkpoint step, or
    none) form one group; otherwise, and for every other plan, a group is one plan.
    """
    groups: dict[tuple, list[Plan]] = {}
    for plan in plans:
        if not plan.runs:
            continue
        key: tuple = (id(plan),)
        if together:
            config = {k: v for k, v in plan.config.to_dict().items() if k != "seed"}
            position = max(run_files.checkpoint_steps(plan.run_dir), default=0)
            key = (json.dumps(config, sort_keys=True, default=str), position)
        groups.setdefault(key, []).append(plan)
    return list(groups.values())


def run_group(
    plans: Sequence[Plan],
    env: dict[str, Any],
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    datasets: dict[tuple[str, str | None], Any] | None = None,
) -> list[dict[str, Any]]:
    """Trains (or resumes) a group of planned runs (:func:`group_plans`) and records each
    outcome in its ``sweep_run.json``: one plan as ``loop.train_and_evaluate``, several as
    ``loop.train_seed_group`` (one program for their seeds).  A run that cannot start (its run
    directory cannot be made, another process trains it, or its own workdir checks refuse it)
    fails alone; the others train.  Each run directory is held
    (:func:`run_files.locked_run_dir`) from before its record is written until its end.

    ``on_epoch``: called with ``(index of the plan, its epoch's metrics)``.
    ``datasets``: datasets already read by this process, by ``(name, data_dir)``; the group's is
    read and added when missing, so a sweep decodes each dataset once (seconds per run); one that
    could not be read is kept as its error (a failed download is not tried again per run).

    Returns:
      The records, one per plan: ``status`` (``done``/``failed``/``stopped``, or ``in use``
      for a run another process holds, whose record is left to it) and ``error`` among others.

    Raises:
      loop.Interrupted, KeyboardInterrupt: after recording ``interrupted``; the sweep stops.
      run_files.WriteError: after recording the runs as failed: a checkpoint or run file could
        not be written (a full disk), which the next runs would meet too; the sweep stops.
      OSError: a record could not be written.
    """
    with contextlib.ExitStack() as held:  # each run's directory, while this process trains it
        records: list[Any] = []
        for plan in plans:
            try:
                held.enter_context(run_files.locked_run_dir(plan.run_dir))
                records.append(_start_record(plan, env, len(plans)))
            except run_files.RunDirInUse as e:  # its record is the other process's
                records.append(_in_use(plan, e))
            except OSError as e:  # e.g. the run directory's path is a file: nowhere to record it
                logger.error("%s failed: cannot use %s: %s", plan.entry.name(), plan.run_dir, e)
                records.append(_unrecorded(plan, e))
        failed = {i for i, record in enumerate(records) if record["status"] != "running"}
        if failed:
            return _without(failed, plans, records, env, on_epoch, datasets)
        return _train_group(plans, records, env, on_epoch, datasets)


def _train_group(plans, records, env, on_epoch, datasets) -> list[dict[str, Any]]:
    """:func:`run_group` once every run's directory is held and its record started."""
    from train.core import input_pipeline, loop

    t0 = time.perf_counter()
    refused: loop.RunRefused | None = None
    one_by_one = False
    try:
        config = plans[0].config
        data = None
        if datasets is not None:
            source = (config.dataset, config.data_dir)
            if source not in datasets:
                try:
                    datasets[source] = input_pipeline.load(*source)
                except input_pipeline.DataError as e:  # the next runs fail alike, at once
                    datasets[source] = e
            data = datasets[source]
            if isinstance(data, input_pipeline.DataError):
                # anew: re-raising the kept one would grow its traceback with every run
                raise input_pipeline.DataError(str(data))
        if len(plans) == 1:
            show = None if on_epoch is None else (lambda row: on_epoch(0, row))
            try:
                loop.train_and_evaluate(config, plans[0].run_dir, on_epoch=show, data=data)
                outcomes: list[Any] = [None]
            except loop.NonFiniteLossError as e:
                outcomes = [e]
        else:
            try:
                outcomes = loop.train_seed_group(
                    [p.config for p in plans],
                    [p.run_dir for p in plans],
                    on_epoch=on_epoch,
                    data=data,
                )
            except loop.RunRefused as e:  # that run fails; the others go on without it
                refused = e
            except loop.PositionMismatch as e:
                logger.warning("%s; training them one by one", e)
                one_by_one = True
    except (loop.Interrupted, KeyboardInterrupt):
        _record_interrupted(plans, records)
        raise
    except Exception as e:  # a failure of the group is every run's; the sweep goes on
        if interrupts.received():  # a Ctrl-C that a library turned into another error
            _record_interrupted(plans, records)
            raise KeyboardInterrupt from e
        outcomes = [e] * len(plans)
    if one_by_one:
        return [run_group([p], env, _one_of(on_epoch, i), datasets)[0] for i, p in enumerate(plans)]
    if refused is not None:
        index = refused.index
        _record_failure(plans[index], records[index], refused.error)
        records[index].update(finished=_now(), seconds=0.0)
        _write_record(plans[index], records[index])
        return _without({index}, plans, records, env, on_epoch, datasets)
    # A group's wall time shared equally among its runs, as in their metrics.jsonl.
    seconds = round((time.perf_counter() - t0) / len(plans), 3)
    for plan, record, outcome in zip(plans, records, outcomes, strict=True):
        if isinstance(outcome, Exception):
            _record_failure(plan, record, outcome)
        else:
            summary = run_files.read_json(os.path.join(plan.run_dir, "summary.json")) or {}
            record["status"] = summary.get("status", "done")
        record.update(finished=_now(), seconds=seconds)
        _write_record(plan, record)
    for outcome in outcomes:
        if isinstance(outcome, run_files.WriteError):  # a full disk: the next runs would fail too
            raise outcome
    return records


def _one_of(on_epoch, index: int):
    """``on_epoch`` of a group, for its run ``index`` trained alone."""
    return None if on_epoch is None else (lambda _, row: on_epoch(index, row))


def _without(failed: set[int], plans, records, env, on_epoch, datasets) -> list[dict[str, Any]]:
    """``records``, the failed runs' as they are and the others' from training those as a group
    of their own (:func:`run_group`)."""
    others = [i for i in range(len(plans)) if i not in failed]
    report = None if on_epoch is None else (lambda i, row: on_epoch(others[i], row))
    if others:
        rest = run_group([plans[i] for i in others], env, report, datasets)
        for i, record in zip(others, rest, strict=True):
            records[i] = record
    return records


def _in_use(plan: Plan, e: Any) -> dict[str, Any]:
    """The record of a run another process is training (not written: that one writes it)."""
    why = f"{e.holder} is training it; rerun the sweep once that has ended"
    return _unwritten(plan, "in use", why, e)


def _unrecorded(plan: Plan, e: OSError) -> dict[str, Any]:
    """The record of a run whose directory could not be made (it is not written anywhere)."""
    return _unwritten(plan, "failed", f"cannot use {plan.run_dir}: {e.strerror or e}", e)


def _unwritten(plan: Plan, status: str, error: str, e: BaseException) -> dict[str, Any]:
    return {
        "label": plan.entry.label,
        "seed": plan.entry.seed,
        "status": status,
        "error": error,
        "error_type": type(e).__name__,
    }


def _start_record(plan: Plan, env: dict[str, Any], group_size: int) -> dict[str, Any]:
    entry = plan.entry
    os.makedirs(plan.run_dir, exist_ok=True)
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
        "seeds_in_program": group_size,
        "started": _now(),
        **env,
    }
    _write_record(plan, record)
    return record


def _write_record(plan: Plan, record: dict[str, Any]) -> None:
    run_files.write_json(os.path.join(plan.run_dir, run_records.RUN_FILE), record)


def _record_interrupted(plans: Sequence[Plan], records: Sequence[dict[str, Any]]) -> None:
    for plan, record in zip(plans, records, strict=True):
        record.update(status="interrupted", finished=_now())
        _write_record(plan, record)


def _record_failure(plan: Plan, record: dict[str, Any], e: Exception) -> None:
    """Logs a run's failure (expected ones in one line, anything else with its traceback: a bug
    to report) and records it."""
    from train.core import input_pipeline, loop, run_config

    expected = (
        loop.NonFiniteLossError,
        run_config.ConfigError,
        input_pipeline.DataError,
        run_files.WriteError,
    )
    logger.error(
        "%s failed: %s",
        plan.entry.name(),
        cli.first_line(e),
        exc_info=None if isinstance(e, expected) else e,  # called after its except block ended
    )
    record.update(
        status="failed",
        error=f"{type(e).__name__}: {cli.first_line(e)}" if str(e).strip() else type(e).__name__,
        error_type=type(e).__name__,
    )


def _group_printer(group: Sequence[Plan]) -> Callable[[int, dict[str, Any]], None]:
    """Prints each epoch's line (:func:`train.cli.epoch_line`); in a group, after the run's seed."""
    num_epochs = group[0].config.num_epochs

    def on_epoch(index: int, row: dict[str, Any]) -> None:
        seed = f"seed {group[index].entry.seed}  " if len(group) > 1 else ""
        cli.out(f"      {seed}{cli.epoch_line(row, num_epochs, brief=True)}")

    return on_epoch


def record_command(workdir: str, command: str, plans: Sequence[Plan]) -> int:
    """Appends ``command`` and the runs it plans to ``<workdir>/sweep.json`` (the report quotes
    the command and lists planned runs it never started); returns its index.

    Raises:
      run_records.SweepRecordError: an unreadable ``sweep.json``, which is left as it is.
    """
    path = os.path.join(workdir, run_records.SWEEP_FILE)
    runs = [
        run_records.planned_run(
            workdir,
            p.run_dir,
            dataset=p.entry.dataset,
            pooler=p.entry.pooler,
            pooler_kwargs=p.entry.kwargs,
            seed=p.entry.seed,
            setup={k: p.config[k] for k in run_records.SETUP_FIELDS},
        )
        for p in plans
    ]
    os.makedirs(workdir, exist_ok=True)
    with _locked(workdir):
        data = run_records.read_sweep_record(workdir)
        data["commands"].append({"command": command, "time": _now(), "runs": runs})
        run_files.write_json(path, data)
    return len(data["commands"]) - 1


def record_command_time(workdir: str, index: int, seconds: float) -> None:
    """Adds the wall time of the command recorded at ``index`` (one that ran to its end)."""
    with _locked(workdir):
        try:
            data = run_records.read_sweep_record(workdir)
        except run_records.SweepRecordError:  # damaged since the command was recorded: left as is
            return
        if index < len(data["commands"]):
            data["commands"][index]["seconds"] = round(seconds, 1)
            run_files.write_json(os.path.join(workdir, run_records.SWEEP_FILE), data)


@contextlib.contextmanager
def _locked(workdir: str) -> Iterator[None]:
    """Holds ``<workdir>/sweep.json.lock`` (an advisory lock): two sweeps in one workdir, e.g.
    side by side with a core each, read and rewrite ``sweep.json`` one after the other."""
    if fcntl is None:
        yield
        return
    with open(os.path.join(workdir, run_records.SWEEP_FILE + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def sweep(
    plans: Sequence[Plan],
    workdir: str,
    *,
    verbose: bool = True,
    command: tuple[int, float] | None = None,
    seeds_together: bool = False,
) -> dict[str, list[Plan]]:
    """Runs every plan that needs running, then writes the report.

    ``seeds_together``: train the seeds of one pooler and dataset as one program
    (:func:`group_plans`), each still in its own run directory.

    ``command``: the index of this sweep's command in ``sweep.json`` and its
    ``time.perf_counter()`` start; when every plan has run, its wall time is recorded there
    before the report is written.

    Returns:
      ``{"done": [...], "failed": [...], "skipped": [...]}`` (skipped = already done before).

    Raises:
      loop.Interrupted, KeyboardInterrupt, run_files.WriteError, OSError: the report is written
        first (where it can be).
    """
    outcome: dict[str, list[Plan]] = {"done": [], "failed": [], "skipped": []}
    env = environment()
    datasets: dict[tuple[str, str | None], Any] = {}  # each dataset decoded once per sweep
    for p in plans:
        if p.action == "done":
            outcome["skipped"].append(p)
        elif not p.runs:
            outcome["failed"].append(p)
            cli.out(f"  skip {p.entry.name()}: {p.action}: {p.detail}")
    groups = group_plans(plans, seeds_together)
    total = sum(len(g) for g in groups)
    try:
        started = 0
        for group in groups:
            for i, p in enumerate(group, start=started + 1):
                detail = f" ({p.detail})" if p.detail else ""
                cli.out(f"[{i}/{total}] {p.entry.name()}: {p.action}{detail}")
            if len(group) > 1:
                cli.out(f"      {len(group)} seeds in one program")
            started += len(group)
            t0 = time.perf_counter()
            on_epoch = _group_printer(group) if verbose else None
            records = run_group(group, env, on_epoch=on_epoch, datasets=datasets)
            seconds = time.perf_counter() - t0
            for p, record in zip(group, records, strict=True):
                name = f" {p.entry.name()}" if len(group) > 1 else ""
                if record["status"] == "done":
                    outcome["done"].append(p)
                    summary = run_files.read_json(os.path.join(p.run_dir, "summary.json")) or {}
                    acc = (summary.get("final") or {}).get("test_accuracy", math.nan)
                    cli.out(f"      done{name}: test accuracy {acc:.2%} ({seconds:.1f} s)")
                else:
                    outcome["failed"].append(p)
                    cli.out(f"      {record['status']}{name}: {record['error']}")
        if command is not None:
            record_command_time(workdir, command[0], time.perf_counter() - command[1])
    finally:
        tables.write(workdir)
    return outcome
