"""The shared heartbeat ticker: it keeps beating through a failing beat and stops for good."""

from __future__ import annotations

import threading
import time

from ragloop.proc import Periodic


def test_periodic_survives_a_failing_beat_and_stops() -> None:
    calls: list[float] = []
    third = threading.Event()

    def beat() -> None:
        calls.append(time.monotonic())
        if len(calls) == 3:
            third.set()
        if len(calls) == 1:
            raise RuntimeError("database is locked")  # must not end the thread

    with Periodic(0.01, beat, name="test-beat") as ticker:
        assert third.wait(5), "the ticker stopped after a failing beat"
    assert not ticker._thread.is_alive()
    stopped_at = len(calls)
    time.sleep(0.05)
    assert len(calls) == stopped_at  # nothing after stop


def test_periodic_stop_without_start_is_harmless() -> None:
    Periodic(1.0, lambda: None, name="never-started").stop(timeout=0.1)
