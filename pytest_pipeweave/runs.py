"""Run folders: where a test run's server lives, which processes own it, and dead runs' leftovers.

One run is one pytest session, or all the pytest-xdist workers of one session: they share the
run's folder, its lock and its server. The state file lists the owning processes by pid *and*
start time, so a reused pid never makes a dead run look alive. A run whose owners are all gone
(killed with SIGKILL, say) is a leftover: the next run stops its server and removes its folder.
Nothing else is touched: only folders under our own base folder, whose state we wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

STATE_FILE = "run.json"


def base_dir() -> Path:
    """Our folder for servers and caches: tmpfs when there is one (initdb and copies are faster).

    ``PIPEWEAVE_TMPDIR`` overrides the parent. The folder is 0755 so that a server running as
    an unprivileged user (when tests run as root) can reach its own subfolders.
    """
    parent = os.environ.get("PIPEWEAVE_TMPDIR")
    if not parent:
        shm = Path("/dev/shm")
        writable = shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)
        parent = str(shm) if writable else tempfile.gettempdir()
    path = Path(parent) / f"pytest-pipeweave-{os.getuid()}"
    path.mkdir(mode=0o755, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"{path} is not a folder owned by uid {os.getuid()}: refusing to use it")
    path.chmod(0o755)
    return path


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


class Run:
    """The folder, lock and state of one test run."""

    def __init__(self, base: Path, key: str) -> None:
        self.base = base
        self.key = key
        self.path = base / f"run-{key}"
        # Outside the folder: the last worker out removes the folder while others may wait.
        self.lock = FileLock(str(base / f"run-{key}.lock"))

    def read_state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.path / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def write_state(self, state: dict[str, Any]) -> None:
        """Atomic, and readable by our uid only (it may hold a server password)."""
        self.path.mkdir(mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".state-")
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle)
        os.replace(tmp, self.path / STATE_FILE)

    def add_owner(self, state: dict[str, Any], owner: ProcessId) -> None:
        owners = [o for o in live_owners(state) if o != owner]
        state["owners"] = [asdict(o) for o in (*owners, owner)]

    def remove_owner(self, state: dict[str, Any], owner: ProcessId) -> list[ProcessId]:
        """Drop ``owner``; return the owners still alive."""
        owners = [o for o in live_owners(state) if o != owner]
        state["owners"] = [asdict(o) for o in owners]
        return owners

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def live_owners(state: dict[str, Any]) -> list[ProcessId]:
    owners = []
    for raw in state.get("owners", []):
        with contextlib.suppress(TypeError):
            owner = ProcessId(**raw)
            if owner.alive():
                owners.append(owner)
    return owners


def dead_runs(base: Path, exclude: str | None = None) -> Iterator[tuple[Run, dict[str, Any]]]:
    """Runs under ``base`` that no live process owns and nobody asked to keep, each locked.

    A run is yielded while we hold its lock, so a run that is just starting (its first owner
    writing its state under the lock) is never taken for a leftover.
    """
    for path in sorted(base.glob("run-*")):
        if not path.is_dir():
            continue
        key = path.name[len("run-") :]
        if key == exclude:
            continue
        run = Run(base, key)
        try:
            run.lock.acquire(timeout=0)
        except Timeout:
            continue
        try:
            state = run.read_state()
            if not state.get("keep") and not live_owners(state) and _settled(path, state):
                yield run, state
        finally:
            run.lock.release()


def _settled(path: Path, state: dict[str, Any]) -> bool:
    # A folder without state may belong to a run between mkdir and its first write: give it
    # a minute before calling it a leftover.
    if state:
        return True
    with contextlib.suppress(OSError):
        return time.time() - path.stat().st_mtime > 60
    return False
