"""``python -m train.bench --check``: what to run on a machine with a GPU or TPU, in one command.

Steps, each a subprocess with a time limit, in this order (the most telling first, so a check cut
short by ``--check-seconds`` loses the bench, whose GPU figures exist already), then one summary
that names the device (a first step, always run, asks JAX):

1. tests: the test suite (``python -m pytest -q -n N``; each worker's JAX allocates GPU memory as
   it goes, not 75% of it up front, so the workers share the device);
2. determinism: ``train.main`` on MNIST with max pooling, 2 epochs, with the deterministic XLA:GPU
   ops it runs with (:mod:`train.core.xla_gpu`, what makes a resume exact), without them
   (``XLA_FLAGS=--xla_gpu_deterministic_ops=false``), and with only the ops that could differ run
   to run replaced (``--xla_gpu_exclude_nondeterministic_ops=true``: autotuning kept, which the
   first turns off too): epoch 2's training and evaluation seconds of each give the cost of
   exactness, how much of it autotuning is, and the time to evaluate the 10,000 test images;
3. sweep: the MNIST sweep of every pooler, one seed, 2 epochs (``--check-data-dir`` must hold
   MNIST), whose report gives seconds per epoch without compilation (epoch 2);
4. paths: what ``implementation='auto'`` could take off the CPU, where it was measured.  The
   poolers with a fast path (:data:`FAST_PATH_POOLERS`), each trained as in the sweep (MNIST, 2
   epochs) but with ``--pooler-kwargs '{"implementation": "fast"}'`` (the convolutions stay
   ``'auto'``); max with the whole model fast (``--config.implementation=fast``: the fast
   convolutions of :mod:`train.core.conv` too); and max evaluated at eval batch
   :data:`EVAL_BATCH` instead of the training batch.  Their epoch-2 seconds beside the sweep's
   (``'auto'``) say where a fast path wins on this device and whether a larger evaluation batch
   is needed for the evaluation target;
5. graphs: max trained as in the sweep with XLA:GPU's command buffers (CUDA graphs) off
   (``--xla_gpu_enable_command_buffer=``) and with them extended to loops and conditionals
   (:data:`COMMAND_BUFFERS_WITH_LOOPS`): a step of this small CNN is a few dozen short kernels,
   so launching them may cost more than running them, and each step is one iteration of the
   chunk's ``fori_loop``;
6. seeds: the MNIST sweep of max and tdgs, 3 seeds, 2 epochs, once with each seed its own program
   and once with the seeds of a pooler in one (``--seeds-together off``/``on``): their wall
   times, start-up included, say whether ``--seeds-together auto`` (on for GPU/TPU, not measured
   there yet) is the right default;
7. bench: ``python -m train.bench`` (per-call and in-loop figures; ``bench.json`` in the output
   dir).

``--check-steps`` picks some of them by the names above, and ``--check-seconds`` (at least
:data:`MIN_STEP_SECONDS`) bounds the whole check: each step then gets at most the time left (less
:data:`STOP_GRACE_SECONDS`), and a step with under :data:`MIN_STEP_SECONDS` left is skipped (a
machine lent for a fixed time still gets its summary).  The output directory, the data dir, the
test suite (a checkout's ``tests/`` and pytest) and the time limit are checked before any step,
and the bench's own flags are refused with ``--check`` (its bench step runs with the defaults).
A step past its limit gets SIGINT, so that a training run or sweep saves what it has and pytest
prints its summary, and :data:`STOP_GRACE_SECONDS` later it is killed with every process it
started (pytest's workers too), so nothing keeps the device after the check.  ``summary.txt`` is
rewritten before and after every step: a check killed from outside (a lent machine's time limit)
leaves what it measured; SIGTERM or SIGHUP stops the running step first.

Everything goes to ``--check-dir`` (default ``runs/accelerator-check``): each step's log
(:func:`log_name`), the bench JSON, the run directories and ``summary.txt``.  It must be new or
empty: the sweeps and runs of an earlier check would resume, finished, and time nothing.  The exit
code is 0 when every step passed.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence


@dataclasses.dataclass
class Step:
    """One step of the check: its command, time limit (s) and outcome."""

    name: str
    command: list[str]
    limit_s: int
    group: str = ""  # the --check-steps name that selects it
    returncode: int | None = None  # None: ran past the limit (or skipped)
    seconds: float = 0.0
    note: str = ""
    skipped: bool = False
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # added to the environment
    run_dir: str = ""  # where a train.main step's run goes (its metrics.jsonl)
    started: bool = False
    running: bool = False  # started and not finished (the summary written while it runs)
    interrupted: bool = False  # the check itself was stopped while this step ran

    @property
    def status(self) -> str:
        if self.running:
            return "running"
        if self.interrupted:
            return "stopped with the check"
        if self.skipped:
            return "skipped (time spent)"
        if not self.started and self.returncode is None:
            return "not run"
        if self.returncode is None:
            return f"timed out after {self.limit_s} s"
        return "passed" if self.returncode == 0 else f"failed (exit {self.returncode})"


SEED_GROUP_STEPS = ("seeds apart", "seeds together")
DETERMINISM_STEPS = (
    "deterministic ops on",
    "deterministic ops off",
    "nondeterministic ops excluded",
)
# How the summary names each of them: on (exact, the default), off, and only the ops that could
# differ run to run replaced, autotuning kept (which --xla_gpu_deterministic_ops also turns off).
DETERMINISM_MODES = (
    "deterministic XLA:GPU ops on",
    "deterministic XLA:GPU ops off",
    "nondeterministic ops excluded, autotuning kept",
)
# XLA:GPU's default command types plus loops and conditionals ("+" adds to the defaults; jaxlib
# 0.10.2's XLA parses it and refuses unknown names), so the chunk's fori_loop can be one graph.
COMMAND_BUFFERS_WITH_LOOPS = "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"
# The graphs steps: name -> the XLA flag each adds to the user's XLA_FLAGS.
GRAPH_STEPS = {
    "max, command buffers off": "--xla_gpu_enable_command_buffer=",
    "max, command buffers with loops": COMMAND_BUFFERS_WITH_LOOPS,
}
GROUPS = ("tests", "determinism", "sweep", "paths", "graphs", "seeds", "bench")  # in order
# The poolers whose training takes a path of its own with implementation='fast' (s3's fast path is
# its evaluation alone, which these steps' training figures do not measure; the others have none).
FAST_PATH_POOLERS = ("max", "mixed", "gated", "tree", "stochastic", "tdgs")
FAST_MODEL_STEP = "max, fast model"
EVAL_BATCH = 1000  # the paths step's larger evaluation batch (MNIST's test split: 10 batches)
EVAL_BATCH_STEP = f"max, eval batch {EVAL_BATCH}"
_MNIST_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "mnist.py")
_DEVICE_LINE = re.compile(r"^\w+:.+ x\d+$")  # measure.device_description(): platform:kind xN
MIN_STEP_SECONDS = 60  # under --check-seconds, a step with less time left is skipped
# A step past its limit gets SIGINT first and this long to stop by itself (train.main and
# train.sweep save their runs and report, pytest prints its summary), then SIGKILL.
STOP_GRACE_SECONDS = 15
DEVICE_STEP = "device"  # run whatever --check-steps says (never skipped); it names the device
REPO_ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))


def fast_path_step(pooler: str) -> str:
    """The name of the paths step that trains ``pooler`` on its fast path."""
    return f"{pooler}, fast path"


def parse_groups(text: str) -> tuple[str, ...]:
    """``--check-steps``: ``all`` or a comma-separated subset of :data:`GROUPS`."""
    if text.strip() == "all":
        return GROUPS
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in GROUPS]
    if unknown or not names:
        raise ValueError(
            f"--check-steps: expected 'all' or some of {', '.join(GROUPS)}, comma-separated; "
            f"got {text!r}"
        )
    return tuple(name for name in GROUPS if name in names)


def plan(out: str, data_dir: str | None, workers: int) -> list[Step]:
    """The steps, writing under ``out``."""
    python = sys.executable

    def sweep(workdir: str, *args: str) -> list[str]:
        command = [
            python, "-m", "train.sweep", "--datasets", "mnist", "--epochs", "2",
            "--workdir", os.path.join(out, workdir), "--quiet", *args,
        ]  # fmt: skip
        return command + (["--data-dir", data_dir] if data_dir else [])

    def training(
        name: str, workdir: str, group: str, *args: str, pooler: str = "max", **kwargs
    ) -> Step:
        """``train.main`` on MNIST for 2 epochs into ``out/workdir``: a step whose run's epoch-2
        seconds the summary reads."""
        run_dir = os.path.join(out, workdir)
        command = [
            python, "-m", "train.main", "--dataset", "mnist", "--pooler", pooler, "--epochs", "2",
            "--workdir", run_dir, "--quiet", *args,
        ]  # fmt: skip
        command += ["--data-dir", data_dir] if data_dir else []
        return Step(name, command, group=group, run_dir=run_dir, **kwargs)

    fast_pooler = ("--pooler-kwargs", json.dumps({"implementation": "fast"}))
    config = ("--config", os.path.normpath(_MNIST_CONFIG))

    groups = ("--poolers", "max,tdgs", "--seeds", "3", "--seeds-together")
    # The user's XLA flags kept, deterministic ops turned off (train.cli leaves a choice alone).
    user_flags = os.environ.get("XLA_FLAGS", "")
    nondeterministic = {"XLA_FLAGS": f"{user_flags} --xla_gpu_deterministic_ops=false".strip()}
    excluded = {
        "XLA_FLAGS": f"{nondeterministic['XLA_FLAGS']} --xla_gpu_exclude_nondeterministic_ops=true"
    }
    # Most telling first: a check cut short by --check-seconds loses the bench, measured before.
    name_device = "from train.benchmarks import measure; print(measure.device_description())"
    return [
        Step(DEVICE_STEP, [python, "-c", name_device], 120, DEVICE_STEP),
        Step("tests", [python, "-m", "pytest", "-q", "-n", str(workers), "tests"], 1800, "tests"),
        training(DETERMINISM_STEPS[0], "deterministic-on", "determinism", limit_s=600),
        training(
            DETERMINISM_STEPS[1],
            "deterministic-off",
            "determinism",
            limit_s=600,
            env=nondeterministic,
        ),
        training(
            DETERMINISM_STEPS[2], "deterministic-excluded", "determinism", limit_s=600, env=excluded
        ),
        Step(
            "mnist sweep (2 epochs)",
            sweep("sweep", "--poolers", "all", "--seeds", "1"),
            1200,
            "sweep",
        ),
        *(
            training(fast_path_step(p), f"fast-{p}", "paths", *fast_pooler, pooler=p, limit_s=300)
            for p in FAST_PATH_POOLERS
        ),
        training(
            FAST_MODEL_STEP,
            "fast-model",
            "paths",
            *config,
            "--config.implementation=fast",
            limit_s=300,
        ),
        training(
            EVAL_BATCH_STEP,
            "eval-batch",
            "paths",
            *config,
            f"--config.eval_batch_size={EVAL_BATCH}",
            limit_s=300,
        ),
        *(
            training(
                name,
                f"graphs-{i}",
                "graphs",
                limit_s=300,
                env={"XLA_FLAGS": f"{user_flags} {flag}".strip()},
            )
            for i, (name, flag) in enumerate(GRAPH_STEPS.items())
        ),
        # Each with a compilation cache of its own: the sweep step's cached programs would spare
        # "apart" its compiling and not "together" (3.3x against 1.2x measured on a CPU).
        *(
            Step(
                name,
                sweep(workdir, *groups, mode),
                900,
                "seeds",
                env={"JAX_COMPILATION_CACHE_DIR": os.path.join(out, f"xla-cache-{workdir}")},
            )
            for name, workdir, mode in zip(
                SEED_GROUP_STEPS, ("seeds-apart", "seeds-together"), ("off", "on"), strict=True
            )
        ),
        Step(
            "bench",
            [python, "-m", "train.bench", "--json", os.path.join(out, "bench.json")],
            900,
            "bench",
        ),
    ]


def check_out_dir(out: str) -> None:
    """``--check-dir`` must be a new or empty directory that can be created (module docstring);
    raises ValueError otherwise."""
    if not out:
        raise ValueError("--check-dir: expected a directory path, got an empty one")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--check-dir {out} is a file; give a new or empty directory")
    if os.path.isdir(out) and os.listdir(out):
        raise ValueError(
            f"--check-dir {out} already holds files (an earlier check?): its runs would resume, "
            "finished, and time nothing; remove it or give another directory"
        )
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ValueError(f"cannot create --check-dir {out}: {parent} is not a writable directory")


# The steps that train on MNIST from --check-data-dir.
DATA_GROUPS = ("determinism", "sweep", "paths", "graphs", "seeds")


def check_data_dir(data_dir: str | None, groups: Sequence[str]) -> None:
    """``--check-data-dir``, where a selected step trains: a directory holding a prepared TFDS
    ``mnist`` (``mnist/<version>/dataset_info.json`` and array_record files, at the version this
    TFDS reads), checked before the steps, so that a typo does not cost the test suite's minutes
    first.  None: TFDS's default
    directory (``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``), checked the same way."""
    if not set(groups) & set(DATA_GROUPS):
        return
    from train.core import input_pipeline  # TFDS's own checks (version, format); no JAX

    flag = "--check-data-dir"
    data_dir = input_pipeline.resolve_data_dir(data_dir)
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
        flag = "TFDS's default data dir (no --check-data-dir)"
    if not os.path.isdir(data_dir):
        raise ValueError(f"{flag} {data_dir} is not a directory; give the TFDS data dir of MNIST")
    mnist = os.path.join(data_dir, "mnist")
    prepared = [
        version
        for version in (sorted(os.listdir(mnist)) if os.path.isdir(mnist) else [])
        if os.path.isfile(os.path.join(mnist, version, "dataset_info.json"))
        and any(".array_record" in name for name in os.listdir(os.path.join(mnist, version)))
    ]
    if not prepared:
        raise ValueError(
            f"{flag} {data_dir} holds no prepared TFDS mnist (no {mnist}/<version>/ with "
            "dataset_info.json and array_record files); give the TFDS data dir that holds MNIST"
        )
    try:
        input_pipeline.check("mnist", data_dir)
    except input_pipeline.DataError as e:
        raise ValueError(f"{flag} {data_dir}: {e}") from e


def check_tests(groups: Sequence[str]) -> None:
    """The tests step runs ``pytest -n N tests`` in the checkout this code comes from: it needs
    that ``tests/`` folder (an installed jaxpool has none) and pytest with pytest-xdist (the
    ``dev`` extra), checked before any step."""
    if "tests" not in groups:
        return
    tests = os.path.join(REPO_ROOT, "tests")
    leave_out = ",".join(g for g in GROUPS if g != "tests" and g in groups) or "bench"
    if not os.path.isfile(os.path.join(tests, "conftest.py")):
        raise ValueError(
            f"--check-steps tests: no test suite in {tests} (the tests come with a checkout of "
            f"jaxpool, not with an installed one); run the check from a checkout, or leave the "
            f"tests out: --check-steps {leave_out}"
        )
    modules = {"pytest": "pytest", "xdist": "pytest-xdist"}  # module -> distribution
    missing = [dist for name, dist in modules.items() if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"--check-steps tests: {' and '.join(missing)} not installed (pip install -e "
            f"'.[dev]'), or leave the tests out: --check-steps {leave_out}"
        )


def check_seconds(total_seconds: int | None) -> None:
    """``--check-seconds``: None or at least :data:`MIN_STEP_SECONDS` (a step with less time left
    is skipped, so less would run nothing)."""
    if total_seconds is not None and total_seconds < MIN_STEP_SECONDS:
        raise ValueError(
            f"--check-seconds must be at least {MIN_STEP_SECONDS} (a step with less time left is "
            f"skipped); got {total_seconds}"
        )


def run_step(step: Step, log_path: str) -> Step:
    """Runs ``step`` in the repository root with its output in ``log_path``; fills in its outcome.
    Past its limit the step gets SIGINT and :data:`STOP_GRACE_SECONDS` to stop, then SIGKILL; an
    exception here (the check itself stopped) kills it at once."""
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", **step.env)
    step.started = True
    start = time.perf_counter()
    with open(log_path, "w") as log:
        # Its own process group, so that a timeout stops the processes it started too.
        proc = subprocess.Popen(
            step.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        try:
            step.returncode = proc.wait(timeout=step.limit_s)
        except subprocess.TimeoutExpired:
            step.returncode = None
            _signal_group(proc, signal.SIGINT)
            try:
                proc.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        finally:
            _stop_group(proc)
    step.seconds = time.perf_counter() - start
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    step.note = lines[-1] if lines else ""
    if step.name == DEVICE_STEP:  # the line that names the device, whatever came after it
        step.note = next((line for line in reversed(lines) if _DEVICE_LINE.match(line)), step.note)
    return step


def log_name(step_name: str) -> str:
    """The file a step's output goes to: ``seeds apart`` -> ``seeds-apart.log``."""
    return re.sub(r"[^a-z0-9]+", "-", step_name.lower()).strip("-") + ".log"


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def _stop_group(proc: subprocess.Popen) -> None:
    """Kills whatever is left of ``proc``'s process group and reaps ``proc`` (at most 30 s: a
    process stuck in a driver call may not die, and the check must still write its summary)."""
    _signal_group(proc, signal.SIGKILL)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def sweep_seconds_per_epoch(workdir: str) -> dict[str, float]:
    """Pooler -> training seconds per epoch without compiling, from the sweep's ``results.csv``."""
    path = os.path.join(workdir, "report", "results.csv")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {  # only runs past epoch 1: its time includes compiling
            row["pooler"]: float(row["train_seconds_per_epoch"])
            for row in csv.DictReader(f)
            if row["train_seconds_per_epoch"] and int(row.get("epochs") or 0) >= 2
        }


