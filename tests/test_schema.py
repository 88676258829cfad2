"""initialize_schema, schema_status, migrate and reset_schema on real databases."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import psycopg
import pytest
from helpers import run_at_once

from pipeweave_db import (
    PIPEWEAVE_TABLES,
    Database,
    Migration,
    MigrationError,
    SchemaError,
    create_database,
    initialize_schema,
    is_database_initialized,
    load_migrations,
    migrate,
    reset_schema,
    schema_status,
)

INITIAL = load_migrations()[0]


@pytest.fixture
def db(empty_database_url: str) -> Iterator[Database]:
    with create_database(connection_string=empty_database_url) as database:
        yield database


def tables(db: Database) -> set[str]:
    rows = db.many_or_none("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return {r["tablename"] for r in rows}


def test_initialize_creates_everything_once(db: Database) -> None:
    assert not is_database_initialized(db)
    first = initialize_schema(db)
    assert first.created_tables == PIPEWEAVE_TABLES
    assert [m.label for m in first.applied] == ["0001_initial"]
    assert is_database_initialized(db)
    again = initialize_schema(db)
    assert (again.applied, again.created_tables, again.changed_anything) == ((), (), False)
    status = schema_status(db)
    assert (status.initialized, status.up_to_date, status.version) == (True, True, 1)
    assert [a.checksum for a in status.applied] == [INITIAL.checksum]


CATALOG = """
SELECT 'column' AS kind,
       concat_ws(' ', c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod),
                 a.attnotnull, pg_get_expr(d.adbin, d.adrelid)) AS item
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND a.attnum > 0
  AND NOT a.attisdropped
UNION ALL SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL SELECT 'constraint', conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
WHERE connamespace = 'public'::regnamespace
UNION ALL SELECT 'trigger', pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
  AND tgname <> 'pytest_pipeweave_write'  -- the plugin's, in test databases (leaked commits)
UNION ALL SELECT 'function', proname || pg_get_function_result(oid) FROM pg_proc
WHERE pronamespace = 'public'::regnamespace
"""


def catalog(db: Database) -> set[tuple[str, str]]:
    return {(row["kind"], row["item"]) for row in db.many(CATALOG)}


def test_initialize_completes_a_partial_schema(db: Database, pipeweave_database: Database) -> None:
    """The old orchestrator's init, which was not re-runnable, died halfway on an old release."""
    db.none(INITIAL.sql)
    db.none("INSERT INTO services (id, version, base_url) VALUES ('kept', '1', 'u')")
    db.none("DROP TABLE task_runs, dlq, idempotency_cache")
    db.none("DROP INDEX idx_services_status, idx_pipelines_name")
    db.none("DROP TRIGGER update_pipelines_updated_at ON pipelines")
    db.none("ALTER TABLE tasks DROP COLUMN input_schema")
    db.none("DROP FUNCTION cleanup_expired_idempotency_cache()")
    assert not is_database_initialized(db)

    result = initialize_schema(db)

    assert result.created_tables == ("dlq", "idempotency_cache", "task_runs")
    assert catalog(db) == catalog(pipeweave_database), "the full contract, object by object"
    assert db.one("SELECT id FROM services") == {"id": "kept"}


def test_a_database_the_orchestrator_created_is_recognised_and_adopted(db: Database) -> None:
    db.none(INITIAL.sql)  # the schema, but none of our migration records
    db.none("INSERT INTO services (id, version, base_url) VALUES ('live', '1', 'u')")
    status = schema_status(db)
    assert status.initialized
    assert [m.label for m in status.pending] == ["0001_initial"]
    assert not status.up_to_date
    assert [m.label for m in migrate(db)] == ["0001_initial"]
    assert schema_status(db).up_to_date
    assert db.one("SELECT id FROM services") == {"id": "live"}


