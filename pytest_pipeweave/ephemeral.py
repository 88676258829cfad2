"""Servers and databases without pytest: in a script, a notebook or a unittest suite.

::

    from pytest_pipeweave import ephemeral_server, ephemeral_database

    with ephemeral_server() as server:              # ServerInfo: local, docker or url
        with ephemeral_database(server) as url:     # a fresh database with the schema
            ...

Both clean up when the block ends, also on an exception or Ctrl-C (KeyboardInterrupt): the
server stops and its folder goes, the database is dropped. A block that is never left (a
unittest class context when Ctrl-C stops the run) is cleaned up when the interpreter exits,
as testing.postgresql does. A process killed outright leaves them behind; the next run of the
plugin or of these removes what it can prove dead.
"""

from __future__ import annotations

import atexit
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

from pytest_pipeweave.databases import DatabaseJanitor, TemplateSetup
from pytest_pipeweave.errors import ServerUnavailable
from pytest_pipeweave.runs import new_run_key
from pytest_pipeweave.servers import ServerInfo
from pytest_pipeweave.settings import Settings
from pytest_pipeweave.shared import SharedServer


@contextlib.contextmanager
def ephemeral_server(
    backend: str | None = None,
    *,
    url: str | None = None,
    image: str | None = None,
    pg_bin: str | None = None,
    tmpdir: str | None = None,
    server_user: str | None = None,
    docker_host: str | None = None,
) -> Iterator[ServerInfo]:
    """A PostgreSQL server for the block, as the plugin's ``pipeweave_server``.

    ``backend`` is ``auto`` (the default: ``url`` if given, else local binaries, else Docker),
    ``local``, ``docker`` or ``url``. An argument left out comes from the plugin's environment
    variable (``PIPEWEAVE_BACKEND``, ``PIPEWEAVE_TEST_DATABASE_URL``, ``PIPEWEAVE_IMAGE``,
    ``PIPEWEAVE_PG_BIN``, ``PIPEWEAVE_TMPDIR``, ``PIPEWEAVE_SERVER_USER``, ``DOCKER_HOST``),
    else its default. Raises ``ServerUnavailable`` (one line) when no server can be had.
    """
    arguments = {
        "backend": backend,
        "url": url,
        "image": image,
        "pg_bin": pg_bin,
        "tmpdir": tmpdir,
        "server_user": server_user,
        "docker_host": docker_host,
        "keep": False,
        "reuse": False,
        "recreate": False,
    }
    shared = SharedServer(Settings.resolve(keywords=arguments))

    def stop() -> None:
        shared.release()
        # Nobody else knows this run's key, so nobody can be waiting on its lock.
        Path(shared.run.lock.lock_file).unlink(missing_ok=True)

    with _until_exit(stop):
        yield shared.acquire()


@contextlib.contextmanager
def ephemeral_database(server: ServerInfo, *, setup: TemplateSetup | None = None) -> Iterator[str]:
    """A new database on ``server`` with the PipeWeave schema (then ``setup(db)``); its URL.

    Dropped when the block ends. ``server`` is any ``ServerInfo``: from ``ephemeral_server``,
    the plugin's ``pipeweave_server``, or ``ServerInfo.from_url(...)`` for a server you run
    (its role needs CREATEDB).
    """
    janitor = DatabaseJanitor(server, new_run_key())

    def drop() -> None:
        # A server that is gone took the database with it.
        with contextlib.suppress(psycopg.OperationalError, ServerUnavailable):
            janitor.drop(janitor.name("db"))
        janitor.close()

    with _until_exit(drop):
        yield janitor.create("db", setup)


@contextlib.contextmanager
def _until_exit(cleanup: Callable[[], None]) -> Iterator[None]:
    """``cleanup()`` when the block ends, or when the interpreter exits if it never does."""
    atexit.register(cleanup)
    try:
        yield
    finally:
        atexit.unregister(cleanup)
        cleanup()
