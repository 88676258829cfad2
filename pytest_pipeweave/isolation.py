"""One test database used by test after test, each isolated from the others.

Rollback tests share one connection, each inside a transaction rolled back at its end;
committed tests share one pool, and after each the database is restored to the state it had
when the first began (see ``restore``), or copied from its template again when a test changed
the schema.

Data for a module or class is written in a transaction held open on the same connection for
that scope (``held``): the tests inside it are savepoints, so each sees the data and loses its
own writes. Committed tests are refused while one is held: they could not see the data, and
what they committed could not be undone.

Async tests share one async connection in the same ways. It belongs to no test's event loop:
tests come with loops of their own (per test, module or session; pytest-asyncio or anyio), so
the transaction around each is begun and ended between tests, without a loop, and what needs a
loop otherwise (connecting, the seed) runs on this database's own; the test's AsyncDatabase
makes its tasks take turns on the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import weakref
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from pipeweave_db import AsyncDatabase, Database, ExecutedStatement, mask_url
from pytest_pipeweave import leaks
from pytest_pipeweave.errors import RestoreFailed, ServerGone, SharedDataOpen, first_line
from pytest_pipeweave.queries import CapturedQueries
from pytest_pipeweave.restore import DatabaseSnapshot, copy_data

T = TypeVar("T")
DB = TypeVar("DB", Database, AsyncDatabase)
C = TypeVar("C", "SharedConnection", "SharedAsyncConnection")


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
        self._conn: SharedConnection | None = None
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._snapshot: DatabaseSnapshot | None = None
        self._async_conn: SharedAsyncConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The scopes ("module", "class") whose transactions are open, outermost first, on the
        # shared connection and on the async one.
        self.held: list[str] = []
        self.async_held: list[str] = []
        # Open captures (``pipeweave_queries``, the query assertions), each told every
        # statement of every Database handed out here.
        self._captures: list[CapturedQueries] = []
        # The tables named by write notices since the outermost rolled-back transaction began:
        # writes committed by other connections meanwhile (see ``leaks``).
        self.written: set[str] = set()
        # The pool connections used since the last committed test ended, and whether that
        # test used the shared async connection: their sessions are cleared after it.
        self._used: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        self._async_session_used = False

    @contextlib.contextmanager
    def capture(self) -> Iterator[CapturedQueries]:
        """The statements run through this database's Databases while the block is open."""
        captured = CapturedQueries()
        self._captures.append(captured)
        try:
            yield captured
        finally:
            self._captures.remove(captured)

    def _record(self, statement: ExecutedStatement) -> None:
        for captured in self._captures:
            captured.statements.append(statement)

    def _observed(self, db: DB) -> DB:
        db.observer = self._record
        return db

    def connection(self) -> SharedConnection:
        """The shared autocommit connection, reopened if a test closed or broke it."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            with self._gone_on_failure():
                self._conn = SharedConnection.connect(self.url, autocommit=True, connect_timeout=10)
                leaks.listen(self._conn, self.written)
        return self._conn

    @contextlib.contextmanager
    def rolled_back(self, holder: str | None = None) -> Iterator[Database]:
        """A Database inside a transaction on the shared connection, rolled back at the end.

        Inside a transaction held for a module or class it is a savepoint; ``holder`` names
        the scope that this one is held for. A server that closed the connection since the
        last test (stopped, restarted) shows here: the test gets a new connection, or
        ServerGone, not a confusing error inside it. BEGIN is sent without waiting for its
        answer (``SharedConnection``), and ROLLBACK straight through libpq, as between async
        tests: psycopg's transaction() costs as much again in Python, twice a test.
        """
        if self.held and not _usable(self._conn):
            raise self._held_data_lost(self.held)
        depth = len(self.held)
        conn = self._begin(self.connection(), depth, self.held, self.connection)
        if holder is not None:
            self.held.append(holder)
        conn.test_transactions += 1
        try:
            yield self._observed(Database.bound(conn))
        finally:
            conn.test_transactions -= 1
            if holder is not None:
                self.held.pop()
            try:
                conn.end_test(depth)
            except psycopg.OperationalError:
                if _usable(conn):
                    raise
            else:
                if depth == 0:
                    leaks.received(conn.pgconn, self.written)

    def committed(self) -> Database:
        """A Database over the shared pool: its statements commit for real."""
        return self._observed(Database.from_pool(self._committed_pool()))

    @contextlib.contextmanager
    def committed_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of the shared pool for a committed test, given back after it."""
        with self._committed_pool().connection() as conn:
            yield conn

    def _committed_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        self._refuse_while_held()
        self._capture()
        with self._gone_on_failure():
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=10,
                    kwargs={"autocommit": True},
                    check=self._checked_out,
                    timeout=10,
                    open=True,
                )
                # Its first connection made before the first checkout, which would otherwise
                # open a second one: each connection a test used is cleared after it.
                self._pool.wait(timeout=10)
        return self._pool

    def _checked_out(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check at each checkout (its own liveness check), noting that a
        committed test used ``conn``: its session is cleared once the test is over."""
        self._used.add(conn)
        conn.execute("")

    def _clear_sessions(self) -> None:
        """The pool connections the committed test used, cleared of what it left in their
        sessions: settings, temporary tables, cursors, and advisory locks, which would block
        later tests while the connection sits idle in the pool."""
        for conn in list(self._used):
            if _usable(conn):
                with contextlib.suppress(psycopg.Error):  # the pool replaces a broken one
                    conn.execute(DISCARD, prepare=False)
        self._used.clear()

    def _capture(self) -> None:
        """The state committed tests are put back to, captured before the first of them."""
        with self._gone_on_failure():
            conn = self.connection()
            try:
                conn.execute("SELECT 1")
            except psycopg.OperationalError:
                conn = self.connection()
            if self._snapshot is None:
                self._snapshot = DatabaseSnapshot.capture(conn)
                # Its own schema changes (the side schema) told to itself.
                leaks.received(conn.pgconn, self.written).clear()

    # -- async tests ---------------------------------------------------------------------

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """``coroutine`` run to its end on this database's own event loop."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coroutine)

    def async_connection(self) -> SharedAsyncConnection:
        """The shared async autocommit connection, reopened if a test closed or broke it."""
        conn = self._async_conn
        if conn is None or conn.closed or conn.broken:
            with self._gone_on_failure():
                conn = self.call(
                    SharedAsyncConnection.connect(self.url, autocommit=True, connect_timeout=10)
                )
                _between_tests(conn, leaks.LISTEN)
            conn.add_notify_handler(leaks.collector(self.written))
            self._async_conn = conn
        return conn

    @contextlib.contextmanager
    def async_rolled_back(self, holder: str | None = None) -> Iterator[AsyncDatabase]:
        """``rolled_back()`` for an async test: an AsyncDatabase in a transaction undone after.

        A connection a test left in a state where ROLLBACK fails (a query cancelled half way)
        is closed instead: its transaction goes with it, and the next test connects again.
        """
        if self.async_held and not _usable(self._async_conn):
            raise self._held_data_lost(self.async_held)
        depth = len(self.async_held)
        conn = self._begin(self.async_connection(), depth, self.async_held, self._reconnect_async)
        if holder is not None:
            self.async_held.append(holder)
        try:
            yield self._observed(AsyncDatabase.bound(conn))
        finally:
            if holder is not None:
                self.async_held.pop()
            try:
                conn.end_test(depth)
            except psycopg.OperationalError:
                self._close_async_connection()
            else:
                if depth == 0:
                    leaks.received(conn.pgconn, self.written)

    def async_committed(self) -> AsyncDatabase:
        """``committed()`` for an async test: its statements commit for real."""
        self._refuse_while_held()
        self._capture()
        conn = self.async_connection()
        try:
            self.call(conn.execute("SELECT 1"))
        except psycopg.OperationalError:
            conn = self.async_connection()
        self._async_session_used = True
        return self._observed(AsyncDatabase.bound(conn, statement_savepoints=False))

    def reset(self) -> None:
        """Back to the captured state after a committed test: restore, else copy again; and
        the sessions it used cleared of what it left in them (settings, temporary tables)."""
        assert self._snapshot is not None
        self._clear_sessions()
        if self._async_session_used:
            self._async_session_used = False
            self._clear_async_session()
        with self._gone_on_failure():
            if self._snapshot.restore(self.connection(), self.written):
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

    def copy_view(self, target_url: str) -> str:
        """What the test sees now copied into the database at ``target_url`` (of the same
        schema): through its transaction in rollback mode, its own writes included. Returns
        what was left out, or ""."""
        shared = self.connection()
        with self._gone_on_failure():
            shared.settle()  # the test's BEGIN, if it has not used the connection yet
        conn: psycopg.Connection[Any] = shared
        status = conn.info.transaction_status
        missing = ""
        if status == psycopg.pq.TransactionStatus.INERROR:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            missing = "its transaction had failed, so its uncommitted writes are not in it"
        elif (
            self._async_conn is not None
            and _usable(self._async_conn)
            and (self._async_conn.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE)
        ):
            missing = "the uncommitted writes of an async test are not copied (only sync ones)"
        try:
            with self._gone_on_failure(), psycopg.connect(target_url, autocommit=True) as target:
                copy_data(conn, target)
        finally:
            if conn is not self._conn:
                conn.close()
        return missing

    def put_back(self, tables: set[str]) -> bool:
        """The database back to its template state after commits from elsewhere to ``tables``,
        when nothing is held open on it: restored as after a committed test, else copied
        again."""
        if self.held or self.async_held:
            return False
        self.written.update(tables)
        with self._gone_on_failure():
            if self._snapshot is not None and self._snapshot.restore(
                self.connection(), self.written
            ):
                return True
            if self.recreate is None:
                return False
            self.close()
            self.recreate()
        self._snapshot = None
        return True

    def _held_data_lost(self, held: list[str]) -> ServerGone:
        """The connection under a module's or class's data is gone, and the data with it."""
        return ServerGone(
            f"the {self.server} stopped answering, and the data held for this {held[0]} went "
            "with its connection"
        )

    def _refuse_while_held(self) -> None:
        held = self.held or self.async_held
        if held:
            raise SharedDataOpen(
                f"a committed test cannot run inside this {held[0]}'s data "
                f"(pipeweave_{held[0]}_database): that data is never committed, so the test "
                f"could not see it, nor could its commits be undone; move it out of the {held[0]}"
            )

    @contextlib.contextmanager
    def _gone_on_failure(self) -> Iterator[None]:
        try:
            yield
        except psycopg.OperationalError as exc:
            raise ServerGone(f"the {self.server} stopped answering ({first_line(exc)})") from None

    def _clear_async_session(self) -> None:
        """The shared async connection as a new one: it carries the async rollback tests'
        transactions too. Its LISTEN ends with the rest, and is taken up again."""
        conn = self._async_conn
        if conn is None or not _usable(conn):
            return
        try:
            self.call(conn.execute(DISCARD, prepare=False))
            _between_tests(conn, leaks.LISTEN)
        except psycopg.Error:
            self._close_async_connection()  # the next test connects afresh

    def _begin(self, conn: C, depth: int, held: list[str], reconnect: Callable[[], C]) -> C:
        """A test's transaction ``depth`` scopes deep begun on ``conn``: ahead (``_SentAhead``)
        when nothing came on it since its last use, or not at all when the savepoint the last
        test ended with serves; else with a round trip, which tells a notice from a server
        that closed the connection, and then on a connection from ``reconnect``: the
        connection the test's transaction is on."""
        # What was committed before the test began is no one's leak.
        before_test = None if held else self.written
        begin = conn.begin_command(depth)
        if _quiet(conn):
            if begin is not None:
                with self._gone_on_failure():
                    conn.send_ahead(begin, before_test)
            return conn
        begin = begin or _begin_command(depth, kept=True)
        try:
            _between_tests(conn, begin)
        except psycopg.OperationalError:  # the server restarted, or is gone
            if held:
                raise self._held_data_lost(held) from None
            conn = reconnect()
            with self._gone_on_failure():
                _between_tests(conn, _begin_command(depth, kept=False))
        if before_test is not None:
            leaks.received(conn.pgconn, before_test).clear()
        return conn

    def _reconnect_async(self) -> SharedAsyncConnection:
        self._close_async_connection()
        return self.async_connection()

    def _close_async_connection(self) -> None:
        if self._async_conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.call(self._async_conn.close())
            self._async_conn = None

    def close(self) -> None:
        self._close_async_connection()
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _SentAhead:
    """A test's BEGIN (or SAVEPOINT) sent as the test is set up, its answer read at the
    connection's first use in the test, or at its end: the round trip overlaps pytest's own
    work meanwhile, and the transaction still begins when the test does (``now()``).

    psycopg does not know of the command in flight, so each of its ways of sending reads the
    answer first: ``_start_query`` (every cursor's query, COPY), ``_exec_command`` (commit,
    and what psycopg sends of its own), and in the classes ``transaction()`` (which reads
    the transaction's state) and ``pipeline()`` (libpq enters pipeline mode only idle).
    """

    pgconn: psycopg.pq.abc.PGconn
    _sent: bytes | None = None
    _before_test: set[str] | None = None
    # Inside held data a test ends rolled back to its savepoint, which is kept (at that depth;
    # 0: none): the next test at that depth begins on it with no command at all, if nothing
    # was sent since (``_used``). What was, a module's fixture first needed by that test, is
    # kept under a new savepoint.
    _kept = 0
    _used = False

    def begin_command(self, depth: int) -> bytes | None:
        """What begins a test's transaction ``depth`` scopes deep on this connection; None
        when the savepoint the last test ended with serves."""
        kept = self._kept == depth > 0
        if kept and not self._used:
            return None
        return _begin_command(depth, kept)

    def end_test(self, depth: int) -> None:
        """The test's transaction ``depth`` scopes deep rolled back; its savepoint kept."""
        self.settle()
        self._kept = 0
        if depth == 0:
            _between_tests(self, b"ROLLBACK")
        else:
            _between_tests(self, b"ROLLBACK TO SAVEPOINT pipeweave_%d" % depth)
            self._kept, self._used = depth, False

    def send_ahead(self, command: bytes, before_test: set[str] | None = None) -> None:
        """Send ``command``, to be answered by ``settle()``; the write notices read before its
        answer are cleared from ``before_test`` (what was committed before the test began)."""
        self.settle()
        self.pgconn.send_query(command)
        self._sent, self._before_test = command, before_test

    def settle(self) -> None:
        """The answer to the command sent ahead, read if it is not yet (waiting, as PQexec)."""
        command, self._sent = self._sent, None
        if command is None:
            return
        failure = None
        while (result := self.pgconn.get_result()) is not None:
            failure = _failure(result, command) or failure
        if self._before_test is not None:
            leaks.received(self.pgconn, self._before_test).clear()
        if failure is not None:
            raise psycopg.OperationalError(failure)

    def _start_query(self) -> Any:
        self.settle()
        self._used = True
        return super()._start_query()  # type: ignore[misc]

    def _exec_command(self, *args: Any, **kwargs: Any) -> Any:
        self.settle()
        self._used = True
        return super()._exec_command(*args, **kwargs)  # type: ignore[misc]


class SharedConnection(_SentAhead, psycopg.Connection[Any]):
    """The shared connection of rollback-mode tests: while a test's transaction is open on
    it, ``commit()`` and ``rollback()`` raise, as psycopg's do inside ``transaction()``, so
    that code under test handed it (``pipeweave_connection``) cannot end that transaction."""

    test_transactions = 0

    # Settled as the block is made, not entered: psycopg's own context managers, unwrapped
    # (a statement in a test goes through pipeline()). Under psycopg's lock, as its other
    # ways of sending are, so that two threads never read the answer at once.
    def transaction(
        self, *args: Any, **kwargs: Any
    ) -> contextlib._GeneratorContextManager[psycopg.Transaction]:
        with self.lock:
            self.settle()  # before psycopg reads the transaction's state: a savepoint, then
        return super().transaction(*args, **kwargs)

    def pipeline(self) -> contextlib._GeneratorContextManager[psycopg.Pipeline]:
        with self.lock:
            self.settle()
        return super().pipeline()

    def commit(self) -> None:
        self._refuse("commit")
        super().commit()

    def rollback(self) -> None:
        self._refuse("rollback")
        super().rollback()

    def _refuse(self, what: str) -> None:
        if self.test_transactions:
            raise psycopg.ProgrammingError(
                f"Explicit {what}() forbidden within a Transaction context: this is the test's "
                "transaction, which pytest-pipeweave rolls back after the test; use "
                "transaction() for a savepoint, or committed mode for real commits"
            )


class SharedAsyncConnection(_SentAhead, psycopg.AsyncConnection[Any]):
    """The shared connection of async rollback-mode tests (``_SentAhead``)."""

    def transaction(
        self, *args: Any, **kwargs: Any
    ) -> contextlib._AsyncGeneratorContextManager[psycopg.AsyncTransaction]:
        self.settle()
        return super().transaction(*args, **kwargs)

    def pipeline(self) -> contextlib._AsyncGeneratorContextManager[psycopg.AsyncPipeline]:
        self.settle()
        return super().pipeline()


# DISCARD ALL but for DEALLOCATE ALL, in one round trip: psycopg (3.3) notices that its prepared
# statements are gone only the first time it sees a DISCARD ALL on a connection, and after the
# next it would run statements that no longer exist.
DISCARD = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES"
)


