"""One server for all the processes of a test run: the first starts it, the last stops it.

Under pytest-xdist every worker calls ``acquire()``; the run's file lock makes the first one
start the server and the others reuse it. ``release()`` removes the caller from the owners;
the last owner out stops the server, unless asked to keep it. The first worker also records
the xdist controller (``co_owner``) as an owner, and the controller releases last: a worker
that finishes before another has even joined must not stop the server. Before starting, the
leftovers of dead runs are removed (see ``runs``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from pytest_pipeweave.processes import ProcessId
from pytest_pipeweave.runs import Run, RunState, base_dir, base_path, new_run_key, remove_dead_runs
from pytest_pipeweave.servers import ServerInfo, create_server, server_from_state
from pytest_pipeweave.settings import Settings


class SharedServer:
    """This process's share of its run's server."""

    def __init__(
        self, settings: Settings, run_key: str | None = None, *, co_owner: ProcessId | None = None
    ) -> None:
        self.settings = settings
        self.base = base_path(settings.tmpdir)
        self.run = Run(self.base, run_key or new_run_key())
        self.me = ProcessId.current()
        self.co_owner = co_owner
        self.state = RunState()

    @property
    def info(self) -> ServerInfo | None:
        """How to reach the server, once this process has acquired it."""
        return self.state.info

    def acquire(self) -> ServerInfo:
        """The run's server, started now if no process of the run has started it yet."""
        base_dir(self.settings.tmpdir)
        with self.run.lock:
            state = self.run.read_state() or RunState()
            if state.info and state.server and server_from_state(state.server).is_alive():
                state.add_owner(self.me)
                self.run.write_state(state)
                self.state = state
                return state.info
            remove_dead_runs(self.base, exclude=self.run.key)
            return self._start(state)

    def _start(self, state: RunState) -> ServerInfo:
        """Start the server; ``state`` is the run's (its owners so far), updated and written."""
        server = create_server(
            self.settings,
            folder=self.run.path,
            cache_dir=self.base / "cache",
            run_is_dead=self.run_is_dead,
        )
        state.keep = self.settings.keep
        state.server = server.to_state()
        for owner in (self.co_owner, self.me):
            if owner is not None:
                state.add_owner(owner)
        self.run.write_state(state)
        started = time.perf_counter()
        try:
            info = server.start()
        except BaseException:
            server.stop()
            state.server = None
            if state.remove_owner(self.me):
                self.run.write_state(state)
            else:
                self.run.remove()
            raise
        state.server = server.to_state()
        state.info = dataclasses.replace(info, folder=str(self.run.path))
        state.startup_seconds = round(time.perf_counter() - started, 3)
        state.warm_start = getattr(server, "warm_start", None)
        self.run.write_state(state)
        self.state = state
        return state.info

    def release(self, owner: ProcessId | None = None) -> None:
        """Leave the run (as ``owner``, by default this process); the last owner out stops
        the server and removes the run's folder, unless the server is to be kept."""
        if not self.run.path.exists():
            return  # no process of the run started a server: nothing to leave
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