def epoch_seconds(workdir: str, epoch: int = 2) -> tuple[float, float] | None:
    """``(train, eval)`` seconds of ``epoch`` from a run's ``metrics.jsonl``; None if missing."""
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError):
        return None
    row = next((r for r in rows if r.get("epoch") == epoch), None)
    return None if row is None else (float(row["train_seconds"]), float(row["eval_seconds"]))


def summary(
    steps: Sequence[Step],
    per_epoch: dict[str, float],
    device: str,
    timed: dict[str, tuple[float, float]] | None = None,
) -> list[str]:
    """The summary's lines.  ``per_epoch``: the sweep's training seconds per epoch by pooler;
    ``timed``: step name -> epoch 2's (train, eval) seconds of the ``train.main`` steps that
    passed (:data:`DETERMINISM_STEPS`, the paths steps)."""
    timed = timed or {}
    lines = [f"accelerator check on {device}", ""]
    name_width = max((len(s.name) for s in steps), default=0) + 2
    status_width = max((len(s.status) for s in steps), default=0) + 2
    lines += [
        f"{s.name:<{name_width}}{s.status:<{status_width}}{s.seconds:>6.0f} s   {s.note}"
        for s in steps
    ]
    if per_epoch:
        base = per_epoch.get("max")
        lines += ["", "MNIST, batch 64: training seconds per epoch (epoch 2, no compiling)"]
        for name, secs in per_epoch.items():
            ratio = f"  (x{secs / base:.2f} max)" if base else ""
            lines.append(f"  {name:<11}{secs:>8.3f}{ratio}")
    apart, together = (
        next((s for s in steps if s.name == name and s.returncode == 0), None)
        for name in SEED_GROUP_STEPS
    )
    if apart and together:
        lines += [
            "",
            "max and tdgs, 3 seeds x 2 epochs, wall time with start-up: "
            f"{apart.seconds:.1f} s apart, {together.seconds:.1f} s together "
            f"(x{together.seconds / apart.seconds:.2f})",
        ]
    on, off, excluded = (timed.get(name) for name in DETERMINISM_STEPS)
    if on or off or excluded:
        lines.append("")
        lines += _gpu_note(device)
    for mode, figures in zip(DETERMINISM_MODES, (on, off, excluded), strict=True):
        if figures:
            lines.append(
                f"MNIST max, epoch 2, {mode}: training {figures[0]:.3f} s, "
                f"evaluating the test split {figures[1]:.3f} s"
            )
    if on and off:
        lines.append(f"  cost of exactness: training x{on[0] / off[0]:.2f}")
    if excluded and off:
        lines.append(f"  of it, the excluded ops alone: training x{excluded[0] / off[0]:.2f}")
    return lines + _paths_summary(per_epoch, timed) + _graphs_summary(per_epoch, timed, device)


