"""The report's plots (matplotlib, PNG): curves over epochs, learned pooler parameters, TDGS's
initial-temperature curve. Each function draws one figure from :class:`train.study.run_records.Run` objects;
:func:`draw_all` draws every plot that has data. See :mod:`train.report` for the file names.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from train.study import stats
from train.study.run_records import (
    TDGS_DEFAULT_INIT_TEMPERATURE,
    Run,
    describe_setup,
    setup_groups,
    varying_fields,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def _draw_curves(ax, runs: Sequence[Run], key: str, ylabel: str, title: str) -> None:
    """One line per pooler label over epochs (mean over seeds), band = ±1 std over seeds; with
    one epoch, one point per label with its ±1 std error bar."""
    from matplotlib.ticker import MaxNLocator

    scale = 100.0 if key.endswith("accuracy") else 1.0
    groups = _by_label(runs)
    if max(len(r.metrics) for r in runs) == 1:
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
        title = title.replace("vs epoch", "after epoch 1").replace("band", "bar")
    else:
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
            ax.plot(
                epochs_a, means_a, marker="o", ms=3, color=color, label=f"{label} (n={len(group)})"
            )
            ax.fill_between(epochs_a, means_a - stds_a, means_a + stds_a, color=color, alpha=0.2)
            if n_epochs == 1:  # a band of one point is invisible: show it as an error bar
                ax.errorbar(epochs_a, means_a, yerr=stds_a, color=color, capsize=4, ls="none")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncols=2 if len(groups) > 6 else 1)


def plot_curves(runs: Sequence[Run], key: str, ylabel: str, title: str, path: str) -> None:
    """One metric over epochs, one line per pooler label (see :func:`_draw_curves`)."""
    fig, axes = _figure()
    _draw_curves(axes[0, 0], runs, key, ylabel, title)
    fig.savefig(path, dpi=110)


# (metrics key, axis label, panel title) of the four learning-curve panels.
CURVE_PANELS = (
    ("test_accuracy", "test accuracy (%)", "test accuracy vs epoch"),
    ("test_loss", "test loss (mean cross-entropy, nats)", "test loss vs epoch"),
    ("train_accuracy", "training accuracy (%)", "training accuracy vs epoch"),
    ("train_loss", "training loss (mean cross-entropy, nats)", "training loss vs epoch"),
)


def plot_curve_panels(runs: Sequence[Run], title: str, path: str) -> None:
    """Test accuracy and loss beside training accuracy and loss (2 x 2 panels of
    :func:`_draw_curves`); training figures are the means over each epoch's steps."""
    fig, axes = _figure(ncols=2, nrows=2)
    for ax, (key, ylabel, panel_title) in zip(axes.flat, CURVE_PANELS, strict=True):
        _draw_curves(ax, runs, key, ylabel, panel_title)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def layer_names(runs: Sequence[Run]) -> list[str]:
    """The pool layers named in the runs' ``pooler_params.json``, in order."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.pooler_params.get("layers", {})))
    return list(names)


def _param(run: Run, layer: str, name: str) -> dict[str, Any] | None:
    return run.pooler_params.get("layers", {}).get(layer, {}).get(name)


def plot_mixing_weights(runs: Sequence[Run], title: str, path: str) -> None:
    """Mixed pooling's ``s = sigmoid(alpha)`` per channel, one panel per pool layer."""
    layers = layer_names(runs)
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


