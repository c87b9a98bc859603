"""What the command-line tools share: flag parsing whose usage errors are one line with exit code
2, ``--help``, the per-epoch lines, Ctrl-C as exit code 130 without a traceback, and logging."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import flags

EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line, config or data problem; reported in one line with exit code 2."""


def wants_help(argv: Sequence[str]) -> bool:
    """Whether the command line asks for help (``-h``, ``--help``, ``-help``, ``--helpfull``)."""
    return any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:])


def print_help(doc: str, flag_values: flags.FlagValues, module: str | None = None) -> None:
    """``--help``: the entry point's docstring ``doc``, then its flags.

    Args:
      doc: the entry point's module docstring (what it does, example command lines).
      flag_values: where its flags are defined.
      module: the entry point's module name, for entry points that define their flags in
        absl's global ``flags.FLAGS``, which other modules share: only that module's flags.
    """
    out(doc.strip())
    out()
    out(flag_values.module_help(module) if module else flag_values.get_help())
    out(f"  {NO_CPU_TUNING}: leave XLA:CPU at its defaults (this command otherwise sets the")
    out("    XLA:CPU flags measured faster for training: docs/performance-cpu-notes.md)")


_stdout_gone = False  # set by out() once stdout failed


def out(text: str = "") -> None:
    """Prints ``text`` on stdout, flushed (the commands' progress and results).  A stdout that
    is gone (a closed pipe, ``| head``) or full is left alone from then on, not an error: the
    training and the files it writes go on.  Characters the stream's encoding lacks (``×``
    under ``PYTHONIOENCODING=ascii``) are escaped."""
    global _stdout_gone
    if _stdout_gone or sys.stdout is None:
        return
    try:
        try:
            print(text, flush=True)
        except UnicodeEncodeError:
            encoding = sys.stdout.encoding or "ascii"
            print(text.encode(encoding, "backslashreplace").decode(encoding), flush=True)
    except OSError:  # BrokenPipeError, ENOSPC, EIO
        _stdout_gone = True
        try:  # Python's own flush of stdout at exit would fail again, with a message
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass


def _number_kind(flag: flags.Flag) -> str | None:
    """What a numeric flag takes, in words ("an integer", "a number"); None for other flags."""
    if isinstance(flag.parser, flags.IntegerParser):
        return "an integer"
    if isinstance(flag.parser, flags.FloatParser):
        return "a number"
    return None


def flag_arguments(argv: Sequence[str]) -> list[tuple[str, str | None, str | None]]:
    """The flags of a command line as absl reads it: ``(name, value, next argument)`` for each
    ``--name=value`` (``-name=value``), or ``(name, None, next argument)`` for ``--name``, which
    takes the next argument as its value if the flag is not boolean.  Stops at ``--``.
    """
    found = []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg.startswith("-") and len(arg) > 1:
            name, eq, value = arg[2:].partition("=") if arg[1] == "-" else arg[1:].partition("=")
            following = args[i + 1] if i + 1 < len(args) else None
            found.append((name, value if eq else None, following))
    return found


BOOLEAN = "true or false"  # what a boolean flag takes, in words


