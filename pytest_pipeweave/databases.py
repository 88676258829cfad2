"""Test databases on a server: the template holding the schema, clones of it, dropping them.

Works outside pytest too: ``create_template(server, "tpl")`` then
``clone_database(server, "tpl", "mine")`` gives an initialized database in milliseconds.
Names are always quoted identifiers, comments quoted literals: nothing is pasted into SQL.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from pipeweave_db import Database, create_database, initialize_schema
from pytest_pipeweave.restore import DatabaseSnapshot
from pytest_pipeweave.servers.base import ServerGone, ServerInfo

NAME_PREFIX = "pytest_pipeweave_"
OWNER_COMMENT = re.compile(r"^pytest-pipeweave run=(?P<run>.+) host=(?P<host>\S+)$")

TemplateSetup = Callable[[Database], None]


def admin_connection(server: ServerInfo) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection to the server's maintenance database."""
    return psycopg.connect(server.url(server.admin_database), autocommit=True, connect_timeout=10)


def owner_comment(run_path: str) -> str:
    """What a database's comment says, so that a later run can tell it is a dead run's."""
    return f"pytest-pipeweave run={run_path} host={socket.gethostname()}"


def database_name(run_key: str, suffix: str) -> str:
    """``pytest_pipeweave_<run>_<suffix>``: recognisably ours, unique per run."""
    return f"{NAME_PREFIX}{run_key}_{suffix}".lower()


def create_template(
    server: ServerInfo,
    name: str,
    setup: TemplateSetup | None = None,
    *,
    comment: str | None = None,
) -> None:
    """Create database ``name`` with the PipeWeave schema, then let ``setup`` add to it."""
    with admin_connection(server) as conn:
        _create(conn, name, "template1", comment)
    try:
        with create_database(connection_string=server.url(name), max=1) as db:
            initialize_schema(db)
            if setup is not None:
                setup(db)
    except BaseException:
        drop_database(server, name)
        raise


def clone_database(
    server: ServerInfo, template: str, name: str, *, comment: str | None = None
) -> None:
    """Create ``name`` as a copy of ``template``."""
    with admin_connection(server) as conn:
        _create(conn, name, template, comment)


def _create(
    conn: psycopg.Connection[tuple[object, ...]], name: str, template: str, comment: str | None
) -> None:
    """CREATE DATABASE by file copy: on PostgreSQL 15+ the default, WAL_LOG, writes the whole
    template into the WAL (15 ms a database against 10 ms here)."""
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(template)
    )
    if conn.info.server_version >= 150000:
        statement += sql.SQL(" STRATEGY FILE_COPY")
    conn.execute(statement)
    if comment:
        _comment(conn, name, comment)


def drop_database(server: ServerInfo, name: str) -> None:
    """Drop ``name`` if it exists, disconnecting whoever is still connected to it."""
    with admin_connection(server) as conn:
        if conn.info.server_version >= 130000:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            return
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def our_databases(server: ServerInfo) -> dict[str, str | None]:
    """Databases named like ours on ``server``, with their comments."""
    with admin_connection(server) as conn:
        rows = conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
            " WHERE starts_with(datname, %s)",
            [NAME_PREFIX],
        ).fetchall()
    return {str(name): (str(comment) if comment else None) for name, comment in rows}


def drop_leftover_databases(server: ServerInfo, run_is_dead: Callable[[str], bool]) -> list[str]:
    """Drop databases whose comment names a run on this host that has ended; nothing else."""
    dropped = []
    here = socket.gethostname()
    for name, comment in our_databases(server).items():
        match = OWNER_COMMENT.match(comment or "")
        if match and match.group("host") == here and run_is_dead(match.group("run")):
            drop_database(server, name)
            dropped.append(name)
    return dropped


def _comment(conn: psycopg.Connection[tuple[object, ...]], name: str, comment: str) -> None:
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal(comment)
            )
        )


class WorkerDatabase:
    """This process's test database, cloned from the template.

    Rollback tests share one connection (a transaction each, rolled back); committed tests
    share one pool, and after each the database is restored to its template state, or cloned
    again when a test changed the schema.
    """

    def __init__(self, server: ServerInfo, template: str, name: str, comment: str | None = None):
        self.server = server
        self.template = template
        self.name = name
        self.comment = comment
        self.url = server.url(name)
        self._conn: psycopg.Connection[Any] | None = None
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._snapshot: DatabaseSnapshot | None = None

    def create(self) -> None:
        clone_database(self.server, self.template, self.name, comment=self.comment)

    def connection(self) -> psycopg.Connection[Any]:
        """The shared autocommit connection, reopened if a test closed or broke it."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            with self._gone_on_failure():
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        return self._conn

    @contextlib.contextmanager
    def rolled_back(self) -> Iterator[Database]:
        """A Database inside a transaction on the shared connection, rolled back at the end.

        BEGIN doubles as a liveness check: a server that died since the last test shows here,
        as ServerGone, not as a hang or a confusing error inside the test.
        """
        conn = self.connection()
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(conn.transaction(force_rollback=True))
        except psycopg.OperationalError:
            conn = self.connection()
            with self._gone_on_failure():
                stack.enter_context(conn.transaction(force_rollback=True))
        try:
            with stack:
                yield Database.bound(conn)
        except psycopg.OperationalError:
            if not conn.broken:
                raise

    def committed(self) -> Database:
        """A Database over the shared pool: its statements commit for real."""
        with self._gone_on_failure():
            conn = self.connection()
            try:
                conn.execute("SELECT 1")
            except psycopg.OperationalError:
                conn = self.connection()
            if self._snapshot is None:
                self._snapshot = DatabaseSnapshot.capture(conn)
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=10,
                    kwargs={"autocommit": True},
                    check=ConnectionPool.check_connection,
                    timeout=10,
                    open=True,
                )
        return Database.from_pool(self._pool)

    def reset(self) -> None:
        """Back to the template's state after a committed test: restore, else clone again."""
        assert self._snapshot is not None
        with self._gone_on_failure():
            if not self._snapshot.restore(self.connection()):
                self.close()
                drop_database(self.server, self.name)
                self.create()
                self._snapshot = None

    @contextlib.contextmanager
    def _gone_on_failure(self) -> Iterator[None]:
        try:
            yield
        except psycopg.OperationalError as exc:
            raise ServerGone(
                f"the {self.server.backend} test server stopped answering ({_first_line(exc)})"
            ) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def drop(self) -> None:
        self.close()
        # A server that died took the database with it: nothing is left to drop.
        with contextlib.suppress(psycopg.OperationalError):
            drop_database(self.server, self.name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
