"""Is the process that claimed a row still alive? Shared by training jobs and eval runs, which both record
who runs them so that a crash (kill -9, OOM, power loss) is told apart from work still in progress."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import psutil


def machine() -> dict[str, str]:
    """Host name and boot id: a pid means something only on the same machine since the same boot."""
    # Read by hand: psutil offers boot_time(), a clock reading that moves when the clock is stepped and
    # repeats to the second across quick reboots; the kernel's boot id is random per boot, so it tells two
    # boots apart for certain.
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return {"host": socket.gethostname(), "boot_id": boot}


def pid_alive(pid: int | None) -> bool:
    """Whether a process exists and is not a zombie (a killed child nobody has reaped yet is dead)."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # it exists; another user's process we may not inspect
        return True


# A process recorded on another machine (several homes on one PostgreSQL) cannot have its pid checked from
# here; only a heartbeat silent this long proves it dead.
REMOTE_STALE_S = 300.0


def owner_gone(owner: dict | None, silent_s: float | None = None) -> bool:
    """Whether the process recorded in ``owner`` ({host, boot_id, pid}) is certainly dead: on this host, it
    rebooted since or the pid is gone; on another host, its heartbeat has been silent for ``silent_s`` >
    ``REMOTE_STALE_S`` seconds (without a heartbeat age nothing is certain there: False). One rule for
    training jobs and eval runs alike."""
    if not owner:
        return False
    here = machine()
    if owner.get("host", here["host"]) != here["host"]:
        return silent_s is not None and silent_s > REMOTE_STALE_S
    if owner.get("boot_id") and here["boot_id"] and owner["boot_id"] != here["boot_id"]:
        return True
    return not pid_alive(int(owner["pid"]) if owner.get("pid") else None)


class Periodic:
    """Call ``fn`` every ``interval_s`` seconds from a daemon thread until ``stop()`` (or the end of a
    ``with`` block). The heartbeat of training jobs and eval runs: a thread of its own, so a long step or
    batch never looks like a dead owner. An exception from ``fn`` (a locked database) is swallowed, since it
    must not kill the work it watches; the next tick tries again."""

    def __init__(self, interval_s: float, fn: Callable[[], object], name: str):
        self.interval_s = interval_s
        self.fn = fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(Exception):
                self.fn()

    def start(self) -> Periodic:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> Periodic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