def _paths_summary(per_epoch: dict[str, float], timed: dict[str, tuple[float, float]]) -> list[str]:
    """The paths steps' lines (none when none of them passed)."""
    fast = {p: timed[fast_path_step(p)][0] for p in FAST_PATH_POOLERS if fast_path_step(p) in timed}
    lines = []
    if fast or FAST_MODEL_STEP in timed:
        lines += [
            "",
            "MNIST, epoch 2, training seconds: the sweep's (implementation 'auto') and the pooler's "
            'fast path (--pooler-kwargs \'{"implementation": "fast"}\')',
        ]
        for pooler, secs in fast.items():
            auto = per_epoch.get(pooler)
            if auto:
                lines.append(f"  {pooler:<11}{auto:8.3f} ->{secs:8.3f}  (x{secs / auto:.2f})")
            else:
                lines.append(f"  {pooler:<11}{'?':>8} ->{secs:8.3f}  (no sweep figure)")
    if FAST_MODEL_STEP in timed:
        lines.append(
            f"  max, the whole model fast (--config.implementation=fast, convolutions too): "
            f"{timed[FAST_MODEL_STEP][0]:.3f}"
        )
    if EVAL_BATCH_STEP in timed:
        at_64 = timed.get(DETERMINISM_STEPS[0])
        beside = f" (at the training batch: {at_64[1]:.3f} s)" if at_64 else ""
        lines += [
            "",
            f"MNIST max, epoch 2, evaluating the test split at eval batch {EVAL_BATCH}: "
            f"{timed[EVAL_BATCH_STEP][1]:.3f} s{beside}",
        ]
    return lines


