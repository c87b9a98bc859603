r"""The study report, rebuilt from a sweep's run directories and ``sweep.json`` (no training).

Run::

  python -m train.report runs/sweep

A sweep workdir (see :mod:`train.sweep`) holds one directory per run,
``<workdir>/runs/<dataset>/<pooler label>/s<seed>/``, each with ``train.core.loop``'s files
(``config.json``, ``metrics.jsonl``, ``summary.json``, ``pooler_params.json``, ``checkpoints/``)
and the sweep's ``sweep_run.json`` (status, error, device kind, library versions). The pooler label is
the registry name, followed by ``@key=value,...`` when the run has pooler keyword arguments
(``init_temperature`` is written ``T``: ``tdgs@T=0.5``). ``<workdir>/sweep.json`` holds the sweep
commands, their wall times and the runs each planned (a planned run with no directory is reported
as not started).

Written to ``<workdir>/report/``:

- ``results.csv``: one row per run (:data:`CSV_FIELDS`), sorted by dataset, pooler, seed. Accuracies
  are fractions in [0, 1], numbers are written at full precision; the file depends on the run
  directories only, so rebuilding it gives the same bytes.
- ``report.md``: per dataset (and setup, where its runs have several: epochs, learning rate,
  batch size, standardization; runs of other setups are not averaged or compared) one row per
  pooler label: final test accuracy mean ± std over seeds
  and its 95% t-interval, the paired difference to max pooling with its 95% t-interval (none
  for fewer than 3 seeds or runs that have not converged, see :func:`converged`), the rise over
  the last two epochs, seconds per epoch relative to max, extra parameters; the commands with
  their wall times, the time spent training and compiling, versions, device kind and dates;
  the plots.
- ``accuracy_<dataset>.png``: test accuracy over epochs, band = ±1 std over seeds;
  ``curves_<dataset>.png``: test accuracy and loss beside training accuracy and loss.
- ``mixing_weights_<dataset>.png``, ``tdgs_temperature_<dataset>.png``, ``gates_<dataset>.png``: the
  learned pooler parameters after the last epoch (only for datasets that ran those poolers).
- ``tdgs_init_temperature.png``: test accuracy against TDGS's initial temperature (when swept).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import glob
import io
import json
import logging
import math
import os
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np

from train.core import run_files
from train.study import plots as report_plots
from train.study import stats
from train.study.run_records import (
    TIME_FORMAT,
    Run,
    SweepRecordError,
    collect,
    describe_setup,
    read_sweep_record,
    setup_groups,
    varying_fields,
)

logger = logging.getLogger(__name__)

BASELINE = "max"
# Fewer seeds give t-intervals too wide to read (n = 2: ±12.7 standard errors): none is printed.
MIN_SEEDS_FOR_INTERVAL = 3
CSV_FIELDS = (
    "dataset",
    "pooler",
    "pooler_name",
    "pooler_kwargs",
    "seed",
    "epochs",
    "num_epochs",
    "learning_rate",
    "batch_size",
    "standardize",
    "final_test_accuracy",
    "best_test_accuracy",
    "best_epoch",
    "final_test_loss",
    "final_train_loss",
    "train_seconds_per_epoch",
    "images_per_second",
    "param_count",
    "pooler_param_count",
    "status",
    "error",
    "run_dir",
)


# --------------------------------------------------------------------------- results.csv


def csv_row(run: Run, workdir: str) -> dict[str, Any]:
    """One ``results.csv`` row (numbers as Python floats/ints; missing values empty)."""
    final = run.final
    summary = run.summary
    best = best_epoch(run.metrics)

    def num(value):
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value

    return {
        "dataset": run.dataset,
        "pooler": run.label,
        "pooler_name": run.pooler,
        "pooler_kwargs": json.dumps(run.pooler_kwargs, sort_keys=True),
        "seed": run.seed,
        "epochs": len(run.metrics),
        "num_epochs": run.num_epochs,
        "learning_rate": num(run.setup.get("learning_rate")),
        "batch_size": num(run.setup.get("batch_size")),
        "standardize": num(run.setup.get("standardize")),
        "final_test_accuracy": num(final.get("test_accuracy")),
        "best_test_accuracy": num(best["test_accuracy"] if best else None),
        "best_epoch": num(best["epoch"] if best else None),
        "final_test_loss": num(final.get("test_loss")),
        "final_train_loss": num(final.get("train_loss")),
        "train_seconds_per_epoch": num(run.seconds_per_epoch),
        "images_per_second": num(run.images_per_second),
        "param_count": num(summary.get("param_count")),
        "pooler_param_count": num(summary.get("pooler_param_count")),
        "status": run.status,
        "error": run.error,
        "run_dir": os.path.relpath(run.path, workdir),
    }


def best_epoch(metrics: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch row with the highest test accuracy (the first of equal ones; a NaN accuracy is
    never the best), or None when no epoch has a number."""
    rows = [r for r in metrics if not math.isnan(r["test_accuracy"])]
    return max(rows, key=lambda r: r["test_accuracy"]) if rows else None


