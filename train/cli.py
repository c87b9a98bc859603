"""What the command-line tools share: usage errors as one line with exit code 2, and logging."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line, config or data problem; reported in one line with exit code 2."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_main(run: Callable[[Sequence[str]], int], argv: Sequence[str] | None = None) -> int:
    """Runs ``run(argv)``; a :class:`UsageError` becomes ``error: ...`` on stderr and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("train").setLevel(logging.INFO)
    # TFDS and orbax log through absl; their warnings are noise for a CLI (errors still show).
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        return run(sys.argv if argv is None else argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
