"""Database: pg-promise's helpers, transactions and savepoints, pools, and the seed's examples."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pipeweave_db import (
    ConfigError,
    Database,
    DatabaseConfig,
    PipeweaveError,
    QueryResultError,
    close_database,
    create_database,
    create_database_from_env,
    is_database_initialized,
    test_connection,
)
from pytest_pipeweave import ServerInfo
from pytest_pipeweave.processes import wait_until
from pytest_pipeweave.servers.local import free_port

INSERT_SERVICE = "INSERT INTO services (id, version, base_url) VALUES (%s, %s, %s) RETURNING *"


@pytest.fixture
def db(
    pipeweave_database_committed: Database, pipeweave_config: DatabaseConfig
) -> Iterator[Database]:
    """A pool-backed Database of our own on the test database (its commits are undone after)."""
    with create_database(pipeweave_config) as database:
        yield database


def count(db: Database, table: str = "services") -> int:
    return int(db.one(f"SELECT count(*) AS n FROM {table}")["n"])


# -- the seed's query examples and pg-promise's cardinality rules -------------------------------


def test_seed_query_examples(db: Database) -> None:
    row = db.one(INSERT_SERVICE, ["my-service", "1.0.0", "http://localhost:8080"])
    assert row["id"] == "my-service" and row["status"] == "active"
    assert [
        s["id"] for s in db.many_or_none("SELECT * FROM services WHERE status = %s", ["active"])
    ] == ["my-service"]
    assert db.one_or_none("SELECT * FROM tasks WHERE id = %s", ["my-task"]) is None
    with db.tx() as t:
        t.none("INSERT INTO services (id, version, base_url) VALUES ('s2', '1', 'u')")
        t.none("INSERT INTO tasks (id, service_id, code_hash) VALUES ('my-task', 's2', 'h')")
    assert db.one_or_none("SELECT * FROM tasks WHERE id = %s", ["my-task"])["service_id"] == "s2"  # type: ignore[index]


def test_none(db: Database) -> None:
    db.none("SELECT 1 WHERE false")
    db.none("CREATE TEMP TABLE t (x int)")
    with pytest.raises(QueryResultError) as info:
        db.none("SELECT 1 AS x")
    assert (info.value.expected, info.value.received) == ("no rows", 1)


def test_one(db: Database) -> None:
    assert db.one("SELECT 1 AS x") == {"x": 1}
    with pytest.raises(
        QueryResultError, match="expected one row, got 0 rows: SELECT 1 WHERE false"
    ):
        db.one("SELECT 1 WHERE false")
    with pytest.raises(QueryResultError, match="expected one row, got 2 rows"):
        db.one("SELECT * FROM generate_series(1, 2)")


def test_one_or_none(db: Database) -> None:
    assert db.one_or_none("SELECT 1 AS x WHERE false") is None
    assert db.one_or_none("SELECT 1 AS x") == {"x": 1}
    with pytest.raises(QueryResultError, match="expected one row or none, got 3 rows"):
        db.one_or_none("SELECT * FROM generate_series(1, 3)")


def test_many_and_many_or_none(db: Database) -> None:
    assert db.many("SELECT g AS n FROM generate_series(1, 2) g") == [{"n": 1}, {"n": 2}]
    with pytest.raises(QueryResultError, match="expected one row or more, got 0 rows"):
        db.many("SELECT 1 WHERE false")
    assert db.many_or_none("SELECT 1 WHERE false") == []
    assert db.any("SELECT 1 AS x") == [{"x": 1}]


def test_result_is_the_affected_row_count(db: Database) -> None:
    for i in range(3):
        db.one(INSERT_SERVICE, [f"s{i}", "1", "u"])
    assert db.result("UPDATE services SET status = 'inactive' WHERE id <> %s", ["s0"]) == 2
    assert db.result("DELETE FROM services WHERE id = 'nope'") == 0


def test_parameters_are_bound_never_interpolated(db: Database) -> None:
    hostile = "x'); DROP TABLE services; --"
    db.one(INSERT_SERVICE, [hostile, "1", "u"])
    assert db.one("SELECT id FROM services")["id"] == hostile
    assert count(db) == 1
    assert db.one("SELECT %(a)s::int + %(b)s::int AS s", {"a": 2, "b": 3}) == {"s": 5}


def test_multi_statement_query_returns_the_last_result(db: Database) -> None:
    assert db.one("SELECT 1 AS a; SELECT 2 AS b") == {"b": 2}


# -- transactions ------------------------------------------------------------------------------


def test_tx_commits_and_other_connections_see_it(db: Database, pipeweave_database_url: str) -> None:
    with db.tx() as t:
        t.one(INSERT_SERVICE, ["a", "1", "u"])
        with psycopg.connect(pipeweave_database_url) as other:
            assert other.execute("SELECT count(*) FROM services").fetchone() == (0,)
    with psycopg.connect(pipeweave_database_url) as other:
        assert other.execute("SELECT count(*) FROM services").fetchone() == (1,)


def test_tx_rolls_back_on_exception(db: Database) -> None:
    with pytest.raises(RuntimeError), db.tx() as t:
        t.one(INSERT_SERVICE, ["a", "1", "u"])
        raise RuntimeError("boom")
    assert count(db) == 0


def test_nested_tx_is_a_savepoint(db: Database) -> None:
    with db.tx() as outer:
        outer.one(INSERT_SERVICE, ["kept", "1", "u"])
        with pytest.raises(psycopg.errors.UniqueViolation), outer.tx() as inner:
            inner.one(INSERT_SERVICE, ["dropped", "1", "u"])
            inner.one(INSERT_SERVICE, ["kept", "1", "u"])
        # The failed savepoint is gone; the outer transaction goes on.
        outer.one(INSERT_SERVICE, ["also-kept", "1", "u"])
        with outer.tx() as inner, inner.tx() as deepest:
            deepest.one(INSERT_SERVICE, ["deep", "1", "u"])
    assert sorted(r["id"] for r in db.many("SELECT id FROM services")) == [
        "also-kept",
        "deep",
        "kept",
    ]


def test_a_finished_tx_cannot_be_used(db: Database) -> None:
    with db.tx() as t:
        pass
    with pytest.raises(PipeweaveError, match="transaction has ended"):
        t.one("SELECT 1 AS x")


# -- a Database bound to one connection in a transaction ----------------------------------------


def test_bound_database_never_commits(pipeweave_database_url: str) -> None:
    with psycopg.connect(pipeweave_database_url) as conn:
        with conn.transaction(force_rollback=True):
            bound = Database.bound(conn)
            bound.one(INSERT_SERVICE, ["outer", "1", "u"])
            with bound.tx() as t:  # a savepoint, not a commit
                t.one(INSERT_SERVICE, ["inner", "1", "u"])
            with pytest.raises(RuntimeError), bound.tx() as t:
                t.one(INSERT_SERVICE, ["undone", "1", "u"])
                raise RuntimeError
            assert sorted(r["id"] for r in bound.many("SELECT id FROM services")) == [
                "inner",
                "outer",
            ]
        assert conn.execute("SELECT count(*) FROM services").fetchone() == (0,)
        bound.close()
        assert not conn.closed, "closing a bound Database leaves its connection to the owner"


def test_bound_database_survives_a_failing_statement(pipeweave_database_url: str) -> None:
    with psycopg.connect(pipeweave_database_url) as conn, conn.transaction(force_rollback=True):
        bound = Database.bound(conn)
        bound.one(INSERT_SERVICE, ["a", "1", "u"])
        with pytest.raises(psycopg.errors.UniqueViolation):
            bound.one(INSERT_SERVICE, ["a", "1", "u"])
        # As on an autocommit connection, the next statement works.
        assert bound.one("SELECT count(*) AS n FROM services") == {"n": 1}


@pytest.mark.parametrize(
    ("failing", "error"),
    [
        ("INSERT INTO services (id, version, base_url) VALUES ('a', '1', 'u')", "UniqueViolation"),
        ("SELEC 1", "SyntaxError"),  # refused before it runs: the savepoint went first
        ("SELECT 1/0; SELECT 2", "DivisionByZero"),  # several statements: the simple protocol
        ("SELECT 1 + %s", "InvalidTextRepresentation"),  # a parameter the server rejects
    ],
)
def test_no_failing_statement_poisons_the_tests_transaction(
    pipeweave_database: Database, failing: str, error: str
) -> None:
    """Each statement goes with its savepoint, in one round trip: whatever fails, and
    however it is sent, the writes before it stay and the next statement works."""
    pipeweave_database.one(INSERT_SERVICE, ["a", "1", "u"])
    params = ["not a number"] if "%s" in failing else None
    with pytest.raises(getattr(psycopg.errors, error)):
        pipeweave_database.none(failing, params)
    assert pipeweave_database.one("SELECT 1 AS one; SELECT count(*) AS n FROM services") == {"n": 1}
    assert pipeweave_database.one("SELECT id FROM services WHERE id = %s", ["a"]) == {"id": "a"}


def test_rollback_fixture_gives_a_bound_database(pipeweave_database: Database) -> None:
    pipeweave_database.one(INSERT_SERVICE, ["a", "1", "u"])
    with pipeweave_database.tx() as t, t.tx() as t2:
        t2.one(INSERT_SERVICE, ["b", "1", "u"])
    assert count(pipeweave_database) == 2
    assert "bound" in repr(pipeweave_database)


@pytest.mark.parametrize("round_", range(5))
def test_threads_take_turns_on_a_bound_database(pipeweave_database: Database, round_: int) -> None:
    """Code under test that hands the test's Database to threads: each statement (a psycopg
    pipeline with its savepoint) and each tx() block has the connection to itself."""
    threads, per_thread = 6, 20
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        start.wait(timeout=10)
        try:
            for i in range(per_thread):
                if i % 2:
                    with pipeweave_database.tx() as t:
                        t.one(INSERT_SERVICE, [f"t{n}-{i}", "1", "u"])
                        assert (
                            t.one(
                                "SELECT count(*) AS n FROM services WHERE id = %s", [f"t{n}-{i}"]
                            )["n"]
                            == 1
                        )
                else:
                    pipeweave_database.one(INSERT_SERVICE, [f"t{n}-{i}", "1", "u"])
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not errors, errors
    assert count(pipeweave_database) == threads * per_thread


# -- lifetime, pools, errors ---------------------------------------------------------------------


def test_close_is_idempotent_and_context_manager_closes(pipeweave_config: DatabaseConfig) -> None:
    db = create_database(pipeweave_config)
    assert test_connection(db)
    close_database(db)
    close_database(db)
    assert db.closed
    with pytest.raises(PipeweaveError, match="closed"):
        db.one("SELECT 1 AS x")
    with create_database(pipeweave_config) as db2:
        assert db2.one("SELECT 1 AS x") == {"x": 1}
    assert db2.closed


def test_test_connection_is_not_collected_as_a_test() -> None:
    assert test_connection.__test__ is False  # type: ignore[attr-defined]


def test_test_connection_false_with_reason_logged(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    with (
        create_database(host="127.0.0.1", port=port, database="d", user="u", password="pw-x") as db,
        caplog.at_level(logging.WARNING, logger="pipeweave_db"),
    ):
        assert test_connection(db) is False
    assert "database connection failed" in caplog.text
    assert "refused" in caplog.text.lower()
    assert "pw-x" not in caplog.text


def test_refused_connection_fails_fast_with_the_reason() -> None:
    port = free_port()
    with create_database(
        host="127.0.0.1", port=port, database="d", user="u", connect_timeout=10
    ) as db:
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match=r"(?i)refused"):
            db.one("SELECT 1 AS x")
        assert time.monotonic() - started < 5


def test_keyword_forms(pipeweave_server: ServerInfo, pipeweave_database_url: str) -> None:
    name = conninfo_to_dict(pipeweave_database_url)["dbname"]
    with create_database(connection_string=pipeweave_database_url) as db:
        assert db.one("SELECT current_database() AS d")["d"] == name
    with create_database(
        host=pipeweave_server.host,
        port=pipeweave_server.port,
        database=name,
        user=pipeweave_server.user,
        password=pipeweave_server.password,
        ssl=False,
        max=3,
        allow_exit_on_idle=False,
    ) as db:
        assert db.one("SELECT current_database() AS d")["d"] == name
    with pytest.raises(ConfigError, match="unknown setting"):
        create_database(connectionString=pipeweave_database_url)


def test_pool_never_exceeds_max(pipeweave_config: DatabaseConfig) -> None:
    pids: list[int] = []
    with create_database(pipeweave_config, max=2) as db:

        def work() -> None:
            pids.append(db.one("SELECT pg_backend_pid() AS pid, pg_sleep(0.2)")["pid"])

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(pids) == 4
    assert len(set(pids)) <= 2


def test_allow_exit_on_idle_keeps_no_connection(
    pipeweave_config: DatabaseConfig, pipeweave_database_url: str
) -> None:
    def connections(app: str) -> int:
        with psycopg.connect(pipeweave_database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [app]
            ).fetchone()
        return int(row[0])  # type: ignore[index]

    # A closed connection's backend exits a moment later (the first query's probe too): poll.
    with create_database(
        pipeweave_config, application_name="idle-exit", allow_exit_on_idle=True
    ) as db:
        db.one("SELECT 1 AS x")
        assert wait_until(lambda: connections("idle-exit") == 0, 5)
    with create_database(pipeweave_config, application_name="kept", allow_exit_on_idle=False) as db:
        db.one("SELECT 1 AS x")
        assert wait_until(lambda: connections("kept") == 1, 5)
        time.sleep(0.2)  # and, idle, it stays open
        assert connections("kept") == 1


def test_create_database_from_env(
    pipeweave_env: dict[str, str], pipeweave_database_url: str
) -> None:
    with create_database_from_env() as db:
        assert test_connection(db)
    with create_database_from_env({"DATABASE_URL": pipeweave_database_url}) as db:
        assert is_database_initialized(db)


def test_auto_init_db_initializes_a_missing_schema(empty_database_url: str) -> None:
    with create_database_from_env({"DATABASE_URL": empty_database_url}) as db:
        assert not is_database_initialized(db)
    with create_database_from_env(
        {"DATABASE_URL": empty_database_url, "AUTO_INIT_DB": "true"}
    ) as db:
        assert is_database_initialized(db)


def test_individual_credentials_reach_the_server(
    pipeweave_server: ServerInfo, pipeweave_database_url: str
) -> None:
    name = conninfo_to_dict(pipeweave_database_url)["dbname"]
    env = {
        "DB_HOST": pipeweave_server.socket_dir or pipeweave_server.host,
        "DB_PORT": str(pipeweave_server.port),
        "DB_NAME": name,
        "DB_USER": pipeweave_server.user,
        "DB_PASS": pipeweave_server.password or "",
    }
    if pipeweave_server.socket_dir:
        env["NODE_ENV"] = "production"  # a socket: no SSL even in production
    with create_database_from_env(env) as db:
        assert db.one("SELECT current_database() AS d")["d"] == name
