"""Tests of train/core/interrupts.py: a Ctrl-C that Python drops is recorded, not lost."""

from __future__ import annotations

import signal
import sys

from conftest import drop_a_ctrl_c

from train.core import interrupts


def test_a_dropped_ctrl_c_is_recorded_and_not_reported(monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))

    class FailsWhenFinalised:
        def __del__(self):
            raise RuntimeError("a finaliser's own error")

    before = signal.getsignal(signal.SIGINT), sys.unraisablehook
    with interrupts.recorded() as left:
        drop_a_ctrl_c()
        assert interrupts.received() == [signal.SIGINT]
        FailsWhenFinalised()  # other errors Python drops are still reported
    assert [type(e) for e in reported] == [RuntimeError]
    assert (signal.getsignal(signal.SIGINT), sys.unraisablehook) == before  # both restored
    assert left == [signal.SIGINT] and interrupts.received() == []  # no record outlives the block

    with interrupts.recorded() as left:
        drop_a_ctrl_c()
        assert interrupts.take() == [signal.SIGINT]  # as training takes it
        assert interrupts.take() == []
    assert left == []

    # outside: Python's own handling (reported and dropped), nothing recorded; the default handler
    # set here, as a test runner's worker may ignore SIGINT
    default = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        drop_a_ctrl_c()
    finally:
        signal.signal(signal.SIGINT, default)
    assert [type(e) for e in reported] == [RuntimeError, KeyboardInterrupt]
    assert interrupts.received() == []
