"""pipeweave_connection: another client in the test's transaction, through real inner runs."""

from __future__ import annotations

import psycopg
import pytest

pytestmark = pytest.mark.usefixtures("pipeweave_inner_env")

SUITE = """
import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

INSERT = "INSERT INTO services (id, version, base_url) VALUES (%s, '1', 'u')"


def count(db):
    return db.one("SELECT count(*) AS n FROM services")["n"]


def test_a_write_through_the_connection_is_seen_by_the_database(
    pipeweave_connection, pipeweave_database, pipeweave_factory
):
    pipeweave_connection.execute(INSERT, ["raw"])
    pipeweave_factory.service(id="factory")
    rows = pipeweave_connection.execute("SELECT id FROM services ORDER BY id").fetchall()
    assert rows == [("factory",), ("raw",)]
    assert count(pipeweave_database) == 2


def test_code_under_test_cannot_end_the_transaction(pipeweave_connection):
    pipeweave_connection.execute(INSERT, ["x"])
    with pytest.raises(psycopg.ProgrammingError, match="forbidden within a Transaction"):
        pipeweave_connection.commit()
    with pipeweave_connection.transaction():  # a savepoint is what such code gets
        pipeweave_connection.execute(INSERT, ["y"])


def test_a_transaction_block_as_the_first_statement_is_a_savepoint(pipeweave_connection):
    with pipeweave_connection.transaction():
        pipeweave_connection.execute(INSERT, ["in-block"])
    assert pipeweave_connection.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


def test_a_tx_as_the_first_statement_is_a_savepoint(pipeweave_database):
    with pipeweave_database.tx() as tx:
        tx.none(INSERT, ["in-tx"])


def test_a_copy_as_the_first_statement_is_rolled_back(pipeweave_connection):
    with pipeweave_connection.cursor().copy(
        "COPY services (id, version, base_url) FROM STDIN"
    ) as copy:
        copy.write_row(["copied", "1", "u"])


def test_nothing_of_the_earlier_tests_is_left(pipeweave_database):
    assert count(pipeweave_database) == 0


@pytest.fixture
def session(pipeweave_connection):
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: pipeweave_connection,
        poolclass=StaticPool,
        pool_reset_on_return=None,
    )
    engine.dialect.do_rollback = lambda dbapi_connection: None
    with engine.connect() as connection:
        connection.begin()
        with Session(bind=connection, join_transaction_mode="create_savepoint") as session:
            yield session


def add(session, service_id):
    session.execute(
        text("INSERT INTO services (id, version, base_url) VALUES (:id, '1', 'u')"),
        {"id": service_id},
    )


def test_session_commit_and_rollback_are_savepoints(session, pipeweave_database):
    add(session, "kept")
    session.commit()
    add(session, "undone")
    session.rollback()
    ids = [r["id"] for r in pipeweave_database.many("SELECT id FROM services")]
    assert ids == ["kept"]
    assert session.execute(text("SELECT count(*) FROM services")).scalar() == 1


def test_the_session_sees_the_factory(pipeweave_factory, session):
    pipeweave_factory.service(id="from-factory")
    assert session.execute(text("SELECT id FROM services")).scalars().all() == ["from-factory"]


def test_nothing_of_the_sessions_is_left(pipeweave_database):
    assert count(pipeweave_database) == 0


@pytest.mark.pipeweave(committed=True)
def test_committed_mode_commits(pipeweave_connection, pipeweave_database_url):
    pipeweave_connection.execute(INSERT, ["committed"])
    with psycopg.connect(pipeweave_database_url) as other:
        assert other.execute("SELECT id FROM services").fetchall() == [("committed",)]


def test_and_is_put_back_after(pipeweave_database):
    assert count(pipeweave_database) == 0
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2", "--dist", "loadfile"]], ids=["serial", "n2"])
def test_pipeweave_connection_and_sqlalchemy(pytester: pytest.Pytester, workers: list[str]) -> None:
    pytester.makepyfile(test_connection_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:asyncio", *workers, timeout=180
    )
    result.assert_outcomes(passed=11)


BACKEND_ENDED = """
import time

