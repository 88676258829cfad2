"""What the inner benchmark tests do, written once so that every tool runs the same statements.

``query(sql, params)`` runs one statement and returns its rows (an empty list when it returns
none): ``Database.any`` for PipeWeave, a thin wrapper around a psycopg connection for the peers.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Query = Callable[[str, Sequence[Any]], list[Any]]

ISOLATION_TESTS = int(os.environ.get("PWB_TESTS", "200"))
XDIST_TESTS = int(os.environ.get("PWB_XDIST_TESTS", "400"))
# The eight PipeWeave tables (the schema_migrations bookkeeping table is not data).
TABLES = (
    "services",
    "tasks",
    "task_code_history",
    "pipelines",
    "pipeline_runs",
    "task_runs",
    "dlq",
    "idempotency_cache",
)
TRUNCATE_ALL = f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"


def psycopg_query(conn: Any) -> Query:
    """``query`` over a psycopg connection, as a pytest-postgresql or testcontainers user has."""

    def query(sql: str, params: Sequence[Any]) -> list[Any]:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []

    return query


def isolation_statements(n: int) -> list[tuple[str, list[Any]]]:
    """The isolation suites' test body: three rows written, then read back through a join."""
    service, task, run = f"svc-{n}", f"task-{n}", f"run-{n}"
    return [
        (
            "INSERT INTO services (id, version, base_url) VALUES (%s, '1.0.0', 'http://127.0.0.1')",
            [service],
        ),
        (
            "INSERT INTO tasks (id, service_id, code_hash) VALUES (%s, %s, 'c0ffee')",
            [task, service],
        ),
        (
            "INSERT INTO task_runs (id, task_id, code_version, code_hash, max_retries)"
            " VALUES (%s, %s, 1, 'c0ffee', 3)",
            [run, task],
        ),
        (
            "SELECT r.id, t.service_id FROM task_runs r JOIN tasks t ON t.id = r.task_id"
            " WHERE r.id = %s",
            [run],
        ),
    ]


def write_and_read(query: Query, n: int) -> None:
    rows: list[Any] = []
    for sql, params in isolation_statements(n):
        rows = query(sql, params)
    assert len(rows) == 1


async def write_and_read_async(
    query: Callable[[str, Sequence[Any]], Awaitable[list[Any]]], n: int
) -> None:
    rows: list[Any] = []
    for sql, params in isolation_statements(n):
        rows = await query(sql, params)
    assert len(rows) == 1


# The xdist suite's test body: a pipeline run with RUNS task runs, then a dashboard's queries.
RUNS_PER_TEST = int(os.environ.get("PWB_XDIST_RUNS", "300"))


def dashboard(query: Query, n: int) -> None:
    """A database-bound test: most of its time is spent inside PostgreSQL, not in Python."""
    service, task, pipeline, prun = f"svc-{n}", f"task-{n}", f"pipe-{n}", f"prun-{n}"
    query("INSERT INTO services (id, version, base_url) VALUES (%s, '1', 'http://x')", [service])
    query(
        "INSERT INTO tasks (id, service_id, code_hash) VALUES (%s, %s, 'c0ffee')", [task, service]
    )
    query(
        "INSERT INTO pipelines (id, name, entry_tasks, structure) VALUES (%s, %s, '{a}', '{}')",
        [pipeline, pipeline],
    )
    query(
        "INSERT INTO pipeline_runs (id, pipeline_id, pipeline_version, structure_snapshot)"
        " VALUES (%s, %s, '1', '{}')",
        [prun, pipeline],
    )
    query(
        "INSERT INTO task_runs (id, task_id, pipeline_run_id, code_version, code_hash,"
        " max_retries, status, priority, created_at, metadata)"
        " SELECT %s || '-' || i, %s, %s, 1, 'c0ffee', 3,"
        " (ARRAY['pending','running','completed','failed','waiting'])[1 + i %% 5],"
        " i %% 7, now() - i * interval '1 second', jsonb_build_object('i', i)"
        " FROM generate_series(1, %s) AS i",
        [prun, task, prun, RUNS_PER_TEST],
    )
    by_status = query(
        "SELECT status, count(*) FROM task_runs WHERE pipeline_run_id = %s GROUP BY status",
        [prun],
    )
    assert len(by_status) == 5
    query(
        "UPDATE task_runs SET status = 'completed', completed_at = now()"
        " WHERE pipeline_run_id = %s AND status = 'running'",
        [prun],
    )
    queue = query(
        "SELECT id FROM task_runs WHERE status = 'pending' ORDER BY priority, created_at LIMIT 20",
        [],
    )
    assert queue
    totals = query(
        "SELECT t.service_id, count(*), sum((r.metadata->>'i')::int)"
        " FROM task_runs r JOIN tasks t ON t.id = r.task_id GROUP BY t.service_id",
        [],
    )
    assert totals


def record(**figures: Any) -> None:
    """Add figures measured inside a test to ``$PWB_EXTRA`` (JSON), for run.py to read."""
    import json

    path = os.environ.get("PWB_EXTRA")
    if not path:
        return
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        data = {}
    data.update(figures)
    with open(path, "w") as handle:
        json.dump(data, handle)
