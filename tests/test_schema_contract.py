"""The schema matches ../shared/reference-schema.md, object by object, as the catalog sees it.

Each table's columns (type, NOT NULL, default), CHECK constraints (name and allowed values),
foreign keys (name, target, ON DELETE CASCADE), indexes (name and definition), the two
updated_at triggers and the two functions the orchestrator calls.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import sql

from pipeweave_db import PIPEWEAVE_TABLES, Database
from pytest_pipeweave import PipeweaveFactory

NOW = "now()"
EMPTY_JSON = "'{}'::jsonb"
EMPTY_TEXT_ARRAY = "'{}'::text[]"
TZ = "timestamp with time zone"

# column: (type, not null, default or None)
COLUMNS: dict[str, dict[str, tuple[str, bool, str | None]]] = {
    "services": {
        "id": ("text", True, None),
        "version": ("text", True, None),
        "base_url": ("text", True, None),
        "registered_at": (TZ, True, NOW),
        "last_heartbeat": (TZ, False, None),
        "status": ("text", True, "'active'::text"),
        "metadata": ("jsonb", False, EMPTY_JSON),
    },
    "tasks": {
        "id": ("text", True, None),
        "service_id": ("text", True, None),
        "code_hash": ("text", True, None),
        "code_version": ("integer", True, "1"),
        "allowed_next": ("text[]", False, EMPTY_TEXT_ARRAY),
        "timeout_seconds": ("integer", True, "300"),
        "retries": ("integer", True, "3"),
        "retry_backoff": ("text", True, "'exponential'::text"),
        "retry_delay_ms": ("integer", True, "1000"),
        "max_retry_delay_ms": ("integer", True, "86400000"),
        "heartbeat_interval_ms": ("integer", True, "60000"),
        "concurrency": ("integer", True, "0"),
        "priority": ("integer", True, "100"),
        "idempotency_ttl_seconds": ("integer", False, None),
        "description": ("text", False, None),
        "input_schema": ("jsonb", False, None),
        "registered_at": (TZ, True, NOW),
        "updated_at": (TZ, True, NOW),
        "metadata": ("jsonb", False, EMPTY_JSON),
    },
    "task_code_history": {
        "id": ("integer", True, "nextval('task_code_history_id_seq'::regclass)"),
        "task_id": ("text", True, None),
        "code_version": ("integer", True, None),
        "code_hash": ("text", True, None),
        "service_version": ("text", True, None),
        "recorded_at": (TZ, True, NOW),
    },
    "pipelines": {
        "id": ("text", True, None),
        "name": ("text", True, None),
        "description": ("text", False, None),
        "entry_tasks": ("text[]", True, None),
        "structure": ("jsonb", True, None),
        "version": ("text", True, "'1.0.0'::text"),
        "failure_mode": ("text", True, "'fail-fast'::text"),
        "created_at": (TZ, True, NOW),
        "updated_at": (TZ, True, NOW),
        "metadata": ("jsonb", False, EMPTY_JSON),
    },
    "pipeline_runs": {
        "id": ("text", True, None),
        "pipeline_id": ("text", True, None),
        "pipeline_version": ("text", True, None),
        "structure_snapshot": ("jsonb", True, None),
        "status": ("text", True, "'pending'::text"),
        "input_path": ("text", False, None),
        "output_path": ("text", False, None),
        "started_at": (TZ, False, None),
        "completed_at": (TZ, False, None),
        "error": ("text", False, None),
        "created_at": (TZ, True, NOW),
        "metadata": ("jsonb", False, EMPTY_JSON),
    },
    "task_runs": {
        "id": ("text", True, None),
        "task_id": ("text", True, None),
        "pipeline_run_id": ("text", False, None),
        "code_version": ("integer", True, None),
        "code_hash": ("text", True, None),
        "status": ("text", True, "'pending'::text"),
        "attempt": ("integer", True, "1"),
        "max_retries": ("integer", True, None),
        "priority": ("integer", True, "100"),
        "input_path": ("text", False, None),
        "output_path": ("text", False, None),
        "output_size": ("integer", False, None),
        "assets": ("jsonb", False, EMPTY_JSON),
        "logs_path": ("text", False, None),
        "error": ("text", False, None),
        "error_code": ("text", False, None),
        "idempotency_key": ("text", False, None),
        "upstream_refs": ("jsonb", False, EMPTY_JSON),
        "selected_next": ("text[]", False, EMPTY_TEXT_ARRAY),
        "previous_attempts": ("jsonb", False, "'[]'::jsonb"),
        "started_at": (TZ, False, None),
        "completed_at": (TZ, False, None),
        "heartbeat_at": (TZ, False, None),
        "heartbeat_timeout_ms": ("integer", False, None),
        "scheduled_for": (TZ, False, None),
        "created_at": (TZ, True, NOW),
        "metadata": ("jsonb", False, EMPTY_JSON),
    },
    "dlq": {
        "id": ("text", True, None),
        "task_run_id": ("text", True, None),
        "task_id": ("text", True, None),
        "pipeline_run_id": ("text", False, None),
        "code_version": ("integer", True, None),
        "code_hash": ("text", True, None),
        "error": ("text", True, None),
        "attempts": ("integer", True, None),
        "input_path": ("text", False, None),
        "upstream_refs": ("jsonb", False, EMPTY_JSON),
        "previous_attempts": ("jsonb", True, None),
        "failed_at": (TZ, True, NOW),
        "retried_at": (TZ, False, None),
        "retry_run_id": ("text", False, None),
        "metadata": ("jsonb", False, EMPTY_JSON),
    },
    "idempotency_cache": {
        "idempotency_key": ("text", True, None),
        "task_id": ("text", True, None),
        "task_run_id": ("text", True, None),
        "code_version": ("integer", True, None),
        "output_path": ("text", True, None),
        "output_size": ("integer", False, None),
        "assets": ("jsonb", False, EMPTY_JSON),
        "cached_at": (TZ, True, NOW),
        "expires_at": (TZ, True, None),
    },
}

PRIMARY_KEYS = {table: "id" for table in PIPEWEAVE_TABLES} | {
    "idempotency_cache": "idempotency_key"
}

CHECKS = {
    "services_status_check": {"active", "inactive", "disconnected"},
    "tasks_retry_backoff_check": {"fixed", "exponential"},
    "pipelines_failure_mode_check": {"fail-fast", "continue", "partial-merge"},
    "pipeline_runs_status_check": {
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
        "partial",
    },
    "task_runs_status_check": {
        "pending",
        "running",
        "completed",
        "failed",
        "timeout",
        "cancelled",
        "waiting",
    },
}

# name: (table, column, referenced table); all ON DELETE CASCADE
FOREIGN_KEYS = {
    "tasks_service_id_fkey": ("tasks", "service_id", "services"),
    "task_code_history_task_id_fkey": ("task_code_history", "task_id", "tasks"),
    "pipeline_runs_pipeline_id_fkey": ("pipeline_runs", "pipeline_id", "pipelines"),
    "task_runs_task_id_fkey": ("task_runs", "task_id", "tasks"),
    "task_runs_pipeline_run_id_fkey": ("task_runs", "pipeline_run_id", "pipeline_runs"),
}

# index name: the part of pg_get_indexdef after "ON public.<table> "
INDEXES = {
    "idx_services_status": "USING btree (status)",
    "idx_services_last_heartbeat": "USING btree (last_heartbeat)",
    "idx_tasks_service_id": "USING btree (service_id)",
    "idx_tasks_code_hash": "USING btree (code_hash)",
    "idx_tasks_code_version": "USING btree (code_version)",
    "idx_tasks_input_schema": "USING gin (input_schema) WHERE (input_schema IS NOT NULL)",
    "idx_task_code_history_task_id": "USING btree (task_id)",
    "idx_task_code_history_code_version": "USING btree (task_id, code_version DESC)",
    "idx_pipelines_name": "USING btree (name)",
    "idx_pipeline_runs_pipeline_id": "USING btree (pipeline_id)",
    "idx_pipeline_runs_status": "USING btree (status)",
    "idx_pipeline_runs_created_at": "USING btree (created_at DESC)",
    "idx_task_runs_task_id": "USING btree (task_id)",
    "idx_task_runs_pipeline_run_id": "USING btree (pipeline_run_id)",
    "idx_task_runs_status": "USING btree (status)",
    "idx_task_runs_idempotency_key": (
        "USING btree (idempotency_key) WHERE (idempotency_key IS NOT NULL)"
    ),
    "idx_task_runs_scheduled_for": "USING btree (scheduled_for) WHERE (scheduled_for IS NOT NULL)",
    "idx_task_runs_created_at": "USING btree (created_at DESC)",
    "idx_task_runs_pending": "USING btree (priority, created_at) WHERE (status = 'pending'::text)",
    "idx_dlq_task_id": "USING btree (task_id)",
    "idx_dlq_pipeline_run_id": "USING btree (pipeline_run_id)",
    "idx_dlq_failed_at": "USING btree (failed_at DESC)",
    "idx_dlq_retried_at": "USING btree (retried_at) WHERE (retried_at IS NOT NULL)",
    "idx_idempotency_cache_task_id": "USING btree (task_id)",
    "idx_idempotency_cache_expires_at": "USING btree (expires_at)",
}


@pytest.mark.parametrize("table", sorted(COLUMNS))
def test_columns(pipeweave_database: Database, table: str) -> None:
    rows = pipeweave_database.many(
        """SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
                  a.attnotnull AS not_null, pg_get_expr(d.adbin, d.adrelid) AS default
           FROM pg_attribute a
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped""",
        [table],
    )
    found = {row["name"]: (row["type"], row["not_null"], row["default"]) for row in rows}
    assert found == COLUMNS[table]


def test_exactly_the_eight_tables(pipeweave_database: Database) -> None:
    assert sorted(COLUMNS) == sorted(PIPEWEAVE_TABLES)


def test_primary_keys_keep_default_names(pipeweave_database: Database) -> None:
    rows = pipeweave_database.many(
        """SELECT c.conname, c.conrelid::regclass::text AS table_name,
                  (SELECT attname FROM pg_attribute
                   WHERE attrelid = c.conrelid AND attnum = c.conkey[1]) AS col
           FROM pg_constraint c WHERE c.contype = 'p' AND c.conrelid::regclass::text = ANY(%s)""",
        [list(PIPEWEAVE_TABLES)],
    )
    assert {r["table_name"]: (r["conname"], r["col"]) for r in rows} == {
        t: (f"{t}_pkey", col) for t, col in PRIMARY_KEYS.items()
    }


def test_check_constraints(pipeweave_database: Database) -> None:
    rows = pipeweave_database.many(
        "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint"
        " WHERE contype = 'c' AND connamespace = 'public'::regnamespace"
    )
    found = {r["conname"]: set(re.findall(r"'([^']*)'::text", r["def"])) for r in rows}
    assert found == CHECKS


CHECKED_COLUMNS = {
    "services_status_check": ("service", "services", "status"),
    "tasks_retry_backoff_check": ("task", "tasks", "retry_backoff"),
    "pipelines_failure_mode_check": ("pipeline", "pipelines", "failure_mode"),
    "pipeline_runs_status_check": ("pipeline_run", "pipeline_runs", "status"),
    "task_runs_status_check": ("task_run", "task_runs", "status"),
}


@pytest.mark.parametrize("constraint", sorted(CHECKS))
def test_checks_accept_their_values_and_nothing_else(
    pipeweave_database: Database, pipeweave_factory: PipeweaveFactory, constraint: str
) -> None:
    make, table, column = CHECKED_COLUMNS[constraint]
    getattr(pipeweave_factory, make)()
    update = sql.SQL("UPDATE {} SET {} = %s").format(sql.Identifier(table), sql.Identifier(column))
    for value in sorted(CHECKS[constraint]):
        assert pipeweave_database.result(update, [value]) == 1
    with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
        pipeweave_database.none(update, ["no-such-value"])


def test_foreign_keys_cascade(pipeweave_database: Database) -> None:
    rows = pipeweave_database.many(
        """SELECT c.conname, c.conrelid::regclass::text AS table_name,
                  c.confrelid::regclass::text AS target, c.confdeltype,
                  (SELECT attname FROM pg_attribute
                   WHERE attrelid = c.conrelid AND attnum = c.conkey[1]) AS col
           FROM pg_constraint c WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace"""
    )
    assert {r["conname"]: (r["table_name"], r["col"], r["target"]) for r in rows} == FOREIGN_KEYS
    assert {r["confdeltype"] for r in rows} == {"c"}


def test_dlq_and_cache_have_no_foreign_keys(pipeweave_database: Database) -> None:
    assert (
        pipeweave_database.many_or_none(
            "SELECT conname FROM pg_constraint WHERE contype = 'f'"
            " AND conrelid IN ('dlq'::regclass, 'idempotency_cache'::regclass)"
        )
        == []
    )


def test_indexes(pipeweave_database: Database) -> None:
    rows = pipeweave_database.many(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        " AND indexname NOT LIKE '%%_pkey'"
    )
    found = {r["indexname"]: r["indexdef"][r["indexdef"].index("USING") :] for r in rows}
    assert found == INDEXES


def test_updated_at_triggers(pipeweave_database: Database) -> None:
    rows = pipeweave_database.many(
        """SELECT t.tgname, t.tgrelid::regclass::text AS table_name, p.proname,
                  pg_get_triggerdef(t.oid) AS def
           FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid WHERE NOT t.tgisinternal
             AND t.tgname <> 'pytest_pipeweave_write'  -- the plugin's, for leaked commits"""
    )
    assert {r["tgname"]: (r["table_name"], r["proname"]) for r in rows} == {
        "update_tasks_updated_at": ("tasks", "update_updated_at_column"),
        "update_pipelines_updated_at": ("pipelines", "update_updated_at_column"),
    }
    for row in rows:
        assert "BEFORE UPDATE" in row["def"] and "FOR EACH ROW" in row["def"]


