"""Planning a sweep: its runs (:class:`Entry`), each run's config, and what the sweep does with
each one (:class:`Plan`: skip it as done or failed, resume it from a checkpoint, or start it).

:mod:`train.sweep` parses the command line into these and runs the plans; the rules for a rerun are
in its docstring.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

from train import cli
from train.core import run_files
from train.study import run_records


@dataclasses.dataclass(frozen=True)
class Entry:
    """One run of the sweep.

    Attributes:
      dataset: dataset name.
      pooler: registry name.
      pooler_kwargs: keyword arguments for ``jaxpool.create`` as sorted ``(key, value)`` pairs.
      seed: the run's seed.
    """

    dataset: str
    pooler: str
    pooler_kwargs: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.pooler_kwargs)

    @property
    def label(self) -> str:
        return run_records.pooler_label(self.pooler, self.kwargs)

    def name(self) -> str:
        return f"{self.dataset}/{self.label}/s{self.seed}"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the sweep will do with one entry.

    Attributes:
      entry: the run.
      config: its full config.
      run_dir: its workdir.
      action: ``done`` (skip), ``failed`` (skip; non-finite loss before), ``conflict`` (the
        directory holds a run with other run-defining fields and a checkpoint or a finished
        epoch; skipped and counted as failed; one with neither is started over as ``new``),
        ``damaged`` (finished, but its ``metrics.jsonl`` lacks epochs; skipped and counted as
        failed),
        ``resume`` (from a checkpoint), ``new`` (from scratch), ``retry`` (failed before with an
        error that may be transient).
      detail: a human-readable reason.
    """

    entry: Entry
    config: Any
    run_dir: str
    action: str
    detail: str

    @property
    def runs(self) -> bool:
        return self.action in ("resume", "new", "retry")


def _split(text: str, flag: str) -> list[str]:
    """The comma-separated items of ``text``; an empty one (``"digits,"``) is refused, as
    ``--poolers`` refuses it."""
    items = [t.strip() for t in text.split(",")]
    if "" in items:
        raise cli.UsageError(f"{flag}: an empty item in {text!r}")
    return items


def _refuse_repeats(items: Sequence[str], values: Sequence[Any], flag: str) -> None:
    """A value given twice is refused, as ``--poolers`` refuses a name given twice."""
    pairs = enumerate(zip(items, values, strict=True))
    repeated = [item for i, (item, value) in pairs if value in values[:i]]
    if repeated:
        raise cli.UsageError(f"{flag}: {', '.join(repeated)} listed twice")


def parse_datasets(text: str) -> list[str]:
    from train.core import input_pipeline

    names = _split(text, "--datasets")
    unknown = [n for n in names if n not in input_pipeline.DATASETS]
    if unknown:
        raise cli.UsageError(
            f"unknown dataset(s) {', '.join(unknown)} in --datasets; choose from: "
            f"{', '.join(input_pipeline.DATASETS)}"
        )
    _refuse_repeats(names, names, "--datasets")
    return names


def parse_temperatures(text: str | None) -> list[float]:
    if text is None:
        return []
    if not text.strip():
        raise cli.UsageError("--tdgs-init-temperatures is empty")
    values = []
    for item in _split(text, "--tdgs-init-temperatures"):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise cli.UsageError(
                f"--tdgs-init-temperatures needs positive numbers separated by commas, got {item!r}"
            )
        values.append(value)
    _refuse_repeats(_split(text, "--tdgs-init-temperatures"), values, "--tdgs-init-temperatures")
    return values


def entries(
    poolers: Sequence[str],
    datasets: Sequence[str],
    seeds: int,
    temperatures: Sequence[float] = (),
) -> list[Entry]:
    """Every run, dataset by dataset, seed by seed (all poolers of seed 0 finish first).

    A temperature equal to TDGS's default is not run again when plain ``tdgs`` is among the
    poolers: that run is the same model, and the report uses it for that temperature.
    """
    variants = [(p, ()) for p in poolers]
    variants += [
        ("tdgs", (("init_temperature", float(t)),))
        for t in temperatures
        if not ("tdgs" in poolers and float(t) == run_records.TDGS_DEFAULT_INIT_TEMPERATURE)
    ]
    return [
        Entry(dataset, pooler, kwargs, seed)
        for dataset in datasets
        for seed in range(seeds)
        for pooler, kwargs in variants
    ]


