r"""``python -m train.bench``: pooler and CNN benchmarks (:mod:`train.benchmarks.measure`), or
with ``--check`` the accelerator check (:mod:`train.benchmarks.accelerator_check`).

Run::

  python -m train.bench                       # every pooler, the whole table
  python -m train.bench --poolers max,tdgs --repeats 9 --json bench.json
  python -m train.bench --check --check-data-dir DATA  # on a GPU/TPU machine
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from absl import flags

from train import cli

_POOLERS = flags.DEFINE_string("poolers", "all", "Comma-separated poolers, or 'all'.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed repeats per figure (the median is kept).")
_JSON = flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
_SKIP_CNN = flags.DEFINE_bool("skip-cnn", False, "Only the pooler table.")
_CHECK = flags.DEFINE_bool(
    "check",
    False,
    "Accelerator check instead of the bench alone: the test suite, the bench and a 2-epoch MNIST "
    "sweep of every pooler, each time-limited, then a summary (train/benchmarks/accelerator_check.py).",
)
_CHECK_DIR = flags.DEFINE_string(
    "check-dir", "runs/accelerator-check", "--check: where logs, JSON and the sweep go."
)
# Not "data-dir": train.main defines that global flag, and both modules load in one process.
_CHECK_DATA_DIR = flags.DEFINE_string(
    "check-data-dir", None, "--check: TFDS data dir holding MNIST (default: TFDS's)."
)
_CHECK_WORKERS = flags.DEFINE_integer("check-workers", 4, "--check: pytest workers (-n).")
_CHECK_STEPS = flags.DEFINE_string(
    "check-steps",
    "all",
    "--check: 'all' or some of tests,determinism,sweep,paths,graphs,seeds,bench (comma-separated).",
)
_CHECK_SECONDS = flags.DEFINE_integer(
    "check-seconds",
    None,
    "--check: time limit of the whole check in seconds, at least 60; steps get at most what is "
    "left (less 15 s to stop one) and are skipped with under 60 s left (default: each step's own "
    "limit).",
)
_IN_LOOP = flags.DEFINE_enum(
    "in-loop",
    "auto",
    ["auto", "on", "off"],
    "Also time each pooler and CNN step inside one compiled loop (device time, no per-call "
    "dispatch); auto: on GPU/TPU, off on CPU.",
)
_CNN_INPUT = flags.DEFINE_string(
    "cnn-input", "32,32,3", "CNN input H,W,C (32,32,3: CIFAR; 28,28,1: MNIST, as the CLI trains)."
)


def check_json_path(path: str | None) -> None:
    """``--json``: a file that can be written, checked before the minutes of measuring."""
    if path is None:
        return
    if not path:
        raise ValueError("--json: expected a file path, got an empty one")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or path.endswith(os.sep):
        raise ValueError(f"--json: {path} is a directory; give a file path")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ValueError(f"--json: cannot write {path}: {folder} is not a writable directory")


def parse_cnn_input(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1 or min(dims[:2]) < 8:
        raise ValueError(
            f"--cnn-input: expected H,W,C with H, W >= 8 (three pools of 2) and C >= 1, "
            f"e.g. 28,28,1; got {text!r}"
        )
    return dims


# Flags of one mode that the other would silently ignore.
BENCH_FLAGS = ("poolers", "repeats", "json", "skip-cnn", "in-loop", "cnn-input")
CHECK_FLAGS = ("check-dir", "check-data-dir", "check-workers", "check-steps", "check-seconds")


def _refuse_flags(argv: Sequence[str], names: Sequence[str], why: str) -> None:
    """ValueError naming the flags of ``names`` given in ``argv`` (``--noNAME`` too)."""
    given = []
    for name, _, _ in cli.flag_arguments(argv):
        name = name.removeprefix("no") if name.removeprefix("no") in names else name
        if name in names and f"--{name}" not in given:
            given.append(f"--{name}")
    if given:
        raise ValueError(f"{', '.join(given)}: {why}")


def _run_cli(argv: Sequence[str]) -> int:
    if cli.wants_help(argv):
        cli.print_help(__doc__, flags.FLAGS, module=__name__)
        return 0
    rest = cli.parse_flags(flags.FLAGS, argv)
    if len(rest) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(rest[1:])}")
    if _CHECK.value:
        from train.benchmarks import accelerator_check

        if _CHECK_WORKERS.value < 1:
            raise cli.UsageError(f"--check-workers must be >= 1; got {_CHECK_WORKERS.value}")
        try:
            _refuse_flags(
                argv,
                BENCH_FLAGS,
                "the bench's own, not used by --check (its bench step runs with the defaults); "
                "drop them or run the bench without --check",
            )
            accelerator_check.check_seconds(_CHECK_SECONDS.value)
            groups = accelerator_check.parse_groups(_CHECK_STEPS.value)
            accelerator_check.check_out_dir(_CHECK_DIR.value)
            accelerator_check.check_data_dir(_CHECK_DATA_DIR.value, groups)
            accelerator_check.check_tests(groups)
        except ValueError as e:
            raise cli.UsageError(str(e)) from e
        return accelerator_check.run(
            _CHECK_DIR.value,
            _CHECK_DATA_DIR.value,
            _CHECK_WORKERS.value,
            groups,
            _CHECK_SECONDS.value,
        )
    from train.benchmarks import measure  # imports JAX: only once the flags are known

    try:
        _refuse_flags(argv, CHECK_FLAGS, "options of --check only; add --check or drop them")
        poolers = cli.parse_poolers(_POOLERS.value)
        if _REPEATS.value < 1:
            raise ValueError(f"--repeats must be >= 1; got {_REPEATS.value}")
        cnn_input = parse_cnn_input(_CNN_INPUT.value)
        if _SKIP_CNN.value:
            _refuse_flags(argv, ("cnn-input",), "the CNN's input, and --skip-cnn skips the CNN")
        check_json_path(_JSON.value)
        if not _SKIP_CNN.value:
            measure.check_cnn_input(poolers, cnn_input)
    except ValueError as e:
        raise cli.UsageError(str(e)) from e
    # Before JAX allocates anything large: see keep_freed_memory.
    malloc = measure.keep_freed_memory()
    cli.start_backend()
    results = measure.run(
        poolers,
        _REPEATS.value,
        with_cnn=not _SKIP_CNN.value,
        cnn_input=cnn_input,
        malloc=malloc,
        in_loop={"auto": None, "on": True, "off": False}[_IN_LOOP.value],
    )
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: usage errors are one ``error: ...`` line on stderr and exit code 2."""
    return cli.run_main(_run_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
