"""One test database used by test after test, each isolated from the others.

Rollback tests share one connection, each inside a transaction rolled back at its end;
committed tests share one pool, and after each the database is restored to the state it had
when the first began (see ``restore``), or copied from its template again when a test changed
the schema.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from pipeweave_db import Database, mask_url
from pytest_pipeweave.errors import RestoreFailed, ServerGone, first_line
from pytest_pipeweave.restore import DatabaseSnapshot


class WorkerDatabase:
    """This process's test database at ``url``.

    ``recreate`` (when the database is a copy of a template) copies it again, for a committed
    test that changed the schema; ``server`` names the server in errors ("the local server").
    """

    def __init__(
        self,
        url: str,
        *,
        recreate: Callable[[], None] | None = None,
        server: str = "test server",
    ) -> None:
        self.url = url
        self.recreate = recreate
        self.server = server
        self._conn: psycopg.Connection[Any] | None = None
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._snapshot: DatabaseSnapshot | None = None

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
        """Back to the captured state after a committed test: restore, else copy again."""
        assert self._snapshot is not None
        with self._gone_on_failure():
            if self._snapshot.restore(self.connection()):
                return
            if self.recreate is None:
                raise RestoreFailed(
                    f"the test changed the schema of {mask_url(self.url)}, which was not "
                    "copied from a template here, so it cannot be put back: keep schema "
                    "changes out of committed tests on it"
                )
            self.close()
            self.recreate()
            self._snapshot = None

    @contextlib.contextmanager
    def _gone_on_failure(self) -> Iterator[None]:
        try:
            yield
        except psycopg.OperationalError as exc:
            raise ServerGone(f"the {self.server} stopped answering ({first_line(exc)})") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
