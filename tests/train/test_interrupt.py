"""carousel.train.interrupt: signals deferred to the end of a step (the loop's use of it is
tested in test_loop.py)."""

import os
import signal
import threading

import pytest

from carousel.train.interrupt import deferred_interrupt


def _handlers():
    return {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}


def test_the_first_signal_is_noted_the_second_stops_and_handlers_come_back():
    before = _handlers()
    with deferred_interrupt() as interrupted:
        assert interrupted() is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupted() == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert _handlers() == before


def test_disabled_ignored_and_other_threads_leave_the_handlers_alone():
    before = _handlers()
    with deferred_interrupt(enabled=False) as interrupted:
        assert _handlers() == before and interrupted() is None
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with deferred_interrupt():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # nohup's choice stays
    finally:
        signal.signal(signal.SIGTERM, old)
    seen = []

    def worker():
        with deferred_interrupt() as interrupted:
            seen.append((_handlers() == before, interrupted()))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [(True, None)]
