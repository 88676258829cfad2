"""Processes by pid and start time, and polling with a deadline.

A pid alone is not an identity: once a process ends, the kernel may give its pid to another.
Its start time (from /proc) tells them apart, so a dead run never looks alive because an
unrelated process now has its owner's pid.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessId:
    """A process, told apart from a later one that reuses its pid by its start time."""

    pid: int
    started: str | None
    host: str

    @classmethod
    def of(cls, pid: int) -> ProcessId:
        return cls(pid, _start_time(pid), socket.gethostname())

    @classmethod
    def current(cls) -> ProcessId:
        return cls.of(os.getpid())

    def alive(self) -> bool:
        """True while this very process runs (on another host we cannot tell: assume alive)."""
        if self.host != socket.gethostname():
            return True
        return process_alive(self.pid, self.started)


def process_alive(pid: int, started: str | None = None) -> bool:
    """True when ``pid`` runs, is not a zombie, and (if given) started at ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat_fields(pid)
    if fields is None:
        return os.name != "posix" or not Path("/proc/self/stat").exists()
    state, start = fields
    return state not in ("Z", "X") and (started is None or start == started)


def process_arguments(pid: int) -> list[str]:
    """The command line of ``pid``: /proc on Linux, ``ps`` elsewhere (macOS); [] if gone.

    ``ps`` joins the arguments with spaces, so its answer is one string: enough to find a path.
    """
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [out.stdout.strip()] if out.returncode == 0 else []


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[1] if fields else None


def _stat_fields(pid: int) -> tuple[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest[0], rest[19]


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds pass; return its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
