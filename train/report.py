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
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from train import stats

DATASET_ORDER = ("mnist", "cifar10", "cifar100", "digits")
POOLER_ORDER = ("max", "avg", "mixed", "gated", "tree", "stochastic", "s3", "tdgs")
BASELINE = "max"
# Short names of pooler keyword arguments in labels.
KWARG_ALIASES = {"init_temperature": "T"}
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
RUN_FILE = "sweep_run.json"  # written by train.sweep into every run directory


# --------------------------------------------------------------------------- run directories


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


def read_json(path: str) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a torn last line is skipped)."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except OSError:
        return []
    return rows


@dataclasses.dataclass
class Run:
    """Everything the report needs from one run directory.

    Attributes:
      path: the run directory.
      dataset, pooler, pooler_kwargs, seed, num_epochs: from the run's config.
      status: ``done``, ``failed``, ``stopped``, ``interrupted``, ``incomplete`` (started, no
        summary) or ``running``.
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
        """Epochs used for speed: all but the first (it includes compilation) when there are more."""
        return self.metrics[1:] if len(self.metrics) > 1 else self.metrics

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
    metrics = read_metrics(os.path.join(path, "metrics.jsonl"))
    if summary.get("epochs_completed") is not None:
        metrics = metrics[: summary["epochs_completed"]]
    status = info.get("status") or ""
    error = info.get("error") or ""
    if status != "failed":
        status = summary.get("status") or ("running" if status == "running" else "incomplete")
        if status == "failed" and not error:
            error = "non-finite training loss"
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


def collect(workdir: str) -> list[Run]:
    """Every run under ``<workdir>/runs/<dataset>/<label>/s<seed>``, in report order."""
    runs = []
    for path in sorted(glob.glob(os.path.join(workdir, "runs", "*", "*", "s*"))):
        if os.path.isdir(path):
            run = load_run(path)
            if run is not None:
                runs.append(run)
    return sorted(runs, key=_sort_key)


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
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
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
        "training time per epoch, without the first epoch (compilation) when there are more; "
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


# --------------------------------------------------------------------------- plots


def _figure(ncols: int = 1, nrows: int = 1, width: float = 7.0, height: float = 4.5):
    # Figure without pyplot: no global state, no GUI backend, safe in any process.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _by_label(runs: Sequence[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return groups


def _mean_std_rows(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    stacked = np.stack([np.asarray(a, np.float64) for a in arrays])
    std = stacked.std(axis=0, ddof=1) if len(arrays) > 1 else np.zeros(stacked.shape[1:])
    return stacked.mean(axis=0), std


def plot_curves(runs: Sequence[Run], key: str, ylabel: str, title: str, path: str) -> None:
    """One line per pooler label over epochs (mean over seeds), band = ±1 std over seeds."""
    from matplotlib.ticker import MaxNLocator

    scale = 100.0 if key.endswith("accuracy") else 1.0
    fig, axes = _figure()
    ax = axes[0, 0]
    groups = _by_label(runs)
    if max(len(r.metrics) for r in runs) == 1:
        # One epoch has no curve: one point per pooler with its ±1 std error bar.
        for x, (color, (label, group)) in enumerate(
            zip(_colors(len(groups)), groups.items(), strict=True)
        ):
            mean, std = stats.mean_std([r.metrics[0][key] for r in group])
            std = 0.0 if math.isnan(std) else std
            ax.errorbar(
                [x],
                [scale * mean],
                yerr=[scale * std],
                marker="o",
                capsize=4,
                color=color,
                label=f"{label} (n={len(group)})",
            )
        ax.set_xticks(range(len(groups)), list(groups), rotation=30, ha="right")
        ax.set_xlabel("pooler (1 epoch only: no curve)")
        ax.set_ylabel(ylabel)
        ax.set_title(title.replace("vs epoch", "after epoch 1").replace("band", "bar"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncols=2 if len(groups) > 6 else 1)
        fig.savefig(path, dpi=110)
        return
    for color, (label, group) in zip(_colors(len(groups)), groups.items(), strict=True):
        n_epochs = max(len(r.metrics) for r in group)
        epochs, means, stds = [], [], []
        for e in range(n_epochs):
            values = [r.metrics[e][key] for r in group if len(r.metrics) > e]
            mean, std = stats.mean_std(values)
            epochs.append(e + 1)
            means.append(scale * mean)
            stds.append(0.0 if math.isnan(std) else scale * std)
        epochs_a, means_a, stds_a = np.array(epochs), np.array(means), np.array(stds)
        ax.plot(epochs_a, means_a, marker="o", ms=3, color=color, label=f"{label} (n={len(group)})")
        ax.fill_between(epochs_a, means_a - stds_a, means_a + stds_a, color=color, alpha=0.2)
        if n_epochs == 1:  # a band of one point is invisible: show it as an error bar
            ax.errorbar(epochs_a, means_a, yerr=stds_a, color=color, capsize=4, ls="none")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncols=2 if len(groups) > 6 else 1)
    fig.savefig(path, dpi=110)


def _layers(runs: Sequence[Run]) -> list[str]:
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.pooler_params.get("layers", {})))
    return list(names)


def _param(run: Run, layer: str, name: str) -> dict[str, Any] | None:
    return run.pooler_params.get("layers", {}).get(layer, {}).get(name)


def plot_mixing_weights(runs: Sequence[Run], title: str, path: str) -> None:
    """Mixed pooling's ``s = sigmoid(alpha)`` per channel, one panel per pool layer."""
    layers = _layers(runs)
    fig, axes = _figure(ncols=len(layers), width=5.0)
    groups = _by_label(runs)
    colors = _colors(len(groups))
    for ax, layer in zip(axes[0], layers, strict=True):
        for color, (label, group) in zip(colors, groups.items(), strict=True):
            arrays = [
                np.atleast_1d(p["mixing_weight_s"])
                for p in (_param(r, layer, "alpha") for r in group)
                if p
            ]
            if not arrays:
                continue
            mean, std = _mean_std_rows(arrays)
            x = np.arange(mean.size)
            ax.plot(x, mean, marker=".", color=color, label=f"{label} (n={len(arrays)})")
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2)
        ax.axhline(0.5, ls=":", color="gray", label="initial value 0.5")
        ax.set_xlabel("channel index")
        ax.set_ylabel("mixing weight s = σ(alpha) (1 = max, 0 = average)")
        ax.set_title(layer)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def plot_tdgs_temperatures(runs: Sequence[Run], title: str, path: str) -> None:
    """Heat maps of TDGS's effective temperature per output position (rows: labels, cols: layers)."""
    from matplotlib.ticker import MaxNLocator

    layers = _layers(runs)
    groups = _by_label(runs)
    fig, axes = _figure(ncols=len(layers), nrows=len(groups), width=4.0, height=3.4)
    for row, (label, group) in zip(axes, groups.items(), strict=True):
        for ax, layer in zip(row, layers, strict=True):
            maps = []
            for run in group:
                t = _param(run, layer, "temperature")
                if t:
                    maps.append(np.asarray(t.get("map", [[t["mean"]]]), np.float64))
            if not maps:
                ax.set_axis_off()
                continue
            mean = np.mean(np.stack(maps), axis=0)
            image = ax.imshow(mean, cmap="viridis", interpolation="nearest")
            fig.colorbar(image, ax=ax, label="effective temperature")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(
                f"{label}, {layer} ({mean.shape[0]}×{mean.shape[1]}), n={len(maps)}",
                fontsize="medium",
            )
            ax.set_xlabel("output column")
            ax.set_ylabel("output row")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def plot_gates(runs: Sequence[Run], title: str, path: str) -> None:
    """Gate statistics of gated and tree pooling per layer (grouped bars, one bar per label)."""
    layers = _layers(runs)
    groups = _by_label(runs)
    colors = _colors(len(groups))
    fig, axes = _figure(ncols=2, width=6.0)
    width = 0.8 / max(len(groups), 1)
    x = np.arange(len(layers))
    ax_kernel, ax_bias = axes[0]
    for i, (color, (label, group)) in enumerate(zip(colors, groups.items(), strict=True)):
        offset = (i - (len(groups) - 1) / 2) * width
        kernel_mean, kernel_std, bias = [], [], []
        for layer in layers:
            ks = [_param(r, layer, "gate_kernel") for r in group]
            ks = [k for k in ks if k]
            kernel_mean.append(np.mean([k["mean"] for k in ks]) if ks else np.nan)
            kernel_std.append(np.mean([k["std"] for k in ks]) if ks else np.nan)
            bs = [_param(r, layer, "gate_bias") for r in group]
            bias.append(
                np.mean([np.mean(np.atleast_1d(b["sigmoid"])) for b in bs if b])
                if any(bs)
                else np.nan
            )
        ax_kernel.bar(
            x + offset, kernel_mean, width, yerr=kernel_std, capsize=3, color=color, label=label
        )
        if not np.all(np.isnan(bias)):
            ax_bias.bar(x + offset, bias, width, color=color, label=label)
    ax_kernel.set_ylabel("gate kernel weight (bar: mean, whisker: ±1 std over weights)")
    ax_kernel.set_title("gate kernel w (gate = σ(w·R + b)), mean over seeds")
    ax_bias.axhline(0.5, ls=":", color="gray", label="initial value 0.5")
    ax_bias.set_ylim(0, 1)
    ax_bias.set_ylabel("σ(gate bias), mean over channels and seeds")
    ax_bias.set_title("gate bias as a weight on max (1 = max, 0 = average)")
    for ax in (ax_kernel, ax_bias):
        ax.set_xticks(x, layers)
        ax.set_xlabel("pool layer")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def init_temperature_runs(runs: Sequence[Run]) -> list[Run]:
    """Finished TDGS runs whose pooler kwargs set ``init_temperature``."""
    return [
        r for r in runs if r.done and r.pooler == "tdgs" and "init_temperature" in r.pooler_kwargs
    ]


