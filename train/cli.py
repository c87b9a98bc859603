"""What the command-line tools share: usage errors as one line with exit code 2, Ctrl-C as exit
code 130 without a traceback, and logging."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Sequence

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class UsageError(Exception):
    """A command-line, config or data problem; reported in one line with exit code 2."""


def wants_help(argv: Sequence[str]) -> bool:
    """Whether the command line asks for help (``-h``, ``--help``, ``-help``, ``--helpfull``)."""
    return any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:])


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


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def flag_error(e: BaseException) -> str:
    """One line for an absl flag-parsing error.

    A bad value of a typed flag says what the flag takes; a config file that fails to load gives
    the reason from the end of the traceback that ml_collections puts in its message.
    """
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    bad_value = re.match(
        r"flag --([\w-]+)=(.*?): (invalid literal for int|could not convert)", lines[0]
    )
    if bad_value:
        kind = "an integer" if "int" in bad_value.group(3) else "a number"
        return f"--{bad_value.group(1)} must be {kind}; got {bad_value.group(2)!r}"
    if len(lines) > 1 and lines[0].endswith("Error whilst parsing config file:"):
        return f"{lines[0]} {lines[-1]}"
    return lines[0]


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


def run_main(run: Callable[[Sequence[str]], int], argv: Sequence[str] | None = None) -> int:
    """Runs ``run(argv)``; a :class:`UsageError` becomes ``error: ...`` on stderr and exit code 2.

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
    try:
        return run(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C outside training (which saves and exits by itself)
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