def _begin_command(depth: int, kept: bool) -> bytes:
    """What begins a test's transaction ``depth`` scopes deep: BEGIN outermost, a savepoint
    inside a module's or class's data, in place of the one ``kept`` from the last test."""
    if depth == 0:
        return b"BEGIN"
    if kept:
        return b"RELEASE SAVEPOINT pipeweave_%d; SAVEPOINT pipeweave_%d" % (depth, depth)
    return b"SAVEPOINT pipeweave_%d" % depth


def _usable(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None) -> bool:
    return conn is not None and not conn.closed and not conn.broken


def _quiet(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether nothing came on ``conn`` since its last use, told without a round trip: between
    tests something comes only with a notice, or as the server closes the connection
    (stopped, restarted, its backend ended). poll(), where there is one: select() refuses
    sockets numbered above 1023, as a process with many files open has."""
    try:
        socket = conn.pgconn.socket
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(socket, select.POLLIN)
            return not poller.poll(0)
        return not select.select([socket], [], [], 0)[0]
    except (OSError, ValueError, psycopg.OperationalError):
        return False


def _between_tests(
    conn: _SentAhead | psycopg.Connection[Any] | psycopg.AsyncConnection[Any], command: bytes
) -> None:
    """BEGIN or ROLLBACK on ``conn`` while no test runs (for an async one, with no event loop).

    libpq's PQexec blocks even on a nonblocking connection such as psycopg's async ones (its
    documentation says so), and psycopg reads the transaction's state back from libpq: this is
    a fraction of the cost of running the coroutine on a loop, twice a test.
    """
    failure = _failure(conn.pgconn.exec_(command), command)
    if failure is not None:
        raise psycopg.OperationalError(failure)


def _failure(result: psycopg.pq.abc.PGresult, command: bytes) -> str | None:
    """What went wrong with ``command``, in the server's words, or None if it succeeded."""
    if result.status == psycopg.pq.ExecStatus.COMMAND_OK:
        return None
    message = result.error_message.decode(errors="replace").strip()
    return message or f"{command.decode()} failed"