def make_config(
    entry: Entry,
    *,
    epochs: int | None = None,
    data_dir: str | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
):
    """``configs/<dataset>.py`` with the entry's pooler, kwargs and seed and the given overrides."""
    config = cli.bundled_config(entry.dataset)
    config.pooler = entry.pooler
    config.pooler_kwargs = entry.kwargs
    config.seed = entry.seed
    overrides = {
        "num_epochs": epochs,
        "data_dir": data_dir,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
    }
    for field, value in overrides.items():
        if value is not None:
            config[field] = value
    return config


def plan_entry(entry: Entry, config, workdir: str, *, retry_failed: bool = False) -> Plan:
    """Decides whether ``entry`` is done, resumes, starts, or is skipped (the rules are in
    :mod:`train.sweep`'s docstring)."""
    path = run_records.run_dir(workdir, entry.dataset, entry.label, entry.seed)

    def plan(action: str, detail: str) -> Plan:
        return Plan(entry, config, path, action, detail)

    old_config = run_files.read_json(os.path.join(path, "config.json"))
    steps = run_files.checkpoint_steps(path)
    diff = run_files.changed_run_fields(old_config, config) if old_config else []
    if diff and run_files.has_results(path):
        return plan(
            "conflict",
            f"{path} holds a run with different {', '.join(diff)}; delete it or use another "
            "--workdir",
        )
    if diff:  # nothing to keep there: start over with these settings, as train.main does
        return plan("new", f"starts over with other {', '.join(diff)}: no checkpoint")
    summary = run_files.read_json(os.path.join(path, "summary.json")) or {}
    completed = summary.get("epochs_completed")
    completed = completed if isinstance(completed, int) else 0
    metrics = run_files.read_metrics(os.path.join(path, "metrics.jsonl"), math.inf)
    trained = max(completed, len(metrics))
    if trained > config.num_epochs and run_files.has_results(path):  # as train.main refuses it
        return plan(
            "conflict",
            f"{path} holds a run trained for {trained} epochs, more than --epochs "
            f"{config.num_epochs}; ask for {trained} or more, or use another --workdir",
        )
    info = run_files.read_json(os.path.join(path, run_records.RUN_FILE)) or {}
    final = summary.get("final") if isinstance(summary.get("final"), dict) else {}
    if (
        old_config
        and summary.get("status") == "done"
        and summary.get("num_epochs") == config.num_epochs
        # Without checkpoints (deleted to save space) its metrics are what is left to keep.
        and (final.get("step") in steps if steps else bool(metrics))
    ):
        if len(metrics) != completed:
            return plan(
                "damaged",
                f"{path} finished, but its metrics.jsonl holds {len(metrics)} of its {completed} "
                "epochs; delete the directory to train the run again",
            )
        acc = metrics[-1]["test_accuracy"]
        kept = "" if steps else "; checkpoints deleted"
        return plan("done", f"{completed} epochs, test accuracy {acc:.2%}{kept}")
    if info.get("status") == "failed":
        if info.get("error_type") == "NonFiniteLossError" and not retry_failed:
            return plan("failed", f"{info.get('error', '')} (--retry-failed to rerun)")
    if metrics and not steps and run_files.stopped_saving_first_checkpoint(path):
        return plan("new", "starts over: stopped while its first checkpoint was written")
    if metrics and not steps:  # as train.main refuses it: training anew would overwrite them
        return plan(
            "conflict",
            f"{path} holds {len(metrics)} finished epoch(s) but no checkpoint to continue them "
            "from; delete it to train the run again",
        )
    if info.get("status") == "failed":
        if not steps:
            return plan("retry", f"failed before: {info.get('error', '')}")
    if steps:
        if summary.get("status") != "done":
            why = "unfinished"
        elif summary.get("num_epochs") != config.num_epochs:
            why = f"extends {summary.get('num_epochs')} to {config.num_epochs} epochs"
        else:
            why = "final checkpoint missing"
        return plan("resume", f"{why}; from checkpoint step {steps[-1]}")
    return plan("new", "starts over: no checkpoint" if old_config else "")


def describe(plans: Sequence[Plan]) -> list[str]:
    """The ``--dry-run`` listing: one line per run, then a count."""
    width = max(len(p.entry.name()) for p in plans)
    lines = [f"  {p.action:<8} {p.entry.name():<{width}}  {p.detail}".rstrip() for p in plans]
    n_run = sum(p.runs for p in plans)
    lines.append(f"would run {n_run} of {len(plans)} runs ({len(plans) - n_run} done or skipped)")
    return lines