def test_one_missing_table_means_not_initialized(db: Database) -> None:
    initialize_schema(db)
    db.none("DROP TABLE dlq")
    assert not is_database_initialized(db)
    status = schema_status(db)
    assert status.missing_tables == ("dlq",)
    assert not status.initialized and not status.up_to_date
    result = initialize_schema(db)  # the migration is recorded, and what it made is repaired
    assert result.created_tables == ("dlq",) and result.applied == ()
    assert is_database_initialized(db)


def test_status_lists_other_tables_apart(db: Database) -> None:
    db.none("CREATE TABLE customer_notes (id int)")
    initialize_schema(db)
    status = schema_status(db)
    assert status.tables == PIPEWEAVE_TABLES
    assert status.other_tables == ("customer_notes",)


INIT_SCRIPT = """
import sys
from pipeweave_db import create_database, initialize_schema
with create_database(connection_string=sys.argv[1], max=1) as db:
    result = initialize_schema(db)
print(",".join(result.created_tables))
"""


def test_concurrent_init_from_eight_processes(db: Database, empty_database_url: str) -> None:
    processes = run_at_once(8, [sys.executable, "-c", INIT_SCRIPT, empty_database_url])
    outputs = [(p.stdout, p.stderr) for p in processes]
    assert [p.returncode for p in processes] == [0] * 8, [err for _, err in outputs]
    creators = [out.strip() for out, _ in outputs if out.strip()]
    assert len(creators) == 1, "exactly one process created the tables"
    assert db.one("SELECT count(*) AS n FROM pipeweave_schema_migrations") == {"n": 1}
    assert is_database_initialized(db)


# -- migrations --------------------------------------------------------------------------------


def extra(version: int, statement: str, name: str | None = None) -> Migration:
    return Migration(version, name or f"extra_{version}", statement)


def test_migrate_applies_pending_in_order_and_reports_them(db: Database) -> None:
    migrations = (
        INITIAL,
        extra(2, "CREATE TABLE extra_two (id int)"),
        extra(3, "ALTER TABLE extra_two ADD note text"),
    )
    assert [m.label for m in schema_status(db, migrations).pending] == [
        "0001_initial",
        "0002_extra_2",
        "0003_extra_3",
    ]
    assert [m.version for m in migrate(db, migrations[:2])] == [1, 2]
    assert [m.version for m in schema_status(db, migrations).pending] == [3]
    assert [m.version for m in migrate(db, migrations)] == [3]
    assert migrate(db, migrations) == ()
    applied = schema_status(db, migrations).applied
    assert [(a.version, a.name) for a in applied] == [
        (1, "initial"),
        (2, "extra_2"),
        (3, "extra_3"),
    ]
    assert all(a.applied_at is not None and len(a.checksum) == 64 for a in applied)


def test_migrate_stops_at_the_first_failure(db: Database) -> None:
    migrations = (
        INITIAL,
        extra(2, "CREATE TABLE extra_two (id int)"),
        extra(3, "CREATE TABLE extra_three (id int); SELECT 1 / 0"),
        extra(4, "CREATE TABLE extra_four (id int)"),
    )
    with pytest.raises(MigrationError, match=r"0003_extra_3 failed: division by zero"):
        migrate(db, migrations)
    assert {"extra_two"} <= tables(db)
    assert not {"extra_three", "extra_four"} & tables(db), "the failed migration left nothing"
    assert [m.version for m in schema_status(db, migrations).pending] == [3, 4]


def test_a_changed_applied_migration_is_reported_never_rerun(db: Database) -> None:
    migrate(db, (INITIAL, extra(2, "CREATE TABLE extra_two (id int)")))
    changed = (
        INITIAL,
        extra(2, "CREATE TABLE extra_two (id int, more text)"),
        extra(3, "CREATE TABLE extra_three (id int)"),
    )
    status = schema_status(db, changed)
    assert [a.label for a in status.changed] == ["0002_extra_2"]
    assert not status.up_to_date
    with pytest.raises(MigrationError, match="0002_extra_2 no longer match"):
        migrate(db, changed)
    with pytest.raises(MigrationError, match="0002_extra_2"):
        initialize_schema(db, changed)
    assert "extra_three" not in tables(db), "nothing runs while an applied migration changed"


