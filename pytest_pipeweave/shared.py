"""One server for all the processes of a test run: the first starts it, the last stops it.

Under pytest-xdist every worker calls ``acquire()``; the run's file lock makes the first one
start the server (and build the template database) and the others reuse it. ``release()``
removes the caller from the owners; the last owner out stops the server, unless asked to keep
it. The xdist controller ``reserve()``s the run before its workers exist and leaves it last: a
worker that finishes before another has even joined must not stop the server. Before
starting, the leftovers of dead runs are removed (see ``runs``). ``databases`` (and with it
psycopg) is imported only where a database is touched: the xdist controller never does.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_pipeweave.runs import ProcessId, Run, base_dir, dead_runs, live_owners
from pytest_pipeweave.servers import (
    ServerInfo,
    choose_backend,
    create_server,
    server_from_state,
)
from pytest_pipeweave.settings import Settings

if TYPE_CHECKING:
    from pytest_pipeweave.databases import TemplateSetup

# A run's lock file outlives its folder (a waiting worker may hold it open); once nobody can be
# waiting, it is clutter.
_STALE_LOCK_SECONDS = 60


class SharedServer:
    """This process's share of its run's server."""

    def __init__(self, settings: Settings, run_key: str | None = None, base: Path | None = None):
        self.settings = settings
        self.base = base or base_dir()
        self.run = Run(self.base, run_key or uuid.uuid4().hex[:12])
        self.me = ProcessId.current()
        self.info: ServerInfo | None = None
        self.state: dict[str, Any] = {}

    def acquire(self) -> ServerInfo:
        """The run's server, started now if no process of the run has started it yet."""
        with self.run.lock:
            state = self.run.read_state()
            server_state = state.get("server")
            if state.get("info") and server_state and server_from_state(server_state).is_alive():
                self.run.add_owner(state, self.me)
                self.run.write_state(state)
                self.state = state
                self.info = ServerInfo.from_state(state["info"])
                return self.info
            remove_dead_runs(self.base, exclude=self.run.key)
            self.info = self._start(state)
            return self.info

    def reserve(self) -> None:
        """Own the run without starting anything: the server starts when a process needs it."""
        with self.run.lock:
            state = self.run.read_state()
            self.run.add_owner(state, self.me)
            self.run.write_state(state)
            self.state = state

    def _start(self, state: dict[str, Any]) -> ServerInfo:
        """Start the server; ``state`` is the run's (its owners so far), updated and written."""
        settings = self.settings
        backend = choose_backend(settings.backend, settings.url, settings.pg_bin)
        server = create_server(
            backend,
            url=settings.url,
            image=settings.image,
            pg_bin=settings.pg_bin,
            workdir=self.run.path,
            cache_dir=self.base / "cache",
            run_key=str(self.run.path),
            run_is_dead=self.run_is_dead,
        )
        state.update(keep=settings.keep, server=server.to_state())
        self.run.add_owner(state, self.me)
        self.run.write_state(state)
        started = time.perf_counter()
        try:
            info = server.start()
        except BaseException:
            server.stop()
            del state["server"]
            if self.run.remove_owner(state, self.me):
                self.run.write_state(state)
            else:
                self.run.remove()
            raise
        if info.backend == "url":
            from pytest_pipeweave.databases import drop_leftover_databases

            drop_leftover_databases(info, self.run_is_dead)
        state.update(
            server=server.to_state(),
            info=info.to_state(),
            startup_seconds=round(time.perf_counter() - started, 3),
            warm_start=getattr(server, "warm_start", None),
        )
        self.run.write_state(state)
        self.state = state
        return info

    def template(self, setup: TemplateSetup | None) -> str:
        """The run's template database (schema and ``setup`` applied), built once per run."""
        from pytest_pipeweave.databases import create_template, database_name, owner_comment

        assert self.info is not None
        with self.run.lock:
            state = self.run.read_state()
            if state.get("template"):
                return str(state["template"])
            name = database_name(self.run.key, "template")
            started = time.perf_counter()
            create_template(self.info, name, setup, comment=owner_comment(str(self.run.path)))
            state["template"] = name
            state["template_seconds"] = round(time.perf_counter() - started, 3)
            self.run.write_state(state)
            self.state = state
            return name

    def release(self, databases: Sequence[str] = ()) -> None:
        """Leave the run; the last process out stops the server (unless it is to be kept).

        On a server that outlives the run (url backend), ``databases`` (this process's) and,
        for the last process, the template are dropped; elsewhere they go with the server.
        """
        with self.run.lock:
            state = self.run.read_state()
            remaining = self.run.remove_owner(state, self.me)
            if state.get("keep"):
                self.run.write_state(state)
                return
            info = ServerInfo.from_state(state["info"]) if state.get("info") else None
            on_url = info is not None and info.backend == "url"
            drop = list(databases) if on_url else []
            if not remaining and on_url and state.get("template"):
                drop.append(str(state["template"]))
            if drop:
                from pytest_pipeweave.databases import drop_database

                for name in drop:
                    with contextlib.suppress(Exception):
                        drop_database(info, name)  # type: ignore[arg-type]
            if remaining:
                self.run.write_state(state)
                return
            if state.get("server"):
                server_from_state(state["server"]).stop()
            self.run.remove()

    def stop_hint(self) -> str:
        """How a user stops a kept server by hand."""
        from pytest_pipeweave.databases import database_name

        server = self.state.get("server") or {}
        if server.get("backend") == "local":
            return f"kill -QUIT {server.get('pid')} && rm -rf {self.run.path}"
        if server.get("backend") == "docker":
            return f"docker rm -f {server.get('container_id')} && rm -rf {self.run.path}"
        databases = database_name(self.run.key, "*")
        return f"drop the databases named {databases} and rm -rf {self.run.path}"

    def run_is_dead(self, run_path: str) -> bool:
        """For a container or database labelled with ``run_path``: has that run ended?

        Only runs under our own base folder are judged; anything else is not ours to remove.
        """
        path = Path(run_path)
        if path.parent != self.base or path == self.run.path:
            return False
        if not path.exists():
            return True
        state = Run(self.base, path.name[len("run-") :]).read_state()
        return not state.get("keep") and not live_owners(state)


def remove_dead_runs(base: Path, exclude: str | None = None) -> list[str]:
    """Stop the servers of runs whose processes are all gone and remove their folders."""
    removed = []
    for run, state in dead_runs(base, exclude):
        server_state = state.get("server") or {
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
