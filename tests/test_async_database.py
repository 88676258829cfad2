"""AsyncDatabase and the async twins, on real databases, through the plugin's async fixtures.

The same rules as the sync Database: each case is checked against ``Database``'s answer to
the same call where there is one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncNullConnectionPool

from pipeweave_db import (
    AsyncDatabase,
    ConfigError,
    Database,
    PipeweaveError,
    QueryResultError,
    SchemaError,
    cleanup_async,
    cleanup_expired_cache_async,
    cleanup_old_dlq_async,
    close_database_async,
    create_async_database,
    create_async_database_from_env,
    initialize_schema_async,
    is_database_initialized,
    is_database_initialized_async,
    migrate_async,
    reset_schema_async,
    schema_status,
    schema_status_async,
    test_connection_async,
)
from pytest_pipeweave import SeedData
from pytest_pipeweave.servers.local import free_port

pytestmark = pytest.mark.asyncio

INSERT = "INSERT INTO services (id, version, base_url) VALUES (%s, '1', 'u')"
COUNT = "SELECT count(*) AS n FROM services"


async def count(db: AsyncDatabase) -> int:
    return int((await db.one(COUNT))["n"])


async def test_the_helpers_follow_the_same_rules_as_the_sync_ones(
    pipeweave_async_database: AsyncDatabase, pipeweave_database: Database
) -> None:
    adb = pipeweave_async_database
    assert await adb.one("SELECT 1 AS x") == {"x": 1}
    assert await adb.one_or_none("SELECT 1 AS x WHERE false") is None
    assert await adb.many("SELECT g AS x FROM generate_series(1, 2) g") == [{"x": 1}, {"x": 2}]
    assert await adb.many_or_none("SELECT 1 WHERE false") == []
    assert await adb.any("SELECT 1 AS x") == [{"x": 1}]
    assert await adb.result("SELECT g FROM generate_series(1, 3) g") == 3
    assert await adb.none("SELECT 1 WHERE false") is None
    for helper, query in (
        ("one", "SELECT 1 WHERE false"),
        ("one_or_none", "SELECT g FROM generate_series(1, 2) g"),
        ("many", "SELECT 1 WHERE false"),
        ("none", "SELECT 1"),
    ):
        with pytest.raises(QueryResultError) as sync_error:
            getattr(pipeweave_database, helper)(query)
        with pytest.raises(QueryResultError) as async_error:
            await getattr(adb, helper)(query)
        assert str(async_error.value) == str(sync_error.value)


@pytest.mark.parametrize(
    ("failing", "error"),
    [
        ("SELEC 1", "SyntaxError"),
        ("SELECT 1/0; SELECT 2", "DivisionByZero"),
        ("SELECT 1 + %s", "InvalidTextRepresentation"),
    ],
)
async def test_no_failing_statement_poisons_the_tests_transaction(
    pipeweave_async_database: AsyncDatabase, failing: str, error: str
) -> None:
    await pipeweave_async_database.none(INSERT, ["a"])
    params = ["not a number"] if "%s" in failing else None
    with pytest.raises(getattr(psycopg.errors, error)):
        await pipeweave_async_database.none(failing, params)
    assert await pipeweave_async_database.one(
        "SELECT 1 AS one; SELECT count(*) AS n FROM services"
    ) == {"n": 1}


async def test_a_failing_statement_then_a_good_one(
    pipeweave_async_database: AsyncDatabase,
) -> None:
    await pipeweave_async_database.none(INSERT, ["a"])
    with pytest.raises(psycopg.errors.NotNullViolation):
        await pipeweave_async_database.none("INSERT INTO services (id) VALUES ('no-version')")
    await pipeweave_async_database.none(INSERT, ["b"])
    assert await count(pipeweave_async_database) == 2


async def test_tx_in_code_under_test_is_a_savepoint_nested_too(
    pipeweave_async_database: AsyncDatabase,
) -> None:
    db = pipeweave_async_database
    async with db.tx() as t:
        await t.none(INSERT, ["outer"])
        with pytest.raises(RuntimeError):
            async with t.tx() as sp:
                await sp.none(INSERT, ["inner"])
                raise RuntimeError("rolls back to the savepoint")
        async with t.tx() as sp:
            await sp.none(INSERT, ["kept"])
    assert {r["id"] for r in await db.many("SELECT id FROM services")} == {"outer", "kept"}
    with pytest.raises(PipeweaveError, match="this transaction has ended"):
        await t.one("SELECT 1")


async def test_tasks_take_turns_on_the_test_connection(
    pipeweave_async_database: AsyncDatabase,
) -> None:
    """Transactions from concurrent tasks on one connection run one after the other, and a
    task inside its own transaction may still use the outer AsyncDatabase."""
    db = pipeweave_async_database

    async def register(name: str) -> None:
        async with db.tx() as t:
            await t.none(INSERT, [name])
            await asyncio.sleep(0)  # let the others try to get in
            assert (await db.one("SELECT count(*) AS n FROM services WHERE id = %s", [name]))[
                "n"
            ] == 1
            await t.none(
                "INSERT INTO tasks (id, service_id, code_hash) VALUES (%s, %s, 'h')",
                [f"task-{name}", name],
            )

    await asyncio.gather(*(register(f"svc-{i}") for i in range(8)))
    assert await count(db) == 8


async def test_committed_writes_are_seen_by_other_connections(
    pipeweave_async_database_committed: AsyncDatabase, pipeweave_database_url: str
) -> None:
    db = pipeweave_async_database_committed
    async with db.tx() as t:
        await t.none(INSERT, ["committed"])
    with pytest.raises(RuntimeError):
        async with db.tx() as t:
            await t.none(INSERT, ["rolled-back"])
            raise RuntimeError("roll back")
    with psycopg.connect(pipeweave_database_url) as other:
        assert other.execute("SELECT id FROM services").fetchall() == [("committed",)]


async def test_create_async_database_owns_its_pool(
    pipeweave_env: dict[str, str], pipeweave_database_url: str
) -> None:
    async with create_async_database(connection_string=pipeweave_database_url, max=3) as db:
        await asyncio.gather(*(db.none(INSERT, [f"s{i}"]) for i in range(6)))
        async with db.tx() as t:
            await t.none(INSERT, ["in-tx"])
        assert await count(db) == 7
        assert await test_connection_async(db)
        assert "postgresql://" in repr(db)
    assert db.closed and "(closed)" in repr(db)
    with pytest.raises(PipeweaveError, match="this AsyncDatabase is closed"):
        await db.one("SELECT 1")
    await close_database_async(db)  # twice: nothing happens


async def test_from_env_with_auto_init_initializes_an_empty_database(
    empty_database_url: str,
) -> None:
    db = create_async_database_from_env(
        {"DATABASE_URL": empty_database_url, "AUTO_INIT_DB": "true", "DB_ALLOW_EXIT_ON_IDLE": "1"}
    )
    async with db:
        assert await is_database_initialized_async(db)
        assert isinstance(db._pool, AsyncNullConnectionPool)
    with Database(db.config) as sync:  # type: ignore[arg-type]
        assert is_database_initialized(sync)


async def test_bad_settings_are_the_same_errors_as_the_sync_ones() -> None:
    with pytest.raises(ConfigError, match="unknown setting for create_async_database"):
        create_async_database(colour="blue")
    with pytest.raises(ConfigError, match="DB_PORT must be a whole number"):
        create_async_database_from_env(
            {"DB_HOST": "h", "DB_NAME": "d", "DB_USER": "u", "DB_PORT": "x"}
        )
    db = create_async_database(host="127.0.0.1", database="d", user="u", password="s3cret")
    assert "s3cret" not in repr(db) and ":***@" in repr(db)


async def test_a_refused_connection_fails_fast_and_test_connection_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = create_async_database(
        host="127.0.0.1", port=free_port(), database="d", user="u", connect_timeout=2
    )
    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        await db.one("SELECT 1")
    with caplog.at_level(logging.WARNING, logger="pipeweave_db"):
        assert not await test_connection_async(db)
    assert "Connection refused" in caplog.text
    await db.close()


async def test_the_schema_twins(empty_database_url: str) -> None:
    async with create_async_database(connection_string=empty_database_url) as db:
        assert not await is_database_initialized_async(db)
        result = await initialize_schema_async(db)
        assert len(result.created_tables) == 8 and [m.label for m in result.applied] == [
            "0001_initial"
        ]
        assert not (await initialize_schema_async(db)).changed_anything
        assert await migrate_async(db) == ()
        await db.none(INSERT, ["before-reset"])
        assert (await reset_schema_async(db)).created_tables
        assert await count(db) == 0
        await db.none("CREATE TABLE mine (s text REFERENCES services(id))")
        with pytest.raises(SchemaError, match="cannot reset"):
            await reset_schema_async(db)
        status = await schema_status_async(db)
    with Database(db.config) as sync:  # type: ignore[arg-type]
        assert schema_status(sync) == status
    assert status.up_to_date and status.other_tables == ("mine",)


async def test_the_cleanup_twins_on_the_seed(
    pipeweave_async_seed: SeedData, pipeweave_async_database: AsyncDatabase
) -> None:
    """Inside the test's transaction, through the test's AsyncDatabase."""
    expected = pipeweave_async_seed.expected_cleanup
    assert await cleanup_async(pipeweave_async_database) == expected
    assert await cleanup_async(pipeweave_async_database) == type(expected)(0, 0)
    assert await cleanup_expired_cache_async(pipeweave_async_database, batch_size=1) == 0
    assert await cleanup_old_dlq_async(pipeweave_async_database, 0) == 2  # the recent ones


async def test_the_async_factory_makes_what_the_sync_one_makes(
    pipeweave_async_factory: Any, pipeweave_async_database: AsyncDatabase
) -> None:
    run = await pipeweave_async_factory.task_run(status="completed")
    assert run["status"] == "completed" and run["completed_at"] is not None
    tables = ("services", "tasks", "pipelines", "pipeline_runs", "task_runs")
    for table in tables:
        assert (await pipeweave_async_database.one(f"SELECT count(*) AS n FROM {table}"))[
            "n"
        ] == 1, table
    runs = await pipeweave_async_factory.task_runs(3, pipeline_run={"id": run["pipeline_run_id"]})
    assert len({r["id"] for r in runs}) == 3
    assert pipeweave_async_factory.task_runs.__name__ == "task_runs"