def on_gpu(device: str) -> bool:
    """Whether the device step's ``platform:kind xN`` names a GPU, where the XLA:GPU options of
    the determinism and graphs steps apply."""
    return device.split(":", 1)[0].lower() in ("gpu", "cuda", "rocm")


NO_GPU_NOTE = "  (not a GPU: the XLA:GPU options change nothing here; the ratios below are noise)"
UNNAMED_DEVICE = "an unnamed device (the device step did not say which)"
UNKNOWN_DEVICE_NOTE = "  (device unknown: the XLA:GPU options apply only if it is a GPU)"


def _gpu_note(device: str) -> list[str]:
    """The note above XLA:GPU figures: none on a GPU."""
    if device == UNNAMED_DEVICE:
        return [UNKNOWN_DEVICE_NOTE]
    return [] if on_gpu(device) else [NO_GPU_NOTE]


def _graphs_summary(
    per_epoch: dict[str, float], timed: dict[str, tuple[float, float]], device: str
) -> list[str]:
    """The graphs steps' lines (none when none of them passed)."""
    graphs = {name: timed[name][0] for name in GRAPH_STEPS if name in timed}
    if not graphs:
        return []
    # The same train.main run with XLA's defaults is the first determinism step; else the sweep's.
    if DETERMINISM_STEPS[0] in timed:
        default, source = timed[DETERMINISM_STEPS[0]][0], DETERMINISM_STEPS[0]
    else:
        default, source = per_epoch.get("max"), "the sweep"
    lines = ["", "MNIST max, epoch 2, training seconds by XLA:GPU command buffers (CUDA graphs)"]
    lines += _gpu_note(device)
    label = f"default ({source})"
    lines.append(f"  {label:<34}" + (f"{default:8.3f}" if default else f"{'?':>8}"))
    for name, secs in graphs.items():
        ratio = f"  (x{secs / default:.2f})" if default else ""
        lines.append(f"  {name.removeprefix('max, '):<34}{secs:8.3f}{ratio}")
    return lines


