"""One server for all the processes of a test run: the first starts it, the last stops it.

Under pytest-xdist every worker calls ``acquire()``; the run's file lock makes the first one
start the server and the others reuse it. ``release()`` removes the caller from the owners;
the last owner out stops the server, unless asked to keep it. The first worker also records
the xdist controller (``co_owner``) as an owner, and the controller releases last: a worker
that finishes before another has even joined must not stop the server. Before starting, the
leftovers of dead runs are removed (see ``runs``).

With ``reuse`` the run's folder is the one kept for reuse (``REUSE_KEY``): the server outlives
the run, and the next run with reuse joins it, unless it stopped, lost its data folder or runs
other binaries than the settings now choose; then it is replaced. A server in use by another
run is never replaced: this run gets one of its own instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import time
from pathlib import Path

from pytest_pipeweave.errors import FolderUnusable
from pytest_pipeweave.processes import ProcessId
from pytest_pipeweave.runs import (
    REUSE_KEY,
    Run,
    RunState,
    base_dir,
    base_path,
    new_run_key,
    remove_dead_runs,
)
from pytest_pipeweave.servers import (
    PreparedDatabase,
    Server,
    ServerInfo,
    create_server,
    describe_backend,
    server_from_state,
)
from pytest_pipeweave.settings import Settings

# What a write in the servers' folder fails with when the folder, not the code, is at fault.
FOLDER_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class SharedServer:
    """This process's share of its run's server."""

    def __init__(
        self,
        settings: Settings,
        run_key: str | None = None,
        *,
        co_owner: ProcessId | None = None,
        prepared: PreparedDatabase | None = None,
    ) -> None:
        """``prepared``: a database the server should start with made, where its backend can
        keep one made (``PreparedDatabase``)."""
        self.settings = settings
        self.prepared = prepared
        self._server: Server | None = None  # the server, when this process started it
        self.base = base_path(settings.tmpdir)
        self.run_key = run_key or new_run_key()
        self.run = Run(self.base, REUSE_KEY if settings.reuse else self.run_key)
        self.me = ProcessId.current()
        self.co_owner = co_owner
        self.state = RunState()
        # With reuse: whether this run joined a server an earlier run left, and, when it
        # started one instead of the one kept, why (None: nothing was kept).
        self.reused = False
        self.replaced: str | None = None

    @property
    def info(self) -> ServerInfo | None:
        """How to reach the server, once this process has acquired it."""
        return self.state.info

    def acquire(self) -> ServerInfo:
        """The run's server, started now if no process of the run has started it yet.

        A servers' folder that is full, read-only or closed to us is one ``FolderUnusable``.
        """
        base_dir(self.settings.tmpdir)
        try:
            return self._acquire()
        except OSError as exc:
            if exc.errno not in FOLDER_ERRORS:
                raise
            raise FolderUnusable(self.base, exc) from None

    def _acquire(self) -> ServerInfo:
        with self.run.lock:
            state = self.run.read_state() or RunState()
            fingerprint = None
            if self.settings.reuse:
                fingerprint = describe_backend(self.settings, self.base / "cache")
            alive = state.server is not None and server_from_state(state.server).is_alive()
            if state.info and alive and state.fingerprint == fingerprint:
                state.add_owner(self.me)
                self.run.write_state(state)
                self.state = state
                self.reused = self.settings.reuse and state.started_for != self.run_key
                return state.info
            if state.server and self.settings.reuse:
                if alive and state.live_owners():
                    return self._start_own()  # another run uses it: leave it be
                self.replaced = "replacing the reused one: " + (
                    f"it ran {state.fingerprint}"
                    if alive
                    else "it was not running (or its data folder was gone)"
                )
                server_from_state(state.server).stop()
                state = RunState(owners=state.live_owners())
            remove_dead_runs(self.base, exclude=self.run.key)
            return self._start(state, fingerprint)

    def _start_own(self) -> ServerInfo:
        """For a run with reuse that cannot have the reused server: one of its own, not kept."""
        self.run = Run(self.base, self.run_key)
        self.replaced = "not the reused one: it runs other binaries and another run uses it"
        with self.run.lock:
            return self._start(self.run.read_state() or RunState(), None)

    def _start(self, state: RunState, fingerprint: str | None) -> ServerInfo:
        """Start the server; ``state`` is the run's (its owners so far), updated and written."""
        server = create_server(
            self.settings,
            folder=self.run.path,
            cache_dir=self.base / "cache",
            run_is_dead=self.run_is_dead,
            prepared=self.prepared,
        )
        self._server = server
        state.keep = self.settings.keep or fingerprint is not None
        state.fingerprint = fingerprint
        state.started_for = self.run_key
        state.server = server.to_state()
        for owner in (self.co_owner, self.me):
            if owner is not None:
                state.add_owner(owner)
        started = time.perf_counter()
        try:
            self.run.write_state(state)
            info = server.start()
            state.server = server.to_state()
            # A server kept for reuse outlives runs: each run drops its own databases on it.
            state.info = dataclasses.replace(
                info, folder=str(self.run.path), ephemeral=info.ephemeral and fingerprint is None
            )
            state.startup_seconds = round(time.perf_counter() - started, 3)
            state.warm_start = getattr(server, "warm_start", None)
            self.run.write_state(state)
        except BaseException:
            self._abandon(server, state)
            raise
        self.state = state
        return state.info

    def _abandon(self, server: Server, state: RunState) -> None:
        """After a failed start: stop what started, and leave the run's folder only to its
        other owners (the xdist controller), or remove it."""
        with contextlib.suppress(Exception):
            server.stop()
        state.server = None
        state.info = None
        try:
            if state.remove_owner(self.me):
                self.run.write_state(state)
                return
        except OSError:
            pass
        self.run.remove()

    def release(self, owner: ProcessId | None = None, *, for_later: bool = True) -> None:
        """Leave the run (as ``owner``, by default this process); the last owner out stops
        the server and removes the run's folder, unless the server is to be kept. Then, if
        ``for_later``, what the server leaves for later runs is made, now that no test waits:
        the local backend's cached cluster with the prepared database."""
        if self.run.path.exists():
            self._leave(owner)
        cache_prepared = getattr(self._server, "cache_prepared", None)
        self._server = None
        if for_later and cache_prepared is not None:
            cache_prepared()

    def _leave(self, owner: ProcessId | None) -> None:
        with self.run.lock:
            state = self.run.read_state()
            if state is None:
                return
            remaining = state.remove_owner(owner or self.me)
            if remaining or state.keep:
                self.run.write_state(state)
                return
            if state.server:
                server_from_state(state.server).stop()
            self.run.remove()

    def stop_hint(self) -> str:
        """How a user stops a kept server by hand."""
        hint = server_from_state(self.state.server).stop_hint() if self.state.server else ""
        return f"{hint} && rm -rf {self.run.path}" if hint else f"rm -rf {self.run.path}"

    def run_is_dead(self, run_folder: str) -> bool:
        """For a container labelled with ``run_folder``: has that run ended?

        Only runs under our own base folder are judged; anything else is not ours to remove.
        """
        path = Path(run_folder)
        if path.parent != self.base or path == self.run.path:
            return False
        if not path.exists():
            return True
        state = Run(self.base, path.name[len("run-") :]).read_state()
        return state is None or state.ended


def stop_reused_server(settings: Settings) -> tuple[bool, str]:
    """Stop the server kept for reuse and remove its folder, unless a run uses it.

    Returns whether nothing is left, and what was done, in one line.
    """
    run = Run(base_path(settings.tmpdir), REUSE_KEY)
    if not run.path.exists():
        return True, f"no server is kept for reuse in {run.base}"
    with run.lock:
        state = run.read_state()
        owners = state.live_owners() if state else []
        if owners:
            pids = ", ".join(str(owner.pid) for owner in owners)
            return False, f"the server kept for reuse is in use (pid {pids}): left running"
        if state and state.server:
            server_from_state(state.server).stop()
        run.remove()
    Path(run.lock.lock_file).unlink(missing_ok=True)
    return True, f"stopped the server kept for reuse and removed {run.path}"