def plot_tdgs_temperatures(runs: Sequence[Run], title: str, path: str) -> Figure:
    """Heat maps of TDGS's effective temperature per output position, averaged over channels:
    one row per (label, seed), one column per pool layer, one colour scale per layer (shared by
    its rows, so panels of a layer compare); a 1x1 map is written as its number.  Returns the
    saved figure."""
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    layers = layer_names(runs)
    groups = _by_label(runs)
    rows = [
        (label, run)
        for label, group in groups.items()
        for run in sorted(group, key=lambda r: r.seed)
    ]
    maps = {}
    for label, run in rows:
        for layer in layers:
            t = _param(run, layer, "temperature")
            if t:
                maps[label, run.seed, layer] = np.atleast_2d(
                    np.asarray(t.get("map", [[t["mean"]]]), np.float64)
                )
    norms = {}
    for layer in layers:
        values = [m for (_, _, name), m in maps.items() if name == layer]
        if values:
            norms[layer] = Normalize(min(v.min() for v in values), max(v.max() for v in values))
    fig, axes = _figure(ncols=len(layers), nrows=len(rows), width=3.6, height=2.9)
    images = {}
    for ax_row, (label, run) in zip(axes, rows, strict=True):
        for ax, layer in zip(ax_row, layers, strict=True):
            grid = maps.get((label, run.seed, layer))
            if grid is None:
                ax.set_axis_off()
                continue
            ax.set_title(f"{label} s{run.seed}, {layer} ({grid.shape[0]}×{grid.shape[1]})")
            if grid.size == 1:
                ax.text(0.5, 0.5, f"{grid.item():.3f}", ha="center", va="center", fontsize=16)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            images[layer] = ax.imshow(
                grid, cmap="viridis", norm=norms[layer], interpolation="nearest"
            )
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.set_xlabel("output column")
            ax.set_ylabel("output row")
    for col, layer in enumerate(layers):
        if layer in images:  # one colour bar per layer, beside its column
            fig.colorbar(images[layer], ax=list(axes[:, col]), label=f"{layer} temperature")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return fig


# (pooler, parameter entry in pooler_params.json, statistic, axis label) of the panels below.
LEARNED_SCALARS = (
    ("lp", "p", "mean", "LP power p (1 = average, large = max)"),
    (
        "lip",
        "logits",
        "channel_std_mean",
        "LIP logit spread: std over positions, mean over channels",
    ),
)


def learned_scalar(run: Run, layer: str, name: str, statistic: str) -> float | None:
    """One statistic of a learned parameter (or of LIP's logits) of one pool layer of a run."""
    entry = _param(run, layer, name)
    return None if not entry or statistic not in entry else float(entry[statistic])


def plot_learned_scalars(runs: Sequence[Run], title: str, path: str) -> None:
    """LP's learned power and LIP's logit spread per pool layer (mean ± std over seeds), one
    panel per pooler that has runs."""
    panels = [spec for spec in LEARNED_SCALARS if any(r.pooler == spec[0] for r in runs)]
    fig, axes = _figure(ncols=len(panels), width=6.5)
    for ax, (pooler, name, statistic, ylabel) in zip(axes[0], panels, strict=True):
        group = [r for r in runs if r.pooler == pooler]
        layers = layer_names(group)
        values = [
            [v for v in (learned_scalar(r, layer, name, statistic) for r in group) if v is not None]
            for layer in layers
        ]
        means = [float(np.mean(v)) if v else np.nan for v in values]
        stds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]
        ax.bar(layers, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.7)
        if pooler == "lp":
            ax.axhline(3.0, ls=":", color="gray", label="initial value 3")
            ax.legend(fontsize="small")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{pooler} (n = {len(group)} runs)")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def plot_gates(runs: Sequence[Run], title: str, path: str) -> None:
    """Gate statistics of gated and tree pooling per layer (grouped bars, one bar per label)."""
    layers = layer_names(runs)
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
    """Finished TDGS runs of the initial-temperature study: those whose pooler kwargs set only
    ``init_temperature``, and on the datasets that have any, the plain ``tdgs`` runs (the
    default temperature, see :func:`init_temperature`)."""
    tdgs = [r for r in runs if r.done and r.pooler == "tdgs"]
    studied = {r.dataset for r in tdgs if set(r.pooler_kwargs) == {"init_temperature"}}
    # One run per (dataset, temperature, seed): tdgs and tdgs@T=1 are the same model (both
    # exist where an older sweep, or two sweeps, trained both).
    unique: dict[tuple, Run] = {}
    for r in tdgs:
        if r.dataset in studied and set(r.pooler_kwargs) <= {"init_temperature"}:
            unique.setdefault((r.dataset, init_temperature(r), r.seed), r)
    return list(unique.values())


