"""init repairs what an applied migration made and someone dropped; status says when it will.

Each case starts from a database ``pipeweave-db init`` initialized, with rows in it, then
drops one kind of object. Rows are never touched by the repair.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from helpers import PIPEWEAVE_DB, clean_env, run, run_at_once

from pipeweave_db import (
    Database,
    SchemaError,
    create_async_database,
    create_database,
    initialize_schema,
    initialize_schema_async,
    schema_status,
)
from pytest_pipeweave import ServerInfo


@pytest.fixture
def db(empty_database_url: str) -> Iterator[Database]:
    with create_database(connection_string=empty_database_url) as database:
        initialize_schema(database)
        database.none("INSERT INTO services (id, version, base_url) VALUES ('kept', '1', 'u')")
        yield database


def services(db: Database) -> list[str]:
    return [row["id"] for row in db.many_or_none("SELECT id FROM services")]


@pytest.mark.parametrize(
    ("drop", "missing"),
    [
        ("DROP INDEX idx_tasks_code_hash", "index idx_tasks_code_hash on tasks"),
        (
            "DROP TRIGGER update_tasks_updated_at ON tasks",
            "trigger update_tasks_updated_at on tasks",
        ),
        (
            "DROP FUNCTION cleanup_expired_idempotency_cache()",
            "function cleanup_expired_idempotency_cache",
        ),
    ],
    ids=["index", "trigger", "function"],
)
def test_each_kind_of_missing_object_is_created_again(
    db: Database, empty_database_url: str, drop: str, missing: str
) -> None:
    db.none(drop)
    env = clean_env(DATABASE_URL=empty_database_url)
    status = run("status", env=env)
    assert status.code == 3, status.output
    assert f"  • {missing}" in status.stdout
    assert "Run `pipeweave-db init` to create the missing indexes, triggers and functions." in (
        status.stdout
    )
    init = run("init", env=env)
    assert init.code == 0, init.output
    assert "Created again (1):" in init.stdout and missing in init.stdout
    assert run("status", env=env).code == 0
    assert services(db) == ["kept"]
    assert run("init", "--json", env=env).json()["changed"] is False


def test_a_function_and_the_triggers_that_need_it(db: Database) -> None:
    db.none("DROP FUNCTION update_updated_at_column() CASCADE")
    status = schema_status(db)
    assert status.missing_objects == (
        "function update_updated_at_column",
        "trigger update_pipelines_updated_at on pipelines",
        "trigger update_tasks_updated_at on tasks",
    )
    assert initialize_schema(db).repaired == status.missing_objects
    assert schema_status(db).up_to_date


def test_a_missing_table_comes_back_with_its_indexes_and_the_rows_stay(
    db: Database, empty_database_url: str
) -> None:
    db.none("DROP TABLE dlq")
    env = clean_env(DATABASE_URL=empty_database_url)
    status = run("status", env=env)
    assert status.code == 3
    assert "Missing tables (1):" in status.stdout
    assert "Missing indexes" not in status.stdout, "a table's own indexes come with it"
    assert "Run `pipeweave-db init` to create the missing tables." in status.stdout
    assert run("init", "--json", env=env).json()["created_tables"] == ["dlq"]
    assert schema_status(db).up_to_date
    assert services(db) == ["kept"]
    assert db.one("SELECT count(*) AS n FROM pg_indexes WHERE tablename = 'dlq'")["n"] == 5


def test_a_table_with_another_shape_is_refused_with_what_to_do(
    db: Database, empty_database_url: str
) -> None:
    db.none("ALTER TABLE services DROP COLUMN last_heartbeat CASCADE")
    db.none("DROP INDEX idx_tasks_code_hash")
    env = clean_env(DATABASE_URL=empty_database_url)
    status = run("status", env=env)
    assert status.code == 6, status.output
    assert "services (missing columns: last_heartbeat)" in status.stdout
    assert "cannot repair a table with missing columns" in status.stdout
    assert "Run `pipeweave-db init`" not in status.stdout
    assert run("status", "--json", env=env).json()["state"] == "schema_differs"
    init = run("init", env=env)
    assert init.code == 1
    assert "cannot repair: services (missing columns: last_heartbeat)" in init.stderr
    with pytest.raises(SchemaError, match="pipeweave-db reset"):
        initialize_schema(db)
    assert "index idx_tasks_code_hash on tasks" in schema_status(db).missing_objects, (
        "nothing was changed"
    )


def test_concurrent_repairs_repair_once(db: Database, empty_database_url: str) -> None:
    db.none("DROP TABLE dlq; DROP INDEX idx_tasks_code_hash")
    assert PIPEWEAVE_DB is not None
    done = run_at_once(4, [PIPEWEAVE_DB, "init"], env=clean_env(DATABASE_URL=empty_database_url))
    assert [p.returncode for p in done] == [0, 0, 0, 0], [p.stderr for p in done]
    assert sum("Created again" in p.stdout for p in done) == 1
    assert sum("already initialized" in p.stdout for p in done) == 3
    assert schema_status(db).up_to_date and services(db) == ["kept"]


@pytest.mark.asyncio
async def test_the_async_twin_repairs_too(db: Database, empty_database_url: str) -> None:
    db.none("DROP INDEX idx_tasks_code_hash")
    async with create_async_database(connection_string=empty_database_url) as adb:
        assert (await initialize_schema_async(adb)).repaired == (
            "index idx_tasks_code_hash on tasks",
        )
    assert schema_status(db).up_to_date


def test_a_role_that_may_not_create_a_schema_still_gets_a_status(
    db: Database, empty_database_url: str, pipeweave_server: ServerInfo
) -> None:
    """The comparison runs the migrations in a schema of its own, rolled back: without the
    right to create one, status compares the tables alone."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    name = psycopg.conninfo.conninfo_to_dict(empty_database_url)["dbname"]
    with psycopg.connect(pipeweave_server.admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
    db.none(f"GRANT SELECT ON pipeweave_schema_migrations TO {role}")
    db.none("DROP INDEX idx_tasks_code_hash")
    try:
        url = pipeweave_server.url(name).replace("postgres@", f"{role}@", 1)
        with create_database(connection_string=url) as reader:
            status = schema_status(reader)
        assert status.initialized and status.missing_objects == ()
    finally:
        db.none(f"REVOKE ALL ON pipeweave_schema_migrations FROM {role}")
        with psycopg.connect(pipeweave_server.admin_url, autocommit=True) as admin:
            admin.execute(f"DROP ROLE {role}")
