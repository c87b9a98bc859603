r"""The study: every pooler × dataset × seed as a normal training run, then the report.

Examples::

  python -m train.sweep --poolers all --datasets mnist,cifar10,cifar100 --seeds 3 --epochs 10 \
      --workdir runs/sweep --data-dir ../shared/tfds
  python -m train.sweep --poolers max,tdgs --datasets digits --seeds 2 --epochs 1 --dry-run
  python -m train.sweep --poolers max --datasets mnist --tdgs-init-temperatures 0.25,0.5,1,2,4

Each run is ``train_lib.train_and_evaluate`` with ``configs/<dataset>.py`` and these overrides:
``pooler``, ``pooler_kwargs``, ``seed`` (0 .. ``--seeds``-1) and, when given, ``num_epochs``,
``batch_size``, ``learning_rate``, ``data_dir``. Its workdir is
``<workdir>/runs/<dataset>/<pooler label>/s<seed>`` (labels: :func:`train.sweep_runs.pooler_label`,
e.g. ``tdgs@T=0.5`` for ``--tdgs-init-temperatures``), and holds ``train_lib``'s files plus
``sweep_run.json`` (status, error, timings, device kind, library versions).

Rerunning the same command is cheap and safe:

- a run whose ``summary.json`` says ``done`` for the same configuration and whose final checkpoint
  exists is skipped;
- any other run with a checkpoint resumes from it (``train_lib`` restores the newest one), so an
  interrupted sweep, or a run whose final checkpoint was deleted, continues where it stopped;
- a run that failed on a non-finite loss is deterministic and is skipped unless
  ``--retry-failed``; a run that failed with any other error is tried again;
- a run directory holding other run-defining settings (learning rate, batch size, ...) is a
  conflict, skipped and reported, if it holds a checkpoint (without one it starts over), and so
  is a run trained for more epochs than ``--epochs``.

A failed run (non-finite loss or any exception) is recorded with its error and the sweep goes on.
At the end ``<workdir>/report/`` is rewritten from all run directories (see :mod:`train.report`)
and ``<workdir>/sweep.json`` keeps every command that ran in the workdir. Exit codes: 0 all runs
done, 1 some run failed, 2 bad flags (one line on stderr), 128+N stopped by signal N (rerun to
resume). Runs execute one after another in this process (compiled steps are reused across seeds).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from train import cli, report, run_files, sweep_plan, sweep_runs

# Own FlagValues: train.main's flags (--epochs, --workdir, ...) live in absl's global FLAGS, and both
# modules are imported in one process by the tests.
_FLAGS = flags.FlagValues()
_POOLERS = flags.DEFINE_string(
    "poolers", "all", "Comma-separated pooler names, or 'all'.", flag_values=_FLAGS
)
_DATASETS = flags.DEFINE_string(
    "datasets", "mnist", "Comma-separated: mnist, cifar10, cifar100, digits.", flag_values=_FLAGS
)
_SEEDS = flags.DEFINE_integer("seeds", 3, "Number of seeds (0 .. N-1).", flag_values=_FLAGS)
_EPOCHS = flags.DEFINE_integer(
    "epochs", None, "Epochs per run (default: the dataset config's).", flag_values=_FLAGS
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/sweep", "Sweep directory.", flag_values=_FLAGS)
_DATA_DIR = flags.DEFINE_string(
    "data-dir", None, "TFDS data dir (array_record).", flag_values=_FLAGS
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch-size", None, "Global batch size (default: the config's).", flag_values=_FLAGS
)
_LEARNING_RATE = flags.DEFINE_float(
    "learning-rate", None, "Adam learning rate (default: the config's).", flag_values=_FLAGS
)
_TEMPERATURES = flags.DEFINE_string(
    "tdgs-init-temperatures",
    None,
    "Comma-separated TDGS init_temperature values; each adds a pooler 'tdgs@T=<value>'.",
    flag_values=_FLAGS,
)
_DRY_RUN = flags.DEFINE_bool(
    "dry-run", False, "List what would run and what is done; train nothing.", flag_values=_FLAGS
)
_RETRY_FAILED = flags.DEFINE_bool(
    "retry-failed", False, "Also rerun runs that failed on a non-finite loss.", flag_values=_FLAGS
)
_QUIET = flags.DEFINE_bool("quiet", False, "No per-epoch lines.", flag_values=_FLAGS)

EXIT_FAILED = cli.EXIT_FAILED
EXIT_USAGE = cli.EXIT_USAGE
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
    plan: sweep_plan.Plan,
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
      train_lib.Interrupted, KeyboardInterrupt: after recording ``interrupted``; the sweep stops.
    """
    from train import input_pipeline, run_config, train_lib

    entry = plan.entry
    os.makedirs(plan.run_dir, exist_ok=True)
    record_path = os.path.join(plan.run_dir, sweep_runs.RUN_FILE)
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
        train_lib.train_and_evaluate(plan.config, plan.run_dir, on_epoch=on_epoch, data=data)
        summary = sweep_runs.read_json(os.path.join(plan.run_dir, "summary.json")) or {}
        record["status"] = summary.get("status", "done")
    except (train_lib.Interrupted, KeyboardInterrupt):
        record.update(status="interrupted", finished=_now())
        run_files.write_json(record_path, record)
        raise
    except Exception as e:  # any failure of one run is recorded; the sweep goes on
        # Expected failures in one line; anything else with its traceback (a bug to report).
        expected = (train_lib.NonFiniteLossError, run_config.ConfigError, input_pipeline.DataError)
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