def plot_init_temperature(runs: Sequence[Run], path: str) -> None:
    """Final test accuracy against TDGS's initial temperature, one panel per dataset."""
    tdgs = init_temperature_runs(runs)
    datasets = list(dict.fromkeys(r.dataset for r in tdgs))
    fig, axes = _figure(ncols=len(datasets), width=7.0)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        by_t: dict[float, list[float]] = {}
        tdgs_d = [r for r in tdgs if r.dataset == dataset]
        for run in tdgs_d:
            t = float(run.pooler_kwargs["init_temperature"])
            by_t.setdefault(t, []).append(run.final["test_accuracy"])
        temps = sorted(by_t)
        ms = [stats.mean_std(by_t[t]) for t in temps]
        mean = np.array([100 * m for m, _ in ms])
        std = np.array([0.0 if math.isnan(s) else 100 * s for _, s in ms])
        ax.errorbar(temps, mean, yerr=std, marker="o", capsize=4, label="tdgs (mean ± std)")
        base = [
            r.final["test_accuracy"]
            for r in runs
            if r.done and r.dataset == dataset and r.label == BASELINE
        ]
        if base:
            ax.axhline(100 * np.mean(base), ls="--", color="gray", label="max pooling (mean)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(temps, [f"{t:g}" for t in temps])
        ax.set_xlabel("initial temperature T (init_temperature, log scale)")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(f"{dataset} ({len(tdgs_d)} runs)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("TDGS: final test accuracy vs initial temperature (error bars: ±1 std over seeds)")
    fig.savefig(path, dpi=110)


def _plots(runs: Sequence[Run], out: str) -> dict[str, list[str]]:
    """Draws every plot that has data; returns dataset -> file names ("" for cross-dataset)."""
    plots: dict[str, list[str]] = {}
    for dataset in dict.fromkeys(r.dataset for r in runs):
        done = [r for r in runs if r.dataset == dataset and r.done]
        if not done:
            continue
        after = f"after {max(len(r.metrics) for r in done)} epoch(s)"
        mixed = [r for r in done if r.pooler == "mixed" and r.pooler_params]
        tdgs = [r for r in done if r.pooler == "tdgs" and r.pooler_params]
        gates = [r for r in done if r.pooler in ("gated", "tree") and r.pooler_params]
        jobs = [
            (
                f"accuracy_{dataset}.png",
                plot_curves,
                (done, "test_accuracy", "test accuracy (%)"),
                f"{dataset}: test accuracy vs epoch (band = ±1 std over seeds)",
            ),
            (
                f"train_loss_{dataset}.png",
                plot_curves,
                (done, "train_loss", "training loss (mean cross-entropy, nats)"),
                f"{dataset}: training loss vs epoch (band = ±1 std over seeds)",
            ),
        ]
        if mixed:
            jobs.append(
                (
                    f"mixing_weights_{dataset}.png",
                    plot_mixing_weights,
                    (mixed,),
                    f"{dataset}: mixed pooling, learned mixing weight per channel {after} "
                    "(line: mean, band: ±1 std over seeds)",
                )
            )
        if tdgs:
            jobs.append(
                (
                    f"tdgs_temperature_{dataset}.png",
                    plot_tdgs_temperatures,
                    (tdgs,),
                    f"{dataset}: TDGS effective temperature relu(t) + 0.1 per output position "
                    f"{after}, averaged over channels and seeds",
                )
            )
        if gates:
            jobs.append(
                (
                    f"gates_{dataset}.png",
                    plot_gates,
                    (gates,),
                    f"{dataset}: gate statistics of gated and tree pooling {after}",
                )
            )
        for name, fn, args, title in jobs:
            fn(*args, title, os.path.join(out, name))
        plots[dataset] = [name for name, *_ in jobs]
    if init_temperature_runs(runs):
        name = "tdgs_init_temperature.png"
        plot_init_temperature(runs, os.path.join(out, name))
        plots[""] = [name]
    return plots


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
    plots = _plots(runs, out)
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