import psycopg
import pytest

PIDS = {}
PID = "SELECT pg_backend_pid() AS pid"


def end_backend(url, pid):
    with psycopg.connect(url, autocommit=True) as other:
        assert other.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
        deadline = time.monotonic() + 10
        gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
        while other.execute(gone, [pid]).fetchone()[0]:
            assert time.monotonic() < deadline, "the backend did not end"
            time.sleep(0.01)


def test_sync_first(pipeweave_database):
    PIDS["sync"] = pipeweave_database.one(PID)["pid"]


@pytest.mark.asyncio
async def test_async_first(pipeweave_async_database):
    PIDS["async"] = (await pipeweave_async_database.one(PID))["pid"]


def test_their_backends_end_between_tests(pipeweave_database_url):
    end_backend(pipeweave_database_url, PIDS["sync"])
    end_backend(pipeweave_database_url, PIDS["async"])


def test_sync_after(pipeweave_database):
    assert pipeweave_database.one(PID)["pid"] != PIDS["sync"]


@pytest.mark.asyncio
async def test_async_after(pipeweave_async_database):
    assert (await pipeweave_async_database.one(PID))["pid"] != PIDS["async"]
"""


def test_a_connection_whose_backend_ended_between_tests_is_replaced(
    pytester: pytest.Pytester,
) -> None:
    """The server closing the shared connections while no test runs (a restart, an
    administrator's pg_terminate_backend) costs the next tests nothing but a new connection."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_backend_ended=BACKEND_ENDED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", timeout=120)
    result.assert_outcomes(passed=5)


HIGH_SOCKETS = """
import os

import pytest

# Enough open files that the shared connections' sockets come above select()'s FD_SETSIZE.
HELD = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]


@pytest.mark.parametrize("n", range(3))
def test_sync(pipeweave_connection, pipeweave_database, n):
    assert pipeweave_connection.pgconn.socket > 1024
    assert pipeweave_database.one("SELECT %s::int AS n", [n])["n"] == n


@pytest.mark.asyncio
@pytest.mark.parametrize("n", range(3))
async def test_async(pipeweave_async_database, n):
    assert (await pipeweave_async_database.one("SELECT %s::int AS n", [n]))["n"] == n
"""


def test_connections_whose_sockets_are_above_1024_work(pytester: pytest.Pytester) -> None:
    """A process with many files open (a large suite) has sockets that select() refuses."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_high_sockets=HIGH_SOCKETS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=6)


@pytest.mark.parametrize("first_use", ["execute", "copy", "commit", "transaction", "pipeline"])
def test_each_way_of_sending_reads_the_begin_sent_ahead_first(
    pipeweave_database_url: str, first_use: str
) -> None:
    """psycopg does not know of the BEGIN in flight: whichever way the connection is used
    first reads its answer, and the statement runs inside that transaction."""
    from pytest_pipeweave.isolation import SharedConnection

    with SharedConnection.connect(pipeweave_database_url, autocommit=True) as conn:
        conn.send_ahead(b"BEGIN")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE
        if first_use == "execute":
            assert conn.execute("SELECT 1").fetchone() == (1,)
        elif first_use == "copy":
            with conn.cursor().copy("COPY (SELECT 1) TO STDOUT") as copy:
                assert [bytes(data) for data in copy] == [b"1\n"]
        elif first_use == "commit":
            conn.commit()  # as psycopg would after a BEGIN it had waited for: COMMIT
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            return
        elif first_use == "transaction":
            with conn.transaction():
                conn.execute("SELECT 1")
        else:
            with conn.pipeline():
                conn.execute("SELECT 1")
        status = conn.info.transaction_status
        assert status == psycopg.pq.TransactionStatus.INTRANS, first_use
        conn.execute("ROLLBACK")