def run(
    out: str,
    data_dir: str | None,
    workers: int,
    groups: Sequence[str] = GROUPS,
    total_seconds: float | None = None,
) -> int:
    """Runs the steps of ``groups`` within ``total_seconds`` (None: each step's own limit),
    writes and prints the summary; returns 0 when all of them passed.  ``summary.txt`` is
    rewritten before and after every step, so a check killed from outside leaves what it
    measured; SIGTERM, SIGHUP and SIGINT stop the running step, write the summary and return
    128 + the signal's number."""
    # This process never starts JAX: it would hold the device the steps need.
    from train.core import input_pipeline

    check_out_dir(out)
    check_data_dir(data_dir, groups)
    check_tests(groups)
    check_seconds(total_seconds)
    out = os.path.abspath(out)  # the steps run in the repository root: absolute paths
    data_dir = input_pipeline.resolve_data_dir(data_dir)
    os.makedirs(out, exist_ok=True)
    steps = [s for s in plan(out, data_dir, workers) if s.group in (DEVICE_STEP, *groups)]
    deadline = None if total_seconds is None else time.monotonic() + total_seconds
    stopped_by = None
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for step in steps:
            if deadline is not None:
                left = int(deadline - time.monotonic()) - STOP_GRACE_SECONDS
                if left < MIN_STEP_SECONDS and step.name != DEVICE_STEP:
                    step.skipped = True
                    print(f"== {step.name}: skipped, {max(left, 0)} s left", flush=True)
                    continue
                step.limit_s = max(min(step.limit_s, left), 1)
            print(f"== {step.name}: {' '.join(step.command)} (limit {step.limit_s} s)", flush=True)
            step.running = True
            write_summary(out, steps)
            try:
                run_step(step, os.path.join(out, log_name(step.name)))
            except BaseException:
                step.interrupted = True
                raise
            finally:
                step.running = False
            print(f"   {step.status} in {step.seconds:.0f} s: {step.note}", flush=True)
            write_summary(out, steps)
    except (KeyboardInterrupt, _Stopped) as e:
        stopped_by = e.signum if isinstance(e, _Stopped) else signal.SIGINT
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    lines = write_summary(out, steps)
    print("\n".join(lines))
    if stopped_by is not None:
        print(f"stopped by signal {int(stopped_by)}", file=sys.stderr)
        return 128 + int(stopped_by)
    return 0 if all(s.returncode == 0 for s in steps) else 1


class _Stopped(Exception):
    """SIGTERM or SIGHUP while the check runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame) -> None:
    del frame
    raise _Stopped(signum)


def write_summary(out: str, steps: Sequence[Step]) -> list[str]:
    """Writes ``out/summary.txt`` (atomically) from what the steps left so far; returns its lines."""
    named = next((s for s in steps if s.name == DEVICE_STEP and s.returncode == 0), None)
    device = named.note if named and _DEVICE_LINE.match(named.note) else UNNAMED_DEVICE
    timed = {
        s.name: seconds
        for s in steps
        if s.run_dir and s.returncode == 0 and (seconds := epoch_seconds(s.run_dir)) is not None
    }
    per_epoch = sweep_seconds_per_epoch(os.path.join(out, "sweep"))
    lines = summary(steps, per_epoch, device, timed)
    path = os.path.join(out, "summary.txt")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    return lines
