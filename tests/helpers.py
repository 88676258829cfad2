"""Plain helpers for the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from pytest_pipeweave import LocalServer
from pytest_pipeweave.runs import process_alive, wait_until
from pytest_pipeweave.servers.local import server_user


def kill_server(server: LocalServer) -> None:
    """SIGKILL the postmaster and every backend: the whole server dies, as with its machine."""
    assert server.pid is not None
    pids = [server.pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == server.pid:
                pids.append(int(stat.parent.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not any(process_alive(pid) for pid in pids), 10)


def give_to_server_user(path: Path, mode: int) -> None:
    path.chmod(mode)
    server_user().chown(path)