def check_values(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
    """Checks the values of the integer, float and boolean flags of ``flag_values`` in ``argv``
    (absl's own message for a bad boolean is the repr of a tuple).

    Raises:
      UsageError: ``--NAME must be an integer; got 'VALUE'`` (or ``a number``, ``true or
        false``).
    """
    for name, value, following in flag_arguments(argv):
        flag = flag_values[name] if name in flag_values else None
        if flag is not None and isinstance(flag.parser, flags.BooleanParser):
            kind = BOOLEAN  # a boolean takes no following argument: only --NAME=VALUE
        else:
            kind = None if flag is None else _number_kind(flag)
            value = following if value is None else value
        if kind is None or value is None:  # absl reports a missing value itself
            continue
        try:  # convert: the type alone (absl reports a bound with its own message)
            (flag.parser.parse if kind == BOOLEAN else flag.parser.convert)(value)
        except (TypeError, ValueError):
            raise UsageError(f"--{name} must be {kind}; got {value!r}") from None


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> list[str]:
    """Parses ``argv`` into ``flag_values`` and returns the other arguments (``argv[0]`` first).

    Numeric and boolean values are checked first (:func:`check_values`); absl's own errors (an unknown
    flag, a missing value) are one line already and become the usage error as they are.

    Raises:
      UsageError: a bad flag or value.
    """
    check_values(flag_values, argv)
    try:
        return flag_values(list(argv))
    except flags.Error as e:
        raise UsageError(first_line(e)) from e


def epoch_line(row: Mapping[str, Any], num_epochs: int, *, brief: bool = False) -> str:
    """One epoch's metrics (a ``metrics.jsonl`` row) in one line::

      epoch 3/10  train loss 0.1234 acc 96.10%  test loss 0.0987 acc 97.02%  2.1s  30,512 img/s

    or, ``brief`` (a sweep's run, indented under its name),
    ``epoch 3/10  train loss 0.1234  test acc 97.02%  2.1s``.
    """
    epoch, seconds = f"epoch {row['epoch']}/{num_epochs}", f"{row['epoch_seconds']:.1f}s"
    if brief:
        parts = [
            epoch,
            f"train loss {row['train_loss']:.4f}",
            f"test acc {row['test_accuracy']:.2%}",
            seconds,
        ]
    else:
        parts = [
            epoch,
            f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.2%}",
            f"test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.2%}",
            seconds,
            f"{row['images_per_second']:,.0f} img/s",
        ]
    return "  ".join(parts)


def epoch_printer(
    num_epochs: int, *, indent: str = "", brief: bool = False
) -> Callable[[Mapping[str, Any]], None]:
    """An ``on_epoch`` callback of ``train.core.loop.train_and_evaluate`` that prints
    :func:`epoch_line` after ``indent``, flushed at once (the lines show progress)."""

    def show(row: Mapping[str, Any]) -> None:
        out(indent + epoch_line(row, num_epochs, brief=brief))

    return show


def parse_poolers(text: str) -> list[str]:
    """``--poolers``: ``all`` or a comma-separated list of distinct registry names (spaces around
    names allowed).

    Raises:
      ValueError: an empty, unknown or repeated name; the message lists what is allowed.
    """
    import jaxpool

    available = jaxpool.available()
    names = list(available) if text.strip() == "all" else [n.strip() for n in text.split(",")]
    allowed = f"allowed: all or a comma-separated subset of {', '.join(available)}"
    if not text.strip() or "" in names:
        raise ValueError(f"--poolers: an empty name in {text!r}; {allowed}")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"--poolers: unknown pooler(s) {', '.join(unknown)}; {allowed}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--poolers: {', '.join(repeated)} listed twice; {allowed}")
    return names


# jaxpool's config files: the ``configs`` package installed beside ``train``.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def bundled_config(name: str) -> Any:
    """``configs/<name>.py``'s ``get_config()`` (an ``ml_collections.ConfigDict``).  UsageError
    where ``import configs`` finds another package than jaxpool's (a user's ``configs/`` or
    ``configs.py`` earlier on the path, e.g. in the current directory), whose ``mnist.py`` would
    otherwise silently stand in for ours."""
    import importlib

    hint = (
        "a 'configs' package or module earlier on the import path (often the current directory) "
        "hides jaxpool's; run from another directory"
    )
    try:
        module = importlib.import_module(f"configs.{name}")
    except ImportError as e:
        found = getattr(sys.modules.get("configs"), "__file__", None)
        if found and not _in_configs_dir(found):
            raise UsageError(f"cannot load jaxpool's configs/{name}.py: {hint} ({found})") from e
        raise UsageError(f"cannot load jaxpool's configs/{name}.py: {first_line(e)}") from e
    if not _in_configs_dir(module.__file__ or ""):
        raise UsageError(f"configs.{name} is {module.__file__}, not jaxpool's: {hint}")
    return module.get_config()


def _in_configs_dir(path: str) -> bool:
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.isdir(CONFIGS_DIR) and os.path.samefile(folder, CONFIGS_DIR)


