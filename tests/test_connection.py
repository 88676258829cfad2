"""pipeweave_connection: another client in the test's transaction, through real inner runs."""

from __future__ import annotations

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
    result.assert_outcomes(passed=8)
