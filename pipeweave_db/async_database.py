"""`AsyncDatabase`: `Database`'s helpers and transactions, awaited, over psycopg's async pool.

``create_async_database(...)`` takes what ``create_database`` takes. The pool opens when first
needed (``async with``, ``await db.open()``, or the first query), since an async pool belongs to
the event loop that opens it; with ``AUTO_INIT_DB`` the schema is initialized then. The rules
(how many rows each helper allows, the errors, the masking) are the same objects as
``Database``'s: see ``rows`` and ``config``.

An AsyncDatabase bound to one connection (the pytest plugin's async fixtures) serializes the
tasks that use it: a connection runs one statement at a time, and one transaction. The task
holding a ``tx()`` block may go on using the outer AsyncDatabase inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, TypeAlias

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, AsyncNullConnectionPool, PoolTimeout

from pipeweave_db.config import DatabaseConfig, config_from_env, config_from_options
from pipeweave_db.database import (
    PIPELINES,
    RELEASE,
    SAVEPOINT,
    UNDO,
    closed_error,
    describe,
    exhausted,
)
from pipeweave_db.observers import StatementObserver, observed
from pipeweave_db.rows import Kind, Params, Query, Row, expect

__all__ = [
    "AsyncDatabase",
    "close_database_async",
    "create_async_database",
    "create_async_database_from_env",
    "test_connection_async",
]

logger = logging.getLogger("pipeweave_db")

AsyncConnection: TypeAlias = psycopg.AsyncConnection[Any]


class AsyncDatabase:
    """Queries with pg-promise's cardinality rules, rows as dicts, and ``tx()``, awaited.

    Outside ``tx()`` every statement commits on its own (autocommit), as with pg-promise.
    """

    def __init__(self, config: DatabaseConfig) -> None:
        pool_class = AsyncNullConnectionPool if config.allow_exit_on_idle else AsyncConnectionPool
        pool = pool_class(
            config.conninfo(),
            **config.pool_options(),
            check=AsyncConnectionPool.check_connection,
            open=False,
        )
        self._attach(config=config, pool=pool, owns_pool=True, opened=False)

    @classmethod
    def from_pool(cls, pool: AsyncConnectionPool[AsyncConnection]) -> AsyncDatabase:
        """An AsyncDatabase over an open pool that someone else owns: ``close()`` leaves it.

        The pool's connections should be in autocommit, as ``create_async_database``'s are.
        """
        db = cls.__new__(cls)
        db._attach(pool=pool)
        return db

    @classmethod
    def bound(
        cls, connection: AsyncConnection, *, statement_savepoints: bool = True
    ) -> AsyncDatabase:
        """An AsyncDatabase whose queries and ``tx()`` all go through ``connection``.

        As ``Database.bound``: inside a transaction, ``tx()`` is a savepoint; with
        ``statement_savepoints`` a failing statement leaves the transaction usable. Tasks
        using it take turns (see the module).
        """
        db = cls.__new__(cls)
        db._attach(conn=connection, statement_savepoints=statement_savepoints, guard=_TaskLock())
        return db

    def _attach(
        self,
        *,
        config: DatabaseConfig | None = None,
        pool: AsyncConnectionPool[AsyncConnection] | None = None,
        conn: AsyncConnection | None = None,
        owns_pool: bool = False,
        opened: bool = True,
        statement_savepoints: bool = False,
        guard: contextlib.AbstractAsyncContextManager[Any] | None = None,
    ) -> None:
        """Where queries go: a pool (owned or not), or one connection, taken in turns."""
        self.config = config
        # Told of every statement ``query()`` and the helpers run (see ``observers``).
        self.observer: StatementObserver | None = None
        self._pool = pool
        self._conn = conn
        self._owns_pool = owns_pool
        self._opened = opened
        self._opening = asyncio.Lock()
        self._statement_savepoints = statement_savepoints
        self._guard = guard
        self._closed = False

    async def open(self) -> AsyncDatabase:
        """Open the pool, and initialize the schema if ``AUTO_INIT_DB`` asks. Idempotent."""
        async with self._opening:
            if self._opened:
                return self
            assert self._pool is not None and self.config is not None
            # The pool only says it waited in vain; a direct attempt says why (refused,
            # authentication, no such database).
            await _connect_directly(self.config)
            await self._pool.open(wait=False)
            self._opened = True
        if self.config.auto_init:
            from pipeweave_db import schema

            try:
                if not await schema.is_database_initialized_async(self):
                    await schema.initialize_schema_async(self)
            except BaseException:
                await self.close()
                raise
        return self

    # -- pg-promise's helpers -------------------------------------------------------------

    async def none(self, query: Query, params: Params = None) -> None:
        """Run a statement that must return no rows."""
        await self.query(query, params, "none")

    async def one(self, query: Query, params: Params = None) -> Row:
        """The one row a query must return."""
        row: Row = await self.query(query, params, "one")
        return row

    async def one_or_none(self, query: Query, params: Params = None) -> Row | None:
        """The row a query returns, or None; more than one row is an error."""
        row: Row | None = await self.query(query, params, "one_or_none")
        return row

    async def many(self, query: Query, params: Params = None) -> list[Row]:
        """The rows of a query that must return at least one."""
        rows: list[Row] = await self.query(query, params, "many")
        return rows

    async def many_or_none(self, query: Query, params: Params = None) -> list[Row]:
        """All rows of a query, possibly none."""
        rows: list[Row] = await self.query(query, params, "many_or_none")
        return rows

    any = many_or_none

    async def result(self, query: Query, params: Params = None) -> int:
        """The number of rows a statement affected (or returned)."""
        count: int = await self.query(query, params, "result")
        return count

    async def query(self, query: Query, params: Params = None, kind: Kind = "many_or_none") -> Any:
        """pg-promise's ``query``: ``query`` run with the rule of the helper named ``kind``."""
        if self.observer is None:
            rows, rowcount = await self._run(query, params)
        else:
            with observed(self.observer, query, params):
                rows, rowcount = await self._run(query, params)
        return expect(kind, rows, rowcount, query)

    # -- transactions and lifetime --------------------------------------------------------

    @contextlib.asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncDatabase]:
        """A transaction: commit when the block ends, roll back if it raises.

        Use the AsyncDatabase it yields inside the block. A ``tx()`` inside a ``tx()`` is a
        savepoint.
        """
        async with self._connection() as conn, self._block_turn(), conn.transaction():
            inner = AsyncDatabase.__new__(AsyncDatabase)
            # Statements in the block take turns, as on any one connection; nested tx() are
            # savepoints among them, as psycopg makes them.
            inner._attach(config=self.config, conn=conn, guard=_Turns(self._inner_turns()))
            inner.observer = self.observer
            try:
                yield inner
            finally:
                inner._conn = None
                inner._closed = True

    async def close(self) -> None:
        """Close the pool (a bound AsyncDatabase leaves its connection to its owner)."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None and self._owns_pool and self._opened:
            await self._pool.close()

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> AsyncDatabase:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return describe(self, bound=self._conn is not None, closed=self._closed)

    # -- plumbing -------------------------------------------------------------------------

    async def _run(self, query: Query, params: Params) -> tuple[list[Row], int]:
        async with (
            self._connection() as conn,
            self._turn(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            if self._statement_savepoints and PIPELINES:
                return await _in_savepoint(conn, cur, query, params)
            if self._statement_savepoints:  # libpq before 14
                async with conn.transaction():
                    await cur.execute(query, params)
                    return await _last_result(cur)
            await cur.execute(query, params)
            return await _last_result(cur)

    def _turn(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Held while one statement runs."""
        return self._guard if self._guard is not None else contextlib.nullcontext()

    def _block_turn(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Held while a ``tx()`` block runs: by the one-connection AsyncDatabase, whose
        transaction other tasks must not enter; inside a transaction, no more than psycopg does."""
        guard = self._guard
        return guard if isinstance(guard, _TaskLock) else contextlib.nullcontext()

    def _inner_turns(self) -> asyncio.Lock:
        """The lock the statements inside this connection's transaction share."""
        guard = self._guard
        return guard.lock if isinstance(guard, _Turns) else asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        if self._closed:
            raise closed_error(self, ended_transaction=self._conn is None and self._pool is None)
        if self._conn is not None:
            yield self._conn
            return
        if not self._opened:
            await self.open()
        pool = self._pool
        assert pool is not None
        conn = await self._acquire(pool)
        try:
            yield conn
        finally:
            await pool.putconn(conn)

    async def _acquire(self, pool: AsyncConnectionPool[AsyncConnection]) -> AsyncConnection:
        try:
            return await pool.getconn()
        except PoolTimeout:
            if self.config is None:
                raise
            await _connect_directly(self.config)
            if exhausted(pool.get_stats(), pool.max_size):
                raise
            # The server answers again: the pool's reconnection gave up just before. Once more.
            return await pool.getconn()


class _TaskLock:
    """A lock that the task holding it may take again.

    So the task inside ``async with db.tx()`` may still call ``db`` itself (on one connection,
    that runs inside the transaction) while other tasks wait for the block to end.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._depth = 0

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None or self._owner is not task:
            await self._lock.acquire()
            self._owner = task
        self._depth += 1

    async def __aexit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
            self._lock.release()


class _Turns:
    """Statements take turns on one lock; nothing else does."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self.lock = lock

    async def __aenter__(self) -> None:
        await self.lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.lock.release()


async def _connect_directly(config: DatabaseConfig) -> None:
    connection = await psycopg.AsyncConnection.connect(config.conninfo())
    await connection.close()


async def _in_savepoint(
    conn: AsyncConnection, cur: psycopg.AsyncCursor[Row], query: Query, params: Params
) -> tuple[list[Row], int]:
    """``Database``'s ``_in_savepoint`` for an async connection: one round trip, not three."""
    try:
        async with conn.pipeline():
            await conn.execute(SAVEPOINT)
            await cur.execute(query, params)
            await conn.execute(RELEASE)
        return await _last_result(cur)
    except psycopg.Error as exc:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            raise
        await conn.execute(UNDO)
        if params is not None or not isinstance(exc, psycopg.errors.SyntaxError):
            raise
    async with conn.transaction():
        await cur.execute(query)
        return await _last_result(cur)


async def _last_result(cur: psycopg.AsyncCursor[Row]) -> tuple[list[Row], int]:
    """Rows and row count of the last statement, as pg-promise reports multi-statement queries."""
    rows: list[Row] = await cur.fetchall() if cur.description is not None else []
    rowcount = cur.rowcount
    while cur.nextset():
        rows = await cur.fetchall() if cur.description is not None else []
        rowcount = cur.rowcount
    return rows, rowcount


def create_async_database(config: DatabaseConfig | None = None, /, **options: Any) -> AsyncDatabase:
    """An AsyncDatabase from a config, or from the seed's keywords (as ``create_database``).

    Its pool opens when first needed: ``async with create_async_database(...) as db``.
    """
    return AsyncDatabase(config_from_options(config, options, "create_async_database"))


def create_async_database_from_env(environ: Mapping[str, str] | None = None) -> AsyncDatabase:
    """An AsyncDatabase from ``DATABASE_URL`` or ``DB_*`` (as ``create_database_from_env``).

    With ``AUTO_INIT_DB`` a missing schema is initialized when it opens.
    """
    return AsyncDatabase(config_from_env(environ))


async def test_connection_async(db: AsyncDatabase) -> bool:
    """True when a query reaches the server. Never raises: logs why it failed instead."""
    try:
        await db.one("SELECT 1 AS ok")
    except Exception as exc:
        logger.warning("database connection failed: %s", str(exc).strip() or type(exc).__name__)
        return False
    return True


test_connection_async.__test__ = False  # type: ignore[attr-defined]


async def close_database_async(db: AsyncDatabase) -> None:
    """Close ``db``'s pool; safe to call twice."""
    await db.close()