def start_backend() -> None:
    """Starts JAX's backend, so that a JAX that cannot start (``JAX_PLATFORMS`` naming a platform
    whose plugin is missing, a failing driver) is one line and exit 2, not a traceback from
    wherever JAX is first used.  After the XLA options and ``jax.distributed.initialize``."""
    import jax

    try:
        jax.devices()
    except (RuntimeError, AssertionError) as e:  # jaxlib 0.10 asserts for a missing CUDA plugin
        platforms = os.environ.get("JAX_PLATFORMS", "")
        why = (
            first_line(e)
            if str(e).strip()
            else (
                f"no backend for JAX_PLATFORMS={platforms!r} (is that platform's jax plugin "
                "installed, e.g. jax[cuda13]?); unset JAX_PLATFORMS to let JAX choose"
            )
        )
        raise UsageError(f"JAX cannot start: {why}") from e


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


NO_CPU_TUNING = "--no-xla-cpu-tuning"


def set_xla_options(cpu_tuning: bool = True) -> None:
    """The XLA options the tool runs under, added to ``XLA_FLAGS`` (the user's own flags win):
    deterministic XLA:GPU ops (:mod:`train.core.xla_gpu`) and, unless ``cpu_tuning`` is off, the
    XLA:CPU flags measured faster for training (:mod:`train.core.xla_cpu`: XNNPACK convolutions on
    jaxlib 0.10, 512-bit vectors on AVX-512).  Effective only before JAX starts its backend."""
    from train.core import xla_cpu, xla_gpu

    xla_gpu.request_deterministic_ops()
    if cpu_tuning:
        xla_cpu.prefer_xnnpack_convolutions()
        xla_cpu.prefer_wide_vectors()


def _drop_orbax_thread_errors(record: logging.LogRecord) -> bool:
    """False for orbax's own error logs: a failed asynchronous save (a full disk) logs a
    traceback from each of its threads, hundreds of lines, and then raises the error in the
    command, which says it in one line (as it does a checkpoint it cannot read)."""
    return f"{os.sep}orbax{os.sep}checkpoint{os.sep}" not in record.pathname


def _closed_event_loop(error: BaseException | None) -> bool:
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _quiet_closed_event_loops(excepthook: Callable, unraisablehook: Callable):
    """``sys.excepthook`` and ``sys.unraisablehook`` without TensorStore's "Event loop is
    closed": after a failed save (or read), its callbacks still call into orbax's finished event
    loops, and each prints a traceback (through either hook) that says nothing about the error
    the command reports."""

    def quiet_excepthook(kind, value, tb):
        if not _closed_event_loop(value):
            excepthook(kind, value, tb)

    def quiet_unraisablehook(unraisable):
        if not _closed_event_loop(unraisable.exc_value):
            unraisablehook(unraisable)

    return quiet_excepthook, quiet_unraisablehook


def run_main(run: Callable[[Sequence[str]], int], argv: Sequence[str] | None = None) -> int:
    """Runs ``run(argv)``; a :class:`UsageError` becomes ``error: ...`` on stderr and exit code 2,
    Ctrl-C outside training ``interrupted`` and exit code 130 (also one that Python dropped in a
    callback: :mod:`train.core.interrupts`), SIGTERM there exit code 143.

    Before it, :func:`set_xla_options` (a fresh CLI process has not started JAX yet); the flag
    ``--no-xla-cpu-tuning``, accepted by every entry point, leaves XLA:CPU at its defaults.
    """
    argv = list(sys.argv if argv is None else argv)
    cpu_tuning = NO_CPU_TUNING not in argv
    argv = [a for a in argv if a != NO_CPU_TUNING]
    set_xla_options(cpu_tuning)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("train").setLevel(logging.INFO)
    # TFDS and orbax log through absl; their warnings are noise for a CLI (errors still show).
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("absl").addFilter(_drop_orbax_thread_errors)
    from train.core import interrupts

    hooks = sys.excepthook, sys.unraisablehook
    sys.excepthook, sys.unraisablehook = _quiet_closed_event_loops(*hooks)
    try:
        with interrupts.recorded() as dropped:
            status = run(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside training (which saves and exits itself)
        print(_interrupted(dropped), file=sys.stderr)
        return interrupts.exit_code(dropped)
    finally:
        sys.excepthook, sys.unraisablehook = hooks
    if status == 0 and dropped:  # a Ctrl-C that Python dropped and no training took
        print(_interrupted(dropped), file=sys.stderr)
        return interrupts.exit_code(dropped)
    return status


def _interrupted(signals: list[int]) -> str:
    if not signals or signals[0] == signal.SIGINT:
        return "interrupted"
    return f"interrupted by signal {signals[0]}"