def write_csv(runs: Sequence[Run], workdir: str, path: str) -> None:
    """One row per run (:func:`csv_row`); written atomically (a full disk leaves the old file)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for run in runs:
        writer.writerow(csv_row(run, workdir))
    run_files.write_text(path, text.getvalue())


# --------------------------------------------------------------------------- per-pooler table


@dataclasses.dataclass
class Row:
    """One pooler label of one dataset in ``report.md``.

    Attributes:
      label: pooler label.
      n_done, n_total: finished runs and all runs of this label.
      accuracy: ``(mean, std)`` of the final test accuracy over finished seeds.
      accuracy_interval: the 95% t-interval of that mean (None without finished seeds).
      best_accuracy: ``(mean, std)`` of the best-epoch test accuracy.
      best_epochs: each finished seed's best epoch (1-based; the first of equal ones).
      diff: paired difference to max pooling over the seeds both finished (None for max itself
        or without max runs).
      late_rise: mean test accuracy after the last epoch minus two epochs before (one before
        for 2-epoch runs; ``nan`` for one epoch): see :func:`converged`.
      converged: :func:`converged` (None when it cannot be judged: one epoch).
      baseline_converged: the same for max pooling's runs (None without them).
      seconds: mean train seconds per epoch; ``relative_seconds`` the ratio to max pooling's.
      images_per_second: mean training throughput.
      params, extra_params: whole-model parameter count and its difference to max pooling's.
      best: marked best (see :func:`table`).
    """

    label: str
    n_done: int
    n_total: int
    accuracy: tuple[float, float]
    accuracy_interval: stats.Interval | None
    best_accuracy: tuple[float, float]
    best_epochs: list[int]
    diff: stats.Interval | None
    late_rise: float
    converged: bool | None
    baseline_converged: bool | None
    seconds: float
    relative_seconds: float
    images_per_second: float
    params: int | None
    extra_params: int | None
    best: bool = False

    @property
    def interval_readable(self) -> bool:
        """Whether :attr:`diff` answers "which pooler is better": enough pairs for an interval
        and both sides judged converged (an interval of runs still improving holds for this
        budget only; the table prints it marked "not converged"; one epoch cannot be judged)."""
        return (
            self.diff is not None
            and self.diff.n >= MIN_SEEDS_FOR_INTERVAL
            and not math.isnan(self.diff.low)
            and self.converged is True
            and self.baseline_converged is True
        )


def late_rise(done: Sequence[Run]) -> float:
    """Mean test accuracy after the last epoch ``E`` minus the mean after epoch ``E - 2`` (epoch
    1 for ``E = 2``; ``nan`` for ``E = 1``), over runs that finished ``E`` epochs."""
    epochs = min((len(r.metrics) for r in done), default=0)
    if epochs < 2:
        return math.nan
    earlier = max(epochs - 3, 0)
    rise = [
        r.metrics[epochs - 1]["test_accuracy"] - r.metrics[earlier]["test_accuracy"] for r in done
    ]
    return float(np.mean(rise))


def converged(done: Sequence[Run]) -> bool | None:
    """False when the mean test accuracy rose over the last two epochs (:func:`late_rise`) by
    more than the standard deviation of the final accuracy over seeds (any rise, with one seed):
    such runs are still improving and a comparison at the last epoch is premature.  None when
    it cannot be judged (no finished run, or one epoch)."""
    rise = late_rise(done)
    if math.isnan(rise):
        return None
    std = stats.mean_std([r.final["test_accuracy"] for r in done])[1]
    return bool(rise <= (0.0 if math.isnan(std) else std))


def table(runs: Sequence[Run]) -> list[Row]:
    """The per-pooler rows of one dataset's runs (in label order).

    The best pooler is the label with the highest mean final test accuracy; it is marked only when
    its paired 95% interval against max pooling can be read (:attr:`Row.interval_readable`) and
    excludes zero (for max itself: when every other label's interval can be read and lies below
    zero).
    """
    labels: dict[str, list[Run]] = {}
    for run in runs:
        labels.setdefault(run.label, []).append(run)
    base = {r.seed: r for r in labels.get(BASELINE, []) if r.done}
    base_converged = converged(list(base.values())) if base else None
    base_seconds = np.mean([r.seconds_per_epoch for r in base.values()]) if base else math.nan
    base_params = next((r.summary.get("param_count") for r in base.values()), None)
    rows = []
    for label, group in labels.items():
        done = [r for r in group if r.done]
        acc = [r.final["test_accuracy"] for r in done]
        best = [b for b in map(best_epoch, (r.metrics for r in done)) if b]
        best_acc = [b["test_accuracy"] for b in best]
        best_epochs = [b["epoch"] for b in best]
        diff = None
        if label != BASELINE:
            pairs = [
                (r.final["test_accuracy"], base[r.seed].final["test_accuracy"])
                for r in done
                if r.seed in base
            ]
            if pairs:
                a, b = zip(*pairs, strict=True)
                diff = stats.paired_difference(a, b)
        seconds = float(np.mean([r.seconds_per_epoch for r in done])) if done else math.nan
        params = next((r.summary.get("param_count") for r in group if r.summary), None)
        rows.append(
            Row(
                label=label,
                n_done=len(done),
                n_total=len(group),
                accuracy=stats.mean_std(acc),
                accuracy_interval=stats.mean_interval(acc) if acc else None,
                best_accuracy=stats.mean_std(best_acc),
                best_epochs=best_epochs,
                diff=diff,
                late_rise=late_rise(done),
                converged=converged(done),
                baseline_converged=base_converged,
                seconds=seconds,
                relative_seconds=seconds / base_seconds if base else math.nan,
                images_per_second=(
                    float(np.mean([r.images_per_second for r in done])) if done else math.nan
                ),
                params=params,
                extra_params=(
                    params - base_params if params is not None and base_params is not None else None
                ),
            )
        )
    scored = [r for r in rows if r.n_done and not math.isnan(r.accuracy[0])]
    if scored:
        high = max(r.accuracy[0] for r in scored)
        for top in (r for r in scored if r.accuracy[0] == high):  # labels tied at the top
            if top.label == BASELINE:
                others = [r for r in rows if r.label != BASELINE]
                top.best = bool(others) and all(
                    r.interval_readable and r.diff.high < 0 for r in others
                )
            else:
                top.best = top.interval_readable and top.diff.low > 0
    return rows


def _pct(mean: float, std: float | None = None) -> str:
    if math.isnan(mean):
        return "–"
    if std is None or math.isnan(std):
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _interval_text(interval: stats.Interval | None, signed: bool) -> str:
    if interval is None:
        return "–"
    if interval.n < MIN_SEEDS_FOR_INTERVAL:
        return f"n = {interval.n}: no interval"
    if math.isnan(interval.low) or math.isnan(interval.high):
        return "–"
    fmt = "+.2f" if signed else ".2f"
    return f"[{100 * interval.low:{fmt}}, {100 * interval.high:{fmt}}]"


def _diff_text(row: Row) -> str:
    diff = row.diff
    if diff is None or math.isnan(diff.mean):
        return "–"
    mean = f"{100 * diff.mean:+.2f}"
    if diff.n < MIN_SEEDS_FOR_INTERVAL:
        return f"{mean} ({_interval_text(diff, signed=True)})"
    unsettled = [
        name
        for name, ok in ((row.label, row.converged), (BASELINE, row.baseline_converged))
        if ok is False
    ]
    text = f"{mean} {_interval_text(diff, signed=True)}"
    return f"{text} (not converged: {', '.join(unsettled)})" if unsettled else text


def _epochs_text(epochs: Sequence[int]) -> str:
    return f" ({', '.join(map(str, epochs))})" if epochs else ""


def _rise_text(row: Row) -> str:
    if math.isnan(row.late_rise):
        return "–"
    text = f"{100 * row.late_rise:+.2f}"
    return f"{text} not converged" if row.converged is False else text


def table_markdown(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| pooler | runs done | test accuracy % (mean ± std) | 95% CI of the mean "
        "| Δ vs max, pp [95% CI] | rise over the last 2 epochs, pp "
        "| best-epoch accuracy % (best epochs) | s/epoch (× max) | images/s "
        "| parameters (extra vs max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = f"**{r.label}** ★" if r.best else r.label
        rel = "" if math.isnan(r.relative_seconds) else f" (×{r.relative_seconds:.2f})"
        secs = "–" if math.isnan(r.seconds) else f"{r.seconds:.2f}{rel}"
        ips = "–" if math.isnan(r.images_per_second) else f"{r.images_per_second:,.0f}"
        params = "–" if r.params is None else f"{r.params:,}"
        if r.extra_params is not None:
            params += f" ({r.extra_params:+,})"
        lines.append(
            f"| {name} | {r.n_done}/{r.n_total} | {_pct(*r.accuracy)} "
            f"| {_interval_text(r.accuracy_interval, signed=False)} | {_diff_text(r)} "
            f"| {_rise_text(r)} | {_pct(*r.best_accuracy)}{_epochs_text(r.best_epochs)} "
            f"| {secs} | {ips} | {params} |"
        )
    return lines


# --------------------------------------------------------------------------- report.md


def _provenance(runs: Sequence[Run], workdir: str) -> list[str]:
    lines = ["## How these numbers were made", ""]
    try:
        sweep = read_sweep_record(workdir)
    except SweepRecordError as e:
        logger.warning("%s", e)
        lines += [f"The sweep's record could not be read: {e}.", ""]
        sweep = {"commands": []}
    commands = [c["command"] for c in sweep["commands"]]
    if commands:
        lines.append("Sweep commands run in this workdir, oldest first:")
        lines.append("")
        lines.extend(f"    {c}" for c in commands)
        lines.append("")
        lines.extend(
            f"- started {c['time']}, "
            + (f"wall time {_duration(c['seconds'])}" if "seconds" in c else "wall time unknown")
            for c in sweep.get("commands", [])
        )
    else:
        lines.append("Command: unknown (no sweep.json; runs made outside `train.sweep`).")
    lines.append("")
    versions = list(
        dict.fromkeys(json.dumps(r.info["versions"]) for r in runs if "versions" in r.info)
    )
    for v in versions:
        lines.append("- Versions: " + ", ".join(f"{k} {x}" for k, x in json.loads(v).items()))
    commits = sorted({r.info["commit"] for r in runs if isinstance(r.info.get("commit"), str)})
    if commits:
        lines.append(f"- Code: git commit {', '.join(commits)}")
    devices = sorted(
        {
            f"{r.info['device_kind']} × {r.info.get('num_devices', 1)}"
            for r in runs
            if r.info.get("device_kind")
        }
    )
    # Per epoch where the rows say it (a run resumed on another machine or device count trained
    # on both; sweep_run.json holds its last command's device only).
    by_epochs: dict[str, int] = {}
    for r in runs:
        for row in r.metrics:
            if isinstance(row.get("device"), str):
                by_epochs[row["device"]] = by_epochs.get(row["device"], 0) + 1
    if len(by_epochs) > 1:
        epochs = sum(len(r.metrics) for r in runs)
        devices = [f"{d} ({n} of the runs' {epochs} epochs)" for d, n in sorted(by_epochs.items())]
    lines.append(f"- Device: {', '.join(devices) if devices else 'unknown'}")
    # Per epoch (metrics.jsonl), as a run may have trained some epochs in a group and some alone:
    # an epoch counts where it finished.  The run directories behind the published results
    # (docs/results) predate the key: each of their seeds trained alone.
    grouped = [sum(row.get("seeds_in_program", 1) > 1 for row in r.metrics) for r in runs]
    together = sum(
        1 for r, n in zip(runs, grouped, strict=True) if n or r.info.get("seeds_in_program", 1) > 1
    )
    if together:
        epochs = sum(len(r.metrics) for r in runs)
        lines.append(
            f"- {together} of {len(runs)} runs trained with other seeds in one program "
            f"(`--seeds-together`; {sum(grouped)} of the runs' {epochs} epochs); their s/epoch "
            "is the group's time divided among its seeds"
        )
    lines += _time_lines(runs, sweep.get("commands", []))
    finished = sorted(r.info["finished"] for r in runs if r.info.get("finished"))
    if finished:
        lines.append(f"- Runs finished between {finished[0]} and {finished[-1]}")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(
        f"- Report written {now}; rebuild it with `python -m train.report {shlex.quote(workdir)}`"
    )
    lines.append("")
    return lines


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _elapsed(commands: Sequence[dict[str, Any]]) -> float | None:
    """Seconds during which at least one of ``commands`` ran (each from its start ``time`` for its
    ``seconds``), or None when a start time cannot be read."""
    spans = []
    for c in commands:
        try:
            moment = datetime.datetime.strptime(c["time"], TIME_FORMAT)
            start = moment.replace(tzinfo=datetime.UTC).timestamp()
        except ValueError:
            return None
        spans.append((start, start + c["seconds"]))
    total, end = 0.0, -math.inf
    for start, stop in sorted(spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def _time_lines(runs: Sequence[Run], commands: Sequence[dict[str, Any]]) -> list[str]:
    """Total time of the sweep and the part of it spent compiling."""
    lines = []
    timed = [c for c in commands if "seconds" in c]
    if timed:
        summed = sum(c["seconds"] for c in timed)
        elapsed = _elapsed(timed)
        if elapsed is None or round(elapsed) >= round(summed):
            total = _duration(summed)
        else:  # commands that ran side by side count once
            total = f"{_duration(elapsed)} elapsed ({_duration(summed)} summed: they overlapped)"
        lines.append(
            f"- Wall time of the sweep commands: {total} "
            f"({len(timed)} of {len(commands)} commands timed; an interrupted one is not)"
        )
    done = [r for r in runs if r.done]
    epochs = [m for r in done for m in r.metrics]
    epoch_seconds = sum(m.get("epoch_seconds", 0.0) for m in epochs)
    compile_seconds = sum(r.compile_seconds for r in done)
    if epochs:
        lines.append(
            f"- Training and evaluation time of the {len(epochs)} epochs of finished runs: "
            f"{_duration(epoch_seconds)}, of which compiling ≈ {_duration(compile_seconds)} "
            "(the epochs that compiled the step, less the run's steady time per epoch)"
        )
    return lines


def learned_scalar_markdown(done: Sequence[Run]) -> list[str]:
    """A table of LP's learned power ``p`` and LIP's logit statistics per pool layer (mean ± std
    over seeds), for the poolers among ``done`` that have them; nothing otherwise."""
    lines = []
    for pooler, name, statistic, label in report_plots.LEARNED_SCALARS:
        group = [r for r in done if r.pooler == pooler and r.pooler_params]
        layers = report_plots.layer_names(group)
        if not group or not layers:
            continue
        cells = []
        for layer in layers:
            values = [report_plots.learned_scalar(r, layer, name, statistic) for r in group]
            values = [v for v in values if v is not None]
            std = f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else ""
            cells.append(f"{np.mean(values):.2f}{std}" if values else "–")
        lines += [
            f"{label} ({len(group)} runs):",
            "",
            "| " + " | ".join(layers) + " |",
            "|" + "---|" * len(layers),
            "| " + " | ".join(cells) + " |",
            "",
        ]
    return lines


def markdown(runs: Sequence[Run], workdir: str, plots: dict[str, list[str]]) -> str:
    """The text of ``report.md``; ``plots`` maps a dataset (or ``""``) to its PNG file names."""
    lines = ["# jaxpool study: poolers compared with max pooling", ""]
    lines += [
        f"{len(runs)} runs, {sum(r.done for r in runs)} done. Test accuracy is measured after the "
        "last epoch; mean ± std (sample std) over seeds, and the 95% Student-t interval of the "
        "mean. Δ is the paired difference to max pooling over the seeds both finished, with a "
        "95% Student-t interval (percentage points). No interval is printed for fewer than "
        f'{MIN_SEEDS_FOR_INTERVAL} seeds (too wide to read). A Δ is marked "not converged" '
        "when either side's mean test accuracy rose over the last two epochs by more than the "
        "seed std of its final accuracy (the rise column): it holds for this epoch budget, not "
        "for trained-out models. "
        "★ marks the best mean accuracy only where its interval excludes zero, with at least "
        f"{MIN_SEEDS_FOR_INTERVAL} seeds and both sides converged. "
        "s/epoch is the "
        "training time per epoch, without the epochs that include compiling the step (the "
        "first epoch of each process that trained the run, resumed runs included) when there "
        "are others; "
        "× max is the ratio to max pooling.",
        "",
    ]
    datasets = list(dict.fromkeys(r.dataset for r in runs))
    for dataset in datasets:
        subset = [r for r in runs if r.dataset == dataset]
        epochs = sorted({r.num_epochs for r in subset})
        lines += [f"## {dataset}", ""]
        n_seeds = len({r.seed for r in subset})
        lines.append(
            f"{n_seeds} seed{'s' * (n_seeds != 1)}, {'/'.join(map(str, epochs))} "
            f"epoch{'s' * (epochs != [1])} per run."
        )
        lines.append("")
        # Runs of other setups (epochs, learning rate, ...) are not averaged or compared with
        # each other, e.g. after an extended sweep or a sweep with another --learning-rate.
        groups = setup_groups(subset)
        varying = varying_fields([setup for setup, _ in groups])
        for setup, members in groups:
            if len(groups) > 1:
                lines += [f"### {describe_setup(setup, varying)} per run", ""]
            lines += table_markdown(table(members))
            lines.append("")
        lines += learned_scalar_markdown([r for r in subset if r.done])
        for name in plots.get(dataset, []):
            lines += [f"![{name}]({name})", ""]
    for name in plots.get("", []):
        lines += ["## TDGS initial temperature", "", f"![{name}]({name})", ""]
    problems = [r for r in runs if not r.done]
    if problems:
        lines += ["## Runs not done", "", "| run | status | epochs | error |", "|---|---|---|---|"]
        for r in problems:
            err = r.error.replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {os.path.relpath(r.path, workdir)} | {r.status} "
                f"| {len(r.metrics)}/{r.num_epochs} | {err} |"
            )
        lines.append("")
    lines += _provenance(runs, workdir)
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry points


def check_report_dir(workdir: str) -> None:
    """ValueError when ``<workdir>/report`` exists and is not a writable directory."""
    out = os.path.join(workdir, "report")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(
            f"{out} exists and is not a directory; move it away (the report goes there)"
        )
    if os.path.isdir(out) and not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"{out} is not writable (the report goes there)")


def write(workdir: str) -> dict[str, Any]:
    """Writes ``<workdir>/report/`` from the run directories (old PNGs there are removed first).

    Returns:
      ``{"dir": report dir, "csv": path, "markdown": path, "plots": [paths], "runs": count}``.
    """
    runs = collect(workdir)
    out = os.path.join(workdir, "report")
    os.makedirs(out, exist_ok=True)
    for old in glob.glob(os.path.join(out, "*.png")):
        os.remove(old)
    csv_path = os.path.join(out, "results.csv")
    write_csv(runs, workdir, csv_path)
    plots = report_plots.draw_all(runs, out, BASELINE)
    md_path = os.path.join(out, "report.md")
    run_files.write_text(md_path, markdown(runs, workdir, plots))
    return {
        "dir": out,
        "csv": csv_path,
        "markdown": md_path,
        "plots": [os.path.join(out, n) for names in plots.values() for n in names],
        "runs": len(runs),
    }
