"""`Database`: pg-promise's query helpers and transactions over psycopg 3.

A Database either owns a psycopg_pool pool (what `create_database` returns) or is bound to one
connection that may already be inside a transaction (what the pytest plugin's rollback fixture
uses). Both answer the same calls, so code under test cannot tell them apart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import TracebackType
from typing import Any, TypeAlias

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, NullConnectionPool, PoolTimeout

from pipeweave_db import schema
from pipeweave_db.config import DatabaseConfig, config_from_env, config_from_options
from pipeweave_db.errors import PipeweaveError
from pipeweave_db.observers import StatementObserver, observed
from pipeweave_db.rows import Kind, Params, Query, Row, expect

__all__ = [
    "Database",
    "Row",
    "close_database",
    "create_database",
    "create_database_from_env",
    "test_connection",
]

logger = logging.getLogger("pipeweave_db")

Connection: TypeAlias = psycopg.Connection[Any]


class Database:
    """Queries with pg-promise's cardinality rules, rows as dicts, and ``tx()``.

    Outside ``tx()`` every statement commits on its own (autocommit), as with pg-promise.
    """

    def __init__(self, config: DatabaseConfig) -> None:
        pool_class = NullConnectionPool if config.allow_exit_on_idle else ConnectionPool
        pool = pool_class(
            config.conninfo(),
            **config.pool_options(),
            check=ConnectionPool.check_connection,
            open=True,
        )
        self._attach(config=config, pool=pool, owns_pool=True, verified=False)

    @classmethod
    def from_pool(cls, pool: ConnectionPool[Connection]) -> Database:
        """A Database over a psycopg_pool pool that someone else owns: ``close()`` leaves it open.

        The pool's connections should be in autocommit, as ``create_database``'s are.
        """
        db = cls.__new__(cls)
        db._attach(pool=pool)
        return db

    @classmethod
    def bound(cls, connection: Connection, *, statement_savepoints: bool = True) -> Database:
        """A Database whose queries and ``tx()`` all go through ``connection``.

        When ``connection`` is inside a transaction, ``tx()`` is a savepoint and nothing is
        committed. With ``statement_savepoints`` each statement outside ``tx()`` runs in its own
        savepoint, so that a failing statement leaves the transaction usable, as it would leave
        an autocommit connection.
        """
        db = cls.__new__(cls)
        db._attach(conn=connection, statement_savepoints=statement_savepoints)
        return db

    def _attach(
        self,
        *,
        config: DatabaseConfig | None = None,
        pool: ConnectionPool[Connection] | None = None,
        conn: Connection | None = None,
        owns_pool: bool = False,
        statement_savepoints: bool = False,
        verified: bool = True,
    ) -> None:
        """Where queries go: a pool (owned or not), or one connection."""
        self.config = config
        # Told of every statement ``query()`` and the helpers run (see ``observers``).
        self.observer: StatementObserver | None = None
        self._pool = pool
        self._conn = conn
        self._owns_pool = owns_pool
        self._statement_savepoints = statement_savepoints
        # On one connection, threads take turns: a statement (its savepoint and the statement
        # are one psycopg pipeline, which one thread at a time may use) and a tx() block, in
        # which the thread holding it may go on using this Database, as AsyncDatabase's tasks.
        self._turns = threading.RLock() if conn is not None else None
        # False until a first direct connection has shown the settings work (see _acquire).
        self._verified = verified
        self._closed = False

    # -- pg-promise's helpers -------------------------------------------------------------

    def none(self, query: Query, params: Params = None) -> None:
        """Run a statement that must return no rows."""
        self.query(query, params, "none")

    def one(self, query: Query, params: Params = None) -> Row:
        """The one row a query must return."""
        row: Row = self.query(query, params, "one")
        return row

    def one_or_none(self, query: Query, params: Params = None) -> Row | None:
        """The row a query returns, or None; more than one row is an error."""
        row: Row | None = self.query(query, params, "one_or_none")
        return row

    def many(self, query: Query, params: Params = None) -> list[Row]:
        """The rows of a query that must return at least one."""
        rows: list[Row] = self.query(query, params, "many")
        return rows

    def many_or_none(self, query: Query, params: Params = None) -> list[Row]:
        """All rows of a query, possibly none."""
        rows: list[Row] = self.query(query, params, "many_or_none")
        return rows

    any = many_or_none

    def result(self, query: Query, params: Params = None) -> int:
        """The number of rows a statement affected (or returned)."""
        count: int = self.query(query, params, "result")
        return count

    def query(self, query: Query, params: Params = None, kind: Kind = "many_or_none") -> Any:
        """pg-promise's ``query``: ``query`` run with the rule of the helper named ``kind``."""
        if self.observer is None:
            rows, rowcount = self._run(query, params)
        else:
            with observed(self.observer, query, params):
                rows, rowcount = self._run(query, params)
        return expect(kind, rows, rowcount, query)

    # -- transactions and lifetime --------------------------------------------------------

    @contextmanager
    def tx(self) -> Iterator[Database]:
        """A transaction: commit when the block ends, roll back if it raises.

        Use the Database it yields inside the block. A ``tx()`` inside a ``tx()`` is a savepoint.
        """
        with self._connection() as conn, self._turn(), conn.transaction():
            inner = Database.bound(conn, statement_savepoints=False)
            inner.config = self.config
            inner.observer = self.observer
            try:
                yield inner
            finally:
                inner._conn = None
                inner._closed = True

    def close(self) -> None:
        """Close the pool (a bound Database leaves its connection to its owner). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None and self._owns_pool:
            self._pool.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return describe(self, bound=self._conn is not None, closed=self._closed)

    # -- plumbing -------------------------------------------------------------------------

    def _run(self, query: Query, params: Params) -> tuple[list[Row], int]:
        with self._connection() as conn, self._turn(), conn.cursor(row_factory=dict_row) as cur:
            if self._statement_savepoints and PIPELINES:
                return _in_savepoint(conn, cur, query, params)
            if self._statement_savepoints:  # libpq before 14
                with conn.transaction():
                    cur.execute(query, params)
                    return _last_result(cur)
            cur.execute(query, params)
            return _last_result(cur)

    def _turn(self) -> AbstractContextManager[Any]:
        return self._turns if self._turns is not None else nullcontext()

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        if self._closed:
            raise closed_error(self, ended_transaction=self._conn is None and self._pool is None)
        if self._conn is not None:
            yield self._conn
            return
        pool = self._pool
        assert pool is not None
        conn = self._acquire(pool)
        try:
            yield conn
        finally:
            pool.putconn(conn)

    def _acquire(self, pool: ConnectionPool[Connection]) -> Connection:
        # The pool only says it waited in vain; a direct attempt says why (refused,
        # authentication, no such database). Made once up front, so a first failure is fast.
        if not self._verified and self.config is not None:
            _connect_directly(self.config)
            self._verified = True
        try:
            return pool.getconn()
        except PoolTimeout:
            if self.config is None:
                raise
            _connect_directly(self.config)
            if exhausted(pool.get_stats(), pool.max_size):
                raise
            # The server answers again: the pool's reconnection gave up just before. Once more.
            return pool.getconn()


def describe(db: Any, *, bound: bool, closed: bool) -> str:
    """``repr()`` of a Database or an AsyncDatabase: where it goes, never with the password."""
    config: DatabaseConfig | None = db.config
    where = "bound to one connection" if bound or config is None else config.masked_url
    return f"<{type(db).__name__} {where}{' (closed)' if closed else ''}>"


def closed_error(db: Any, *, ended_transaction: bool) -> PipeweaveError:
    """What using a closed Database (or a ``tx()`` block's, after the block) raises."""
    if ended_transaction:
        block = "async with db.tx()" if type(db).__name__.startswith("Async") else "with db.tx()"
        return PipeweaveError(f"this transaction has ended: use it only inside its '{block}' block")
    return PipeweaveError(f"this {type(db).__name__} is closed")


def exhausted(stats: Mapping[str, int], max_size: int) -> bool:
    """After a pool timeout on a server that answers: every connection is in use, so the pool
    is too small, not broken."""
    return stats.get("pool_size", 0) >= max_size and not stats.get("pool_available")


def _connect_directly(config: DatabaseConfig) -> None:
    with psycopg.connect(config.conninfo()):
        pass


# The savepoint of a statement of a bound Database (``statement_savepoints``), pipelined with
# it where libpq can (14 and later).
PIPELINES = psycopg.Pipeline.is_supported()
SAVEPOINT = b"SAVEPOINT pipeweave_statement"
RELEASE = b"RELEASE SAVEPOINT pipeweave_statement"
UNDO = b"ROLLBACK TO SAVEPOINT pipeweave_statement; RELEASE SAVEPOINT pipeweave_statement"


def _in_savepoint(
    conn: Connection, cur: psycopg.Cursor[Row], query: Query, params: Params
) -> tuple[list[Row], int]:
    """``query`` in a savepoint of its own, pipelined with it: one round trip, not three.

    A failing query is undone to the savepoint. A pipeline takes one statement per query
    (the extended protocol): a text of several, refused there, runs as before.
    """
    try:
        with conn.pipeline():
            conn.execute(SAVEPOINT)
            cur.execute(query, params)
            conn.execute(RELEASE)
        return _last_result(cur)
    except psycopg.Error as exc:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            raise
        conn.execute(UNDO)
        if params is not None or not isinstance(exc, psycopg.errors.SyntaxError):
            raise
    with conn.transaction():
        cur.execute(query)
        return _last_result(cur)


def _last_result(cur: psycopg.Cursor[Row]) -> tuple[list[Row], int]:
    """Rows and row count of the last statement, as pg-promise reports multi-statement queries."""
    rows: list[Row] = cur.fetchall() if cur.description is not None else []
    rowcount = cur.rowcount
    while cur.nextset():
        rows = cur.fetchall() if cur.description is not None else []
        rowcount = cur.rowcount
    return rows, rowcount


def create_database(config: DatabaseConfig | None = None, /, **options: Any) -> Database:
    """A Database from a config, or from the seed's keywords.

    ``create_database(connection_string="postgres://...")`` or
    ``create_database(host=..., port=..., database=..., user=..., password=..., ssl=..., max=...,
    allow_exit_on_idle=...)``; keywords given with a config override its fields.
    """
    return Database(config_from_options(config, options, "create_database"))


def create_database_from_env(environ: Mapping[str, str] | None = None) -> Database:
    """A Database from ``DATABASE_URL`` or ``DB_*``; initializes the schema if AUTO_INIT_DB asks."""
    db = Database(config_from_env(environ))
    if db.config is not None and db.config.auto_init:
        try:
            if not schema.is_database_initialized(db):
                schema.initialize_schema(db)
        except BaseException:
            db.close()
            raise
    return db


def test_connection(db: Database) -> bool:
    """True when a query reaches the server. Never raises: logs why it failed instead."""
    try:
        db.one("SELECT 1 AS ok")
    except Exception as exc:
        logger.warning("database connection failed: %s", str(exc).strip() or type(exc).__name__)
        return False
    return True


test_connection.__test__ = False  # type: ignore[attr-defined]


def close_database(db: Database) -> None:
    """Close ``db``'s pool; safe to call twice."""
    db.close()