def _epoch_printer(num_epochs: int) -> Callable[[dict[str, Any]], None]:
    def show(row: dict[str, Any]) -> None:
        print(
            f"      epoch {row['epoch']}/{num_epochs}  train loss {row['train_loss']:.4f}  "
            f"test acc {row['test_accuracy']:.2%}  {row['epoch_seconds']:.1f}s",
            flush=True,
        )

    return show


def record_command(workdir: str, command: str) -> int:
    """Appends ``command`` to ``<workdir>/sweep.json`` (the report quotes it); returns its index."""
    path = os.path.join(workdir, SWEEP_FILE)
    data = sweep_runs.read_json(path) or {"commands": []}
    data["commands"].append({"command": command, "time": _now()})
    os.makedirs(workdir, exist_ok=True)
    run_files.write_json(path, data)
    return len(data["commands"]) - 1


def record_command_time(workdir: str, index: int, seconds: float) -> None:
    """Adds the wall time of the command recorded at ``index`` (one that ran to its end)."""
    path = os.path.join(workdir, SWEEP_FILE)
    data = sweep_runs.read_json(path) or {"commands": []}
    if index < len(data["commands"]):
        data["commands"][index]["seconds"] = round(seconds, 1)
        run_files.write_json(path, data)


def sweep(
    plans: Sequence[sweep_plan.Plan],
    workdir: str,
    *,
    verbose: bool = True,
    command: tuple[int, float] | None = None,
) -> dict[str, list[sweep_plan.Plan]]:
    """Runs every plan that needs running, then writes the report.

    ``command``: the index of this sweep's command in ``sweep.json`` and its
    ``time.perf_counter()`` start; when every plan has run, its wall time is recorded there
    before the report is written.

    Returns:
      ``{"done": [...], "failed": [...], "skipped": [...]}`` (skipped = already done before).

    Raises:
      train_lib.Interrupted, KeyboardInterrupt: the report is written first.
    """
    outcome: dict[str, list[sweep_plan.Plan]] = {"done": [], "failed": [], "skipped": []}
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
            printer = _epoch_printer(p.config.num_epochs) if verbose else None
            record = run_one(p, env, on_epoch=printer, datasets=datasets)
            seconds = time.perf_counter() - t0
            if record["status"] == "done":
                outcome["done"].append(p)
                summary = sweep_runs.read_json(os.path.join(p.run_dir, "summary.json")) or {}
                acc = (summary.get("final") or {}).get("test_accuracy", math.nan)
                print(f"      done: test accuracy {acc:.2%} ({seconds:.1f} s)", flush=True)
            else:
                outcome["failed"].append(p)
                print(f"      {record['status']}: {record['error']}", flush=True)
        if command is not None:
            record_command_time(workdir, command[0], time.perf_counter() - command[1])
    finally:
        report.write(workdir)
    return outcome