MIGRATE_SCRIPT = """
import sys
from pipeweave_db import Migration, create_database, load_migrations, migrate
sql = "CREATE TABLE applied_count (n int); INSERT INTO applied_count VALUES (1)"
extra = [Migration(2, "counter", sql)]
with create_database(connection_string=sys.argv[1], max=1) as db:
    print(len(migrate(db, [*load_migrations(), *extra])))
"""


def test_concurrent_migrate_applies_each_migration_once(
    db: Database, empty_database_url: str
) -> None:
    processes = run_at_once(2, [sys.executable, "-c", MIGRATE_SCRIPT, empty_database_url])
    outputs = [(p.stdout, p.stderr) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]
    # One transaction per migration: the two may share the work ([1, 1]) or not ([0, 2]).
    assert sum(int(out) for out, _ in outputs) == 2
    assert db.one("SELECT count(*) AS n FROM applied_count") == {"n": 1}
    assert [m.version for m in schema_status(db).applied] == [1, 2]


# -- reset ---------------------------------------------------------------------------------------


def test_reset_recreates_pipeweave_tables_and_leaves_others_alone(db: Database) -> None:
    initialize_schema(db)
    db.none("CREATE TABLE customer_notes (id int, note text)")
    db.none("INSERT INTO customer_notes VALUES (1, 'keep me')")
    db.none("INSERT INTO services (id, version, base_url) VALUES ('gone', '1', 'u')")
    result = reset_schema(db)
    assert result.created_tables == PIPEWEAVE_TABLES
    assert db.one("SELECT count(*) AS n FROM services") == {"n": 0}
    assert db.many("SELECT * FROM customer_notes") == [{"id": 1, "note": "keep me"}]
    assert schema_status(db).up_to_date


def test_reset_refuses_when_another_table_depends_on_pipeweave(db: Database) -> None:
    initialize_schema(db)
    db.none("INSERT INTO services (id, version, base_url) VALUES ('kept', '1', 'u')")
    db.none("CREATE TABLE deployments (service_id TEXT REFERENCES services(id))")
    with pytest.raises(SchemaError, match="deployments") as info:
        reset_schema(db)
    assert "\n" not in str(info.value)
    assert db.one("SELECT id FROM services") == {"id": "kept"}, "nothing changed"
    assert "deployments" in tables(db)


def test_reset_keeps_a_trigger_function_other_tables_use(db: Database) -> None:
    initialize_schema(db)
    db.none("CREATE TABLE documents (id int, updated_at timestamptz)")
    db.none(
        "CREATE TRIGGER documents_updated BEFORE UPDATE ON documents"
        " FOR EACH ROW EXECUTE FUNCTION update_updated_at_column()"
    )
    reset_schema(db)
    assert is_database_initialized(db)
    db.none("INSERT INTO documents VALUES (1, NULL)")
    db.none("UPDATE documents SET id = 2")
    assert db.one("SELECT updated_at IS NOT NULL AS set FROM documents") == {"set": True}


def test_reset_on_an_empty_database_initializes_it(db: Database) -> None:
    assert reset_schema(db).created_tables == PIPEWEAVE_TABLES


def test_schema_functions_work_inside_the_rollback_fixture(pipeweave_database: Database) -> None:
    """The plugin's bound Database: reset and init run as savepoints of the test's transaction."""
    pipeweave_database.none("INSERT INTO services (id, version, base_url) VALUES ('x', '1', 'u')")
    reset_schema(pipeweave_database)
    assert pipeweave_database.one("SELECT count(*) AS n FROM services") == {"n": 0}
    assert schema_status(pipeweave_database).up_to_date
    with pytest.raises(psycopg.errors.UndefinedTable):
        pipeweave_database.none("SELECT * FROM no_such_table")
    assert is_database_initialized(pipeweave_database)
