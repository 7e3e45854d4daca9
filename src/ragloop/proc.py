"""Is the process that claimed a row still alive? Shared by training jobs and eval runs, which both record
who runs them so that a crash (kill -9, OOM, power loss) is told apart from work still in progress."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def machine() -> dict[str, str]:
    """Host name and boot id: a pid means something only on the same machine since the same boot."""
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
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner_gone(owner: dict | None) -> bool:
    """Whether the process recorded in ``owner`` ({host, boot_id, pid}) is certainly dead: same host and it
    rebooted since, or same boot and the pid is gone. On another host nothing is certain: False."""
    if not owner or not owner.get("pid"):
        return False
    here = machine()
    if owner.get("host") != here["host"]:
        return False
    if owner.get("boot_id") and here["boot_id"] and owner["boot_id"] != here["boot_id"]:
        return True
    return not pid_alive(int(owner["pid"]))
