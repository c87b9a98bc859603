r"""The study: every pooler × dataset × seed as a normal training run, then the report.

Examples::

  python -m train.sweep --poolers all --datasets mnist,cifar10,cifar100 --seeds 3 --epochs 10 \
      --workdir runs/sweep --data-dir DIR
  python -m train.sweep --poolers max,tdgs --datasets digits --seeds 2 --epochs 1 --dry-run
  python -m train.sweep --poolers max --datasets mnist --tdgs-init-temperatures 0.25,0.5,1,2,4

Each run is ``loop.train_and_evaluate`` with ``configs/<dataset>.py`` and these overrides:
``pooler``, ``pooler_kwargs``, ``seed`` (0 .. ``--seeds``-1) and, when given, ``num_epochs``,
``batch_size``, ``learning_rate``, ``data_dir`` (``DIR`` above: a TFDS data dir holding the
datasets). Its workdir is
``<workdir>/runs/<dataset>/<pooler label>/s<seed>`` (labels: :func:`train.study.run_records.pooler_label`,
e.g. ``tdgs@T=0.5`` for ``--tdgs-init-temperatures``), and holds ``train.core.loop``'s files plus
``sweep_run.json`` (status, error, timings, device kind, library versions).

Rerunning the same command is cheap and safe:

- a run whose ``summary.json`` says ``done`` for the same configuration and whose final checkpoint
  exists is skipped, and so is one without any checkpoint (deleted to save space: its results are
  kept); one whose ``metrics.jsonl`` lacks some of its epochs is reported as ``damaged`` and left
  alone (delete its directory to train it again);
- any other run with a checkpoint resumes from it (``train.core.loop`` restores the newest one), so an
  interrupted sweep, or a run whose final checkpoint was deleted, continues where it stopped;
- a run that failed on a non-finite loss is deterministic and is skipped unless
  ``--retry-failed``; a run that failed with any other error is tried again;
- a run directory holding other run-defining settings (learning rate, batch size, ...) is a
  conflict, skipped and reported, if it holds a checkpoint or a finished epoch (without either it
  starts over), and so is a run trained for more epochs than ``--epochs`` and an unfinished run
  with finished epochs but no checkpoint (training anew would overwrite them); one killed while its
  first checkpoint was written (epoch 1's row alone, no checkpoint, no summary of a finished
  epoch) starts over instead.

A failed run (non-finite loss or any exception) is recorded with its error and the sweep goes on.
A run another process is training (a second sweep on the same workdir, or ``train.main`` on the
run's directory: each holds the run's ``.lock`` while it trains) is left to it, reported ``in
use`` and counted as failed; two sweeps on one workdir so share its runs. A full disk stops the
sweep (one line, exit 1: a checkpoint or record that cannot be written); a rerun resumes.
At the end ``<workdir>/report/`` is rewritten from all run directories (see :mod:`train.report`)
and ``<workdir>/sweep.json`` keeps every command that ran in the workdir with the runs it planned
(the report lists those it never started as ``not started``). Exit codes: 0 all runs
done, 1 some run failed, 2 bad flags or a dataset that is missing, not prepared, in another
file format or with unreadable metadata (one line on stderr, before any run; damaged record files
are found when the dataset is read, and fail its runs), 128+N stopped by signal N (rerun to
resume). Runs execute one after another in this process (compiled steps are reused across seeds).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time

from absl import flags

from train import cli
from train.core import run_files
from train.study import plan, run_records, tables
from train.study.runner import record_command, sweep

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
_SEEDS_TOGETHER = flags.DEFINE_enum(
    "seeds-together",
    "auto",
    ["auto", "on", "off"],
    "Train the seeds of one pooler and dataset as one vmapped program (each run keeps its own "
    "directory); auto: on GPU/TPU, off on CPU.",
    flag_values=_FLAGS,
)

EXIT_FAILED = cli.EXIT_FAILED
EXIT_USAGE = cli.EXIT_USAGE

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- command line


def build_plans(argv: list[str]) -> tuple[list[plan.Plan], str]:
    """Parses flags and plans every entry. Returns the plans and the workdir."""
    from train.core import run_config

    _FLAGS.unparse_flags()  # back to the defaults: main() may run more than once per process
    rest = cli.parse_flags(_FLAGS, argv)
    if len(rest) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(rest[1:])}")
    cli.start_backend()  # the configs are checked against the devices
    try:
        poolers = cli.parse_poolers(_POOLERS.value)
    except ValueError as e:
        raise cli.UsageError(str(e)) from e
    datasets = plan.parse_datasets(_DATASETS.value)
    if not 1 <= _SEEDS.value <= 2**32:  # seeds 0 .. N-1, each below 2**32 (run_config)
        raise cli.UsageError(f"--seeds must be between 1 and 2**32 = {2**32}, got {_SEEDS.value}")
    if _EPOCHS.value is not None and _EPOCHS.value < 1:
        raise cli.UsageError(f"--epochs must be >= 1, got {_EPOCHS.value}")
    temperatures = plan.parse_temperatures(_TEMPERATURES.value)
    workdir = os.path.expanduser(_WORKDIR.value)  # '~/x' quoted, too
    problem = run_files.workdir_problem(workdir)
    if problem:
        raise cli.UsageError(f"--workdir {problem}")
    try:
        tables.check_report_dir(workdir)  # before hours of training, not after
    except ValueError as e:
        raise cli.UsageError(str(e)) from e
    plans = []
    for entry in plan.entries(poolers, datasets, _SEEDS.value, temperatures):
        config = plan.make_config(
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
        plans.append(plan.plan_entry(entry, config, workdir, retry_failed=_RETRY_FAILED.value))
    return plans, workdir


def _check_data(plans: list[plan.Plan]) -> None:
    """Every dataset the sweep will train on is there as far as its folders and metadata tell
    (one missing, not prepared or in another format is one line and exit 2 before any run, not a
    failure of each of its runs)."""
    from train.core import input_pipeline

    sources = dict.fromkeys((p.config.dataset, p.config.data_dir) for p in plans if p.runs)
    for name, data_dir in sources:
        try:
            input_pipeline.check(name, data_dir)
        except input_pipeline.DataError as e:
            raise cli.UsageError(str(e)) from e


def _seeds_together(choice: str) -> bool:
    """``--seeds-together``: ``auto`` is on where JAX's backend is not the CPU.

    Measured on a 2-core x86 CPU (jax 0.10.2, shared machine): the MNIST sweep of max and tdgs,
    3 seeds x 2 epochs, took 340-422 s with the seeds of a pooler in one program against
    209-217 s apart (per seed, a vmapped epoch was 2-3x slower for max, 1.1-1.8x for tdgs).  Not
    yet measured on a GPU/TPU, where a step of this small CNN is bound by kernel latency, not
    arithmetic, so a few seeds in one program should cost little more than one:
    ``python -m train.bench --check`` compares both ways there.
    """
    if choice != "auto":
        return choice == "on"
    import jax

    return jax.default_backend() != "cpu"


def run(argv: list[str]) -> int:
    """Parses ``argv``, runs the sweep (or lists it) and returns the exit code."""
    from train.core import interrupts, loop, run_config

    if cli.wants_help(argv):
        cli.print_help(__doc__, _FLAGS)
        return 0
    plans, workdir = build_plans(argv)
    if _DRY_RUN.value:
        cli.out(f"sweep in {workdir}: {len(plans)} runs")
        cli.out("\n".join(plan.describe(plans)))
        return 0
    _check_data(plans)
    t0 = time.perf_counter()
    try:
        index = record_command(workdir, "python -m train.sweep " + shlex.join(argv[1:]), plans)
    except OSError as e:  # e.g. a path through a file, or no permission
        raise cli.UsageError(f"cannot write to --workdir {workdir}: {e.strerror or e}") from e
    except run_records.SweepRecordError as e:
        raise cli.UsageError(str(e)) from e
    try:
        run_config.enable_compilation_cache()
        outcome = sweep(
            plans,
            workdir,
            verbose=not _QUIET.value,
            command=(index, t0),
            seeds_together=_seeds_together(_SEEDS_TOGETHER.value),
        )
    except loop.Interrupted as e:
        hint = "" if "rerun the same command" in str(e) else "; rerun the same command to resume"
        print(f"{e}{hint} (report written)", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside training (train.core.interrupts)
        print("interrupted; report written; rerun the same command to resume", file=sys.stderr)
        return interrupts.exit_code(interrupts.received())
    except (OSError, run_files.WriteError) as e:  # a full disk stops the sweep
        what = (
            f"cannot write {e.filename or f'in {workdir}'}: {e.strerror or e}"
            if isinstance(e, OSError)
            else str(e)
        )
        print(
            f"error: {what}; the sweep stopped: fix that (room, permissions) and rerun the same "
            "command to resume",
            file=sys.stderr,
        )
        return EXIT_FAILED
    cli.out(
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
