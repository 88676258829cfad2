"""Run folders: where a test run's server lives, which processes own it, and dead runs' leftovers.

One run is one pytest session, or all the pytest-xdist workers of one session, or one
``ephemeral_server`` block: they share the run's folder, its lock and its server. The state
file lists the owning processes by pid *and* start time (see ``processes``), so a reused pid
never makes a dead run look alive. A run whose owners are all gone (killed with SIGKILL, say)
is a leftover: the next run stops its server and removes its folder. Nothing else is touched:
only folders under our own base folder, whose state we wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from pytest_pipeweave.errors import FolderUnusable, ServerUnavailable
from pytest_pipeweave.processes import ProcessId
from pytest_pipeweave.servers import ServerInfo, server_from_state

STATE_FILE = "run.json"
# A folder without state may belong to a run between its mkdir and its first write.
_UNSETTLED_SECONDS = 60
# A run's lock file outlives its folder (a waiting worker may hold it open); once nobody can be
# waiting, it is clutter.
_STALE_LOCK_SECONDS = 60


def new_run_key() -> str:
    """A run key: 12 hex digits, naming the run's folder and its databases."""
    return uuid.uuid4().hex[:12]


def run_key_for(run_id: str) -> str:
    """The run key of a run that has an id already (pytest-xdist's ``testrunuid``, any text),
    on this host: CI shards handed one id on many hosts still get keys of their own."""
    return _digest(f"{_this_host()} {run_id}")


def _this_host() -> str:
    """The host name and the kernel's boot id: hosts of one name (containers of one image)
    on different machines differ by the second, containers of one machine by the first."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = ""
    return f"{socket.gethostname()} {boot_id}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# The run folder of the server kept for reuse (--pipeweave-reuse): one per user and base folder.
REUSE_KEY = _digest("reuse")


def base_path(parent: str | None) -> Path:
    """Our folder for servers and caches, under ``parent`` (PIPEWEAVE_TMPDIR), else under
    tmpfs when there is one (initdb and copies are faster there), else the temporary folder."""
    if not parent:
        shm = Path("/dev/shm")
        writable = shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)
        parent = str(shm) if writable else tempfile.gettempdir()
    return Path(parent) / f"pytest-pipeweave-{os.getuid()}"


def base_dir(parent: str | None = None) -> Path:
    """``base_path(parent)``, created if need be: 0755 so that a server running as an
    unprivileged user (when tests run as root) can reach its own subfolders."""
    path = base_path(parent)
    try:
        path.mkdir(mode=0o755, exist_ok=True)
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise ServerUnavailable(
                f"{path} is not a folder owned by uid {os.getuid()}: refusing to use it "
                "(set PIPEWEAVE_TMPDIR elsewhere)"
            )
        if stat.S_IMODE(info.st_mode) != 0o755:
            path.chmod(0o755)
    except OSError as exc:
        raise FolderUnusable(path, exc) from None
    return path


@dataclass
class RunState:
    """What a run's folder records: who owns the run, and its server once started."""

    owners: list[ProcessId] = field(default_factory=list)
    keep: bool = False
    # The backend's own description of its server (``Server.to_state()``): enough to stop it.
    server: dict[str, Any] | None = None
    info: ServerInfo | None = None
    startup_seconds: float | None = None
    warm_start: bool | None = None
    # A server kept for reuse: which binaries or image it runs (``describe_backend``), and
    # the pytest session it was started for.
    fingerprint: str | None = None
    started_for: str | None = None

    def live_owners(self) -> list[ProcessId]:
        return [owner for owner in self.owners if owner.alive()]

    def add_owner(self, owner: ProcessId) -> None:
        self.owners = [o for o in self.live_owners() if o != owner] + [owner]

    def remove_owner(self, owner: ProcessId) -> list[ProcessId]:
        """Drop ``owner``; return the owners still alive."""
        self.owners = [o for o in self.live_owners() if o != owner]
        return self.owners

    @property
    def ended(self) -> bool:
        """True when no live process owns the run and nobody asked to keep its server."""
        return not self.keep and not self.live_owners()

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["info"] = self.info.to_state() if self.info else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunState:
        owners = []
        for raw in data.get("owners", []):
            with contextlib.suppress(TypeError):
                owners.append(ProcessId(**raw))
        info = data.get("info")
        return cls(
            owners=owners,
            keep=bool(data.get("keep")),
            server=data.get("server"),
            info=ServerInfo.from_state(info) if info else None,
            startup_seconds=data.get("startup_seconds"),
            warm_start=data.get("warm_start"),
            fingerprint=data.get("fingerprint"),
            started_for=data.get("started_for"),
        )


class Run:
    """The folder, lock and state of one test run."""

    def __init__(self, base: Path, key: str) -> None:
        self.base = base
        self.key = key
        self.path = base / f"run-{key}"
        # Outside the folder: the last worker out removes the folder while others may wait.
        self.lock = FileLock(str(base / f"run-{key}.lock"))

    def read_state(self) -> RunState | None:
        """The recorded state; None when there is none (yet), or it cannot be read."""
        try:
            data = json.loads((self.path / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return RunState.from_json(data) if isinstance(data, dict) else None

    def write_state(self, state: RunState) -> None:
        """Atomic, and readable by our uid only (it may hold a server password)."""
        self.path.mkdir(mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".state-")
        with os.fdopen(fd, "w") as handle:
            json.dump(state.to_json(), handle)
        os.replace(tmp, self.path / STATE_FILE)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def settled(self, state: RunState | None) -> bool:
        """False for a folder so new that its first owner may still be writing its state."""
        if state is not None:
            return True
        with contextlib.suppress(OSError):
            return time.time() - self.path.stat().st_mtime > _UNSETTLED_SECONDS
        return False


def dead_runs(base: Path, exclude: str | None = None) -> Iterator[tuple[Run, RunState | None]]:
    """Runs under ``base`` that have ended, each yielded while we hold its lock.

    So a run that is just starting (its first owner writing its state under the lock) is never
    taken for a leftover.
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
            if (state is None or state.ended) and run.settled(state):
                yield run, state
        finally:
            run.lock.release()


def remove_dead_runs(base: Path, exclude: str | None = None) -> list[str]:
    """Stop the servers of runs whose processes are all gone and remove their folders."""
    removed = []
    for run, state in dead_runs(base, exclude):
        server_state = (state.server if state else None) or {
            "backend": "local",
            "workdir": str(run.path / "local"),
        }
        with contextlib.suppress(Exception):
            server_from_state(server_state).stop()
        run.remove()
        removed.append(run.key)
    now = time.time()
    for lock in base.glob("run-*.lock"):
        with contextlib.suppress(OSError):
            if (
                not lock.with_suffix("").exists()
                and now - lock.stat().st_mtime > _STALE_LOCK_SECONDS
            ):
                lock.unlink()
    return removed