def test_updated_at_is_kept_current(pipeweave_database: Database) -> None:
    db = pipeweave_database
    old = datetime(2020, 1, 1, tzinfo=timezone.utc)
    db.none("INSERT INTO services (id, version, base_url) VALUES ('s', '1', 'u')")
    db.none(
        "INSERT INTO tasks (id, service_id, code_hash, updated_at) VALUES ('t', 's', 'h', %s)",
        [old],
    )
    db.none(
        "INSERT INTO pipelines (id, name, entry_tasks, structure, updated_at)"
        " VALUES ('p', 'p', '{t}', '{}', %s)",
        [old],
    )
    db.none("UPDATE tasks SET code_version = 2")
    db.none("UPDATE pipelines SET name = 'q'")
    assert db.one("SELECT updated_at FROM tasks")["updated_at"] > old
    assert db.one("SELECT updated_at FROM pipelines")["updated_at"] > old


def test_cleanup_function_the_orchestrator_calls(pipeweave_database: Database) -> None:
    db = pipeweave_database
    row = db.one(
        "SELECT pg_get_function_result(oid) AS result, pronargs FROM pg_proc"
        " WHERE proname = 'cleanup_expired_idempotency_cache'"
    )
    assert row == {"result": "integer", "pronargs": 0}
    now = datetime.now(timezone.utc)
    for key, expires in (("old1", -60), ("old2", -1), ("live", 3600)):
        db.none(
            "INSERT INTO idempotency_cache (idempotency_key, task_id, task_run_id, code_version,"
            " output_path, expires_at) VALUES (%s, 't', 'r', 1, 'o', %s)",
            [key, now + timedelta(seconds=expires)],
        )
    assert db.one("SELECT cleanup_expired_idempotency_cache() AS n") == {"n": 2}
    assert [
        r["idempotency_key"] for r in db.many("SELECT idempotency_key FROM idempotency_cache")
    ] == ["live"]


def test_no_uuid_ossp(pipeweave_database: Database) -> None:
    assert (
        pipeweave_database.one_or_none("SELECT 1 FROM pg_extension WHERE extname = 'uuid-ossp'")
        is None
    )