def init_temperature(run: Run) -> float:
    """A TDGS run's ``init_temperature`` (TDGS's default when its kwargs do not set it)."""
    return float(run.pooler_kwargs.get("init_temperature", TDGS_DEFAULT_INIT_TEMPERATURE))


def plot_init_temperature(runs: Sequence[Run], path: str, baseline: str) -> None:
    """Final test accuracy against TDGS's initial temperature, one panel per dataset.

    A dashed line marks the mean of the ``baseline`` pooler label on the same dataset.
    """
    tdgs = init_temperature_runs(runs)
    datasets = list(dict.fromkeys(r.dataset for r in tdgs))
    fig, axes = _figure(ncols=len(datasets), width=7.0)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        by_t: dict[float, list[float]] = {}
        tdgs_d = [r for r in tdgs if r.dataset == dataset]
        for run in tdgs_d:
            by_t.setdefault(init_temperature(run), []).append(run.final["test_accuracy"])
        temps = sorted(by_t)
        ms = [stats.mean_std(by_t[t]) for t in temps]
        mean = np.array([100 * m for m, _ in ms])
        std = np.array([0.0 if math.isnan(s) else 100 * s for _, s in ms])
        ax.errorbar(temps, mean, yerr=std, marker="o", capsize=4, label="tdgs (mean ± std)")
        base = [
            r.final["test_accuracy"]
            for r in runs
            if r.done and r.dataset == dataset and r.label == baseline
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


def draw_all(runs: Sequence[Run], out: str, baseline: str) -> dict[str, list[str]]:
    """Draws every plot that has data into ``out``; returns dataset -> file names ("" for
    cross-dataset plots).

    Where a dataset's runs have several setups (:data:`run_records.SETUP_FIELDS`), its plots show
    the setup with the most finished runs, and their titles say which: runs of other setups are
    not averaged together.
    """
    plots: dict[str, list[str]] = {}
    shown: list[Run] = []
    for dataset in dict.fromkeys(r.dataset for r in runs):
        groups = setup_groups([r for r in runs if r.dataset == dataset and r.done])
        if not groups:
            continue
        setup, done = max(reversed(groups), key=lambda g: len(g[1]))  # ties: the longer budget
        shown += done
        scope = ""
        if len(groups) > 1:
            varying = varying_fields([g[0] for g in groups])
            scope = f" [runs of {describe_setup(setup, varying)} only]"
        after = f"after {max(len(r.metrics) for r in done)} epoch(s)"
        mixed = [r for r in done if r.pooler == "mixed" and r.pooler_params]
        tdgs = [r for r in done if r.pooler == "tdgs" and r.pooler_params]
        gates = [r for r in done if r.pooler in ("gated", "tree") and r.pooler_params]
        learned = [r for r in done if r.pooler in ("lp", "lip") and r.pooler_params]
        jobs = [
            (
                f"accuracy_{dataset}.png",
                plot_curves,
                (done, "test_accuracy", "test accuracy (%)"),
                f"{dataset}: test accuracy vs epoch (band = ±1 std over seeds)",
            ),
            (
                f"curves_{dataset}.png",
                plot_curve_panels,
                (done,),
                f"{dataset}: learning curves (line: mean, band: ±1 std over seeds)",
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
                    f"{dataset}: TDGS effective temperature relu(temperature) + eps per output "
                    f"position {after},\nmean over channels (initially 1.1 on average with the "
                    "default init_temperature 1)",
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
        if learned:
            jobs.append(
                (
                    f"learned_scalars_{dataset}.png",
                    plot_learned_scalars,
                    (learned,),
                    f"{dataset}: learned by LP and LIP {after}\n(bars: mean, whiskers: ±1 std "
                    "over seeds)",
                )
            )
        for name, fn, args, title in jobs:
            fn(*args, title + scope, os.path.join(out, name))
        plots[dataset] = [name for name, *_ in jobs]
    if init_temperature_runs(shown):
        name = "tdgs_init_temperature.png"
        plot_init_temperature(shown, os.path.join(out, name), baseline)
        plots[""] = [name]
    return plots
