"""Ctrl-C (SIGINT) and SIGTERM that no moment of a command can lose.

Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main thread is; when that is
a garbage-collection or finaliser callback (JAX runs some while it compiles and loads), Python
prints the exception as "ignored" and drops it, and the command would go on as if the key was never
pressed.  While a command runs (:func:`recorded`), its handler also records the signal, and SIGTERM
(what ``kill``, schedulers and ``timeout`` send) is handled the same way instead of ending the
process on the spot: the command stops as for a Ctrl-C (a sweep records its runs as interrupted
and writes its report) and exits 128 + the signal's number.  Training takes the record when it
starts (:func:`take`) and stops before its first step; a command that ends with a record nothing
took exits as interrupted.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


def _record_and_raise(signum, frame) -> None:
    del frame
    _received.append(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def recorded() -> Iterator[list[int]]:
    """While the block runs, SIGINT and SIGTERM raise ``KeyboardInterrupt`` (SIGINT's default)
    and are recorded; Python does not print the ones it drops.  Yields a list that, when the block
    ends, holds the signals recorded and not taken; the record is then empty.  Outside the main
    thread nothing changes (and the list stays empty)."""
    left: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield left
        return
    _received.clear()
    previous = {sig: signal.signal(sig, _record_and_raise) for sig in SIGNALS}
    hook = sys.unraisablehook

    def drop_recorded_interrupts(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and _received):
            hook(unraisable)

    sys.unraisablehook = drop_recorded_interrupts
    try:
        yield left
    finally:
        left += take()
        sys.unraisablehook = hook
        for sig, handler in previous.items():  # None: set outside Python; back to the default
            default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, default if handler is None else handler)


def received() -> list[int]:
    """The signals recorded and not yet taken, oldest first."""
    return list(_received)


def exit_code(signals: list[int]) -> int:
    """128 + the first of ``signals`` (a shell's code for a process a signal stopped); 130, as
    for Ctrl-C, when there is none."""
    return 128 + int(signals[0] if signals else signal.SIGINT)


def take() -> list[int]:
    """The signals recorded and not yet taken, oldest first; forgets them."""
    taken = list(_received)
    _received.clear()
    return taken