# --------------------------------------------------------------------------- command line


def build_plans(argv: list[str]) -> tuple[list[sweep_plan.Plan], str]:
    """Parses flags and plans every entry. Returns the plans and the workdir."""
    from train import run_config

    _FLAGS.unparse_flags()  # back to the defaults: main() may run more than once per process
    try:
        rest = _FLAGS(argv)
    except flags.Error as e:
        raise cli.UsageError(cli.flag_error(e)) from e
    if len(rest) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(rest[1:])}")
    poolers = sweep_plan.parse_poolers(_POOLERS.value)
    datasets = sweep_plan.parse_datasets(_DATASETS.value)
    if _SEEDS.value < 1:
        raise cli.UsageError(f"--seeds must be >= 1, got {_SEEDS.value}")
    if _EPOCHS.value is not None and _EPOCHS.value < 1:
        raise cli.UsageError(f"--epochs must be >= 1, got {_EPOCHS.value}")
    temperatures = sweep_plan.parse_temperatures(_TEMPERATURES.value)
    workdir = _WORKDIR.value
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise cli.UsageError(f"--workdir {workdir} exists and is not a directory")
    plans = []
    for entry in sweep_plan.entries(poolers, datasets, _SEEDS.value, temperatures):
        config = sweep_plan.make_config(
            entry,
            epochs=_EPOCHS.value,
            data_dir=_DATA_DIR.value,
            batch_size=_BATCH_SIZE.value,
            learning_rate=_LEARNING_RATE.value,
        )
        try:
            run_config.validate_config(config)
        except run_config.ConfigError as e:
            raise cli.UsageError(str(e)) from e
        plans.append(
            sweep_plan.plan_entry(entry, config, workdir, retry_failed=_RETRY_FAILED.value)
        )
    return plans, workdir


def run(argv: list[str]) -> int:
    """Parses ``argv``, runs the sweep (or lists it) and returns the exit code."""
    from train import run_config, train_lib

    if cli.wants_help(argv):
        print(__doc__.strip().splitlines()[0])
        print(_FLAGS.get_help())
        return 0
    plans, workdir = build_plans(argv)
    if _DRY_RUN.value:
        print(f"sweep in {workdir}: {len(plans)} runs")
        print("\n".join(sweep_plan.describe(plans)))
        return 0
    t0 = time.perf_counter()
    try:
        index = record_command(workdir, "python -m train.sweep " + shlex.join(argv[1:]))
    except OSError as e:  # e.g. a path through a file, or no permission
        raise cli.UsageError(f"cannot write to --workdir {workdir}: {e.strerror or e}") from e
    try:
        run_config.enable_compilation_cache()
        outcome = sweep(plans, workdir, verbose=not _QUIET.value, command=(index, t0))
    except train_lib.Interrupted as e:
        print(f"{e}; report written; rerun the same command to resume", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted; report written; rerun the same command to resume", file=sys.stderr)
        return 130
    print(
        f"sweep: {len(plans)} runs: {len(outcome['done'])} trained, "
        f"{len(outcome['skipped'])} already done, {len(outcome['failed'])} failed; "
        f"report in {os.path.join(workdir, 'report', 'report.md')}"
    )
    return EXIT_FAILED if outcome["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs :func:`run`; usage errors become one line on stderr and exit code 2."""
    return cli.run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
