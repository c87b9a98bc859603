r"""The study report, rebuilt from a sweep's run directories alone (no training).

Run::

  python -m train.report runs/sweep

A sweep workdir (see :mod:`train.sweep`) holds one directory per run,
``<workdir>/runs/<dataset>/<pooler label>/s<seed>/``, each with ``train_lib``'s files
(``config.json``, ``metrics.jsonl``, ``summary.json``, ``pooler_params.json``, ``checkpoints/``)
and the sweep's ``sweep_run.json`` (status, error, device kind, library versions). The pooler label is
the registry name, followed by ``@key=value,...`` when the run has pooler keyword arguments
(``init_temperature`` is written ``T``: ``tdgs@T=0.5``).

Written to ``<workdir>/report/``:

- ``results.csv``: one row per run (:data:`CSV_FIELDS`), sorted by dataset, pooler, seed. Accuracies
  are fractions in [0, 1], numbers are written at full precision; the file depends on the run
  directories only, so rebuilding it gives the same bytes.
- ``report.md``: per dataset one row per pooler label: final test accuracy mean ± std over seeds,
  the paired difference to max pooling with its 95% t-interval, seconds per epoch relative to max,
  extra parameters; the command, versions, device kind and dates; the plots.
- ``accuracy_<dataset>.png``, ``train_loss_<dataset>.png``: curves over epochs, band = ±1 std.
- ``mixing_weights_<dataset>.png``, ``tdgs_temperature_<dataset>.png``, ``gates_<dataset>.png``: the
  learned pooler parameters after the last epoch (only for datasets that ran those poolers).
- ``tdgs_init_temperature.png``: test accuracy against TDGS's initial temperature (when swept).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import glob
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from train import plots as report_plots
from train import stats
from train.sweep_runs import Run, collect, read_json

BASELINE = "max"
CSV_FIELDS = (
    "dataset",
    "pooler",
    "pooler_name",
    "pooler_kwargs",
    "seed",
    "epochs",
    "num_epochs",
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
        "final_test_accuracy": num(final.get("test_accuracy")),
        "best_test_accuracy": num(max((r["test_accuracy"] for r in run.metrics), default=None)),
        "best_epoch": num(
            max(run.metrics, key=lambda r: r["test_accuracy"])["epoch"] if run.metrics else None
        ),
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


def write_csv(runs: Sequence[Run], workdir: str, path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for run in runs:
            writer.writerow(csv_row(run, workdir))


# --------------------------------------------------------------------------- per-pooler table


@dataclasses.dataclass
class Row:
    """One pooler label of one dataset in ``report.md``.

    Attributes:
      label: pooler label.
      n_done, n_total: finished runs and all runs of this label.
      accuracy: ``(mean, std)`` of the final test accuracy over finished seeds.
      best_accuracy: ``(mean, std)`` of the best-epoch test accuracy.
      diff: paired difference to max pooling over the seeds both finished (None for max itself
        or without max runs).
      seconds: mean train seconds per epoch; ``relative_seconds`` the ratio to max pooling's.
      images_per_second: mean training throughput.
      params, extra_params: whole-model parameter count and its difference to max pooling's.
      best: marked best (see :func:`table`).
    """

    label: str
    n_done: int
    n_total: int
    accuracy: tuple[float, float]
    best_accuracy: tuple[float, float]
    diff: stats.Interval | None
    seconds: float
    relative_seconds: float
    images_per_second: float
    params: int | None
    extra_params: int | None
    best: bool = False


def table(runs: Sequence[Run]) -> list[Row]:
    """The per-pooler rows of one dataset's runs (in label order).

    The best pooler is the label with the highest mean final test accuracy; it is marked only when
    its paired 95% interval against max pooling excludes zero (for max itself: when every other
    label's interval lies below zero).
    """
    labels: dict[str, list[Run]] = {}
    for run in runs:
        labels.setdefault(run.label, []).append(run)
    base = {r.seed: r for r in labels.get(BASELINE, []) if r.done}
    base_seconds = np.mean([r.seconds_per_epoch for r in base.values()]) if base else math.nan
    base_params = next((r.summary.get("param_count") for r in base.values()), None)
    rows = []
    for label, group in labels.items():
        done = [r for r in group if r.done]
        acc = [r.final["test_accuracy"] for r in done]
        best_acc = [max(m["test_accuracy"] for m in r.metrics) for r in done]
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
                best_accuracy=stats.mean_std(best_acc),
                diff=diff,
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
        top = max(scored, key=lambda r: r.accuracy[0])
        if top.label == BASELINE:
            others = [r.diff for r in rows if r.diff is not None]
            top.best = bool(others) and all(d.high < 0 for d in others)
        else:
            top.best = top.diff is not None and top.diff.low > 0
    return rows


def _pct(mean: float, std: float | None = None) -> str:
    if math.isnan(mean):
        return "–"
    if std is None or math.isnan(std):
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _diff_text(diff: stats.Interval | None) -> str:
    if diff is None:
        return "–"
    if math.isnan(diff.low):
        return f"{100 * diff.mean:+.2f} (n={diff.n}, no CI)"
    return f"{100 * diff.mean:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}]"


def table_markdown(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| pooler | runs done | test accuracy % (mean ± std) | Δ vs max, pp [95% CI] "
        "| best-epoch accuracy % | s/epoch (× max) | images/s | parameters (extra vs max) |",
        "|---|---|---|---|---|---|---|---|",
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
            f"| {name} | {r.n_done}/{r.n_total} | {_pct(*r.accuracy)} | {_diff_text(r.diff)} "
            f"| {_pct(*r.best_accuracy)} | {secs} | {ips} | {params} |"
        )
    return lines


# --------------------------------------------------------------------------- report.md


def _provenance(runs: Sequence[Run], workdir: str) -> list[str]:
    sweep = read_json(os.path.join(workdir, "sweep.json")) or {}
    commands = [c["command"] for c in sweep.get("commands", [])]
    lines = ["## How these numbers were made", ""]
    if commands:
        lines.append("Sweep commands run in this workdir, oldest first:")
        lines.append("")
        lines.extend(f"    {c}" for c in commands)
    else:
        lines.append("Command: unknown (no sweep.json; runs made outside `train.sweep`).")
    lines.append("")
    versions = list(
        dict.fromkeys(json.dumps(r.info["versions"]) for r in runs if "versions" in r.info)
    )
    for v in versions:
        lines.append("- Versions: " + ", ".join(f"{k} {x}" for k, x in json.loads(v).items()))
    devices = sorted(
        {
            f"{r.info['device_kind']} × {r.info.get('num_devices', 1)}"
            for r in runs
            if r.info.get("device_kind")
        }
    )
    lines.append(f"- Device: {', '.join(devices) if devices else 'unknown'}")
    finished = sorted(r.info["finished"] for r in runs if r.info.get("finished"))
    if finished:
        lines.append(f"- Runs finished between {finished[0]} and {finished[-1]}")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(f"- Report written {now}; rebuild it with `python -m train.report {workdir}`")
    lines.append("")
    return lines


def markdown(runs: Sequence[Run], workdir: str, plots: dict[str, list[str]]) -> str:
    """The text of ``report.md``; ``plots`` maps a dataset (or ``""``) to its PNG file names."""
    lines = ["# jaxpool study: poolers compared with max pooling", ""]
    lines += [
        f"{len(runs)} runs, {sum(r.done for r in runs)} done. Test accuracy is measured after the "
        "last epoch; mean ± std (sample std) over seeds. Δ is the paired difference to max pooling "
        "over the seeds both finished, with a 95% Student-t interval (percentage points). "
        "★ marks the best mean accuracy only where its interval excludes zero. s/epoch is the "
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
        lines += table_markdown(table(subset))
        lines.append("")
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
    with open(md_path, "w") as f:
        f.write(markdown(runs, workdir, plots))
    return {
        "dir": out,
        "csv": csv_path,
        "markdown": md_path,
        "plots": [os.path.join(out, n) for names in plots.values() for n in names],
        "runs": len(runs),
    }


USAGE = "usage: python -m train.report WORKDIR  (a train.sweep workdir)"


def main(argv: list[str] | None = None) -> int:
    """``python -m train.report WORKDIR``: exit 0, or 2 with one line on stderr."""
    args = (sys.argv if argv is None else argv)[1:]
    if args in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if len(args) != 1 or args[0].startswith("-"):
        print(f"error: expected one WORKDIR argument; {USAGE}", file=sys.stderr)
        return 2
    workdir = args[0]
    if not os.path.isdir(workdir):
        print(f"error: workdir {workdir} does not exist", file=sys.stderr)
        return 2
    if not collect(workdir):
        print(f"error: no run directories under {os.path.join(workdir, 'runs')}", file=sys.stderr)
        return 2
    written = write(workdir)
    print(f"report of {written['runs']} runs: {written['markdown']}, {written['csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
