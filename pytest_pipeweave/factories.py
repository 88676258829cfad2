"""Valid PipeWeave rows with one call: defaults for every column, relations created on demand.

``factory.task_run()`` creates the service, task, pipeline and pipeline run it needs; pass
``task=`` or ``pipeline_run=`` (rows you made before) to share them, and any column as a
keyword to override it. Ids are unique within a factory and across factories.

``PipeweaveFactory`` writes through a Database, ``AsyncPipeweaveFactory`` through an
AsyncDatabase (``await factory.task_run()``): both run the same steps (``pipeweave_db.steps``).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, ParamSpec, TypeVar, cast

from psycopg import sql
from psycopg.types.json import Jsonb

from pipeweave_db import AsyncDatabase, Database, Row
from pipeweave_db.errors import require_whole_number
from pipeweave_db.steps import Statement, Steps, run, run_async

__all__ = [
    "DEFAULT_IDEMPOTENCY_TTL",
    "AsyncPipeweaveFactory",
    "PipeweaveFactory",
    "code_hash",
    "idempotency_key",
]

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_IDEMPOTENCY_TTL = 86400
_JSONB_COLUMNS = frozenset(
    {
        "metadata",
        "input_schema",
        "structure",
        "structure_snapshot",
        "assets",
        "upstream_refs",
        "previous_attempts",
    }
)
_FINISHED = ("completed", "failed", "timeout", "cancelled")
_MAX_PARAMETERS = 65535  # per statement, in PostgreSQL's protocol


def code_hash(definition: object) -> str:
    """The orchestrator's code hash: SHA-256 hex of the task definition, first 16 characters."""
    text = definition if isinstance(definition, str) else json.dumps(definition, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def idempotency_key(task_id: str, user_key: str) -> str:
    """The orchestrator's idempotency key: SHA-256 hex of ``taskId:userKey``."""
    return hashlib.sha256(f"{task_id}:{user_key}".encode()).hexdigest()


class FactorySteps:
    """The rows of every PipeWeave table, as steps: what both factories run on their database."""

    db: Any

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:6]
        self._numbers = itertools.count(1)

    def unique_id(self, kind: str) -> str:
        return f"{kind}-{self._prefix}-{next(self._numbers)}"

    def _service(self, **overrides: Any) -> Steps[Row]:
        values: dict[str, Any] = {
            "id": self.unique_id("svc"),
            "version": "1.0.0",
            "base_url": "http://127.0.0.1:8080",
            "status": "active",
            "last_heartbeat": _now(),
            "metadata": {},
        }
        return (yield from self._insert("services", values, overrides))

    def _task(self, *, service: Row | None = None, **overrides: Any) -> Steps[Row]:
        task_id = overrides.get("id") or self.unique_id("task")
        if "service_id" not in overrides:
            overrides["service_id"] = (service or (yield from self._service()))["id"]
        values: dict[str, Any] = {
            "id": task_id,
            "code_hash": code_hash({"task": task_id, "version": 1}),
            "code_version": 1,
            "allowed_next": [],
            "metadata": {},
        }
        return (yield from self._insert("tasks", values, overrides))

    def _task_code_history(self, *, task: Row | None = None, **overrides: Any) -> Steps[Row]:
        if "task_id" not in overrides:
            task = task or (yield from self._task())
            overrides["task_id"] = task["id"]
        values: dict[str, Any] = {
            "code_version": task["code_version"] if task else 1,
            "code_hash": task["code_hash"] if task else code_hash(overrides["task_id"]),
            "service_version": "1.0.0",
        }
        return (yield from self._insert("task_code_history", values, overrides))

    def _pipeline(self, **overrides: Any) -> Steps[Row]:
        pipeline_id = overrides.get("id") or self.unique_id("pipeline")
        values: dict[str, Any] = {
            "id": pipeline_id,
            "name": pipeline_id,
            "entry_tasks": ["start"],
            "structure": {"nodes": [{"id": "start"}], "edges": []},
            "metadata": {},
        }
        return (yield from self._insert("pipelines", values, overrides))

    def _pipeline_run(self, *, pipeline: Row | None = None, **overrides: Any) -> Steps[Row]:
        if "pipeline_id" not in overrides:
            pipeline = pipeline or (yield from self._pipeline())
            overrides["pipeline_id"] = pipeline["id"]
        status = overrides.get("status", "running")
        values: dict[str, Any] = {
            "id": self.unique_id("prun"),
            "pipeline_version": pipeline["version"] if pipeline else "1.0.0",
            "structure_snapshot": pipeline["structure"] if pipeline else {},
            "status": status,
            "started_at": None if status == "pending" else _now(),
            "completed_at": _now()
            if status in ("completed", "failed", "cancelled", "partial")
            else None,
            "error": "a task run failed" if status == "failed" else None,
            "metadata": {},
        }
        return (yield from self._insert("pipeline_runs", values, overrides))

    def _task_run(
        self, *, task: Row | None = None, pipeline_run: Row | None = None, **overrides: Any
    ) -> Steps[Row]:
        values = yield from self._task_run_values(task, pipeline_run, overrides)
        return (yield from self._insert("task_runs", values, {}))

    def _task_runs(
        self,
        count: int,
        *,
        task: Row | None = None,
        pipeline_run: Row | None = None,
        **overrides: Any,
    ) -> Steps[list[Row]]:
        """``count`` task runs written in a few multi-row INSERTs (ten times ``task_run``'s rate).

        They share one task and one pipeline run (created here unless given); every column is
        as ``task_run`` makes it, and a keyword overrides it in every row.
        """
        require_whole_number(count, "count", 0)
        if "task_id" not in overrides:
            task = task or (yield from self._task())
        if "pipeline_run_id" not in overrides:
            pipeline_run = pipeline_run or (yield from self._pipeline_run())
        rows = []
        for _ in range(count):
            rows.append((yield from self._task_run_values(task, pipeline_run, dict(overrides))))
        return (yield from self._insert_many("task_runs", rows))

    def _task_run_values(
        self, task: Row | None, pipeline_run: Row | None, overrides: dict[str, Any]
    ) -> Steps[dict[str, Any]]:
        if "task_id" not in overrides:
            task = task or (yield from self._task())
            overrides["task_id"] = task["id"]
        if "pipeline_run_id" not in overrides:
            overrides["pipeline_run_id"] = (pipeline_run or (yield from self._pipeline_run()))["id"]
        status = overrides.get("status", "pending")
        now = _now()
        values: dict[str, Any] = {
            "id": self.unique_id("trun"),
            "code_version": task["code_version"] if task else 1,
            "code_hash": task["code_hash"] if task else code_hash(overrides["task_id"]),
            "status": status,
            "attempt": 1,
            "max_retries": task["retries"] if task else 3,
            "started_at": None if status in ("pending", "waiting") else now - timedelta(seconds=5),
            "heartbeat_at": now if status == "running" else None,
            "completed_at": now if status in _FINISHED else None,
            "output_path": f"outputs/{overrides['task_id']}.json"
            if status == "completed"
            else None,
            "error": {"failed": "task raised", "timeout": "heartbeat timeout"}.get(status),
            "assets": {},
            "upstream_refs": {},
            "previous_attempts": [],
            "metadata": {},
        }
        return {**values, **overrides}

    def _dlq_entry(self, *, task_run: Row | None = None, **overrides: Any) -> Steps[Row]:
        if "task_run_id" not in overrides:
            task_run = task_run or (yield from self._task_run(status="failed"))
        source = task_run or {}
        values: dict[str, Any] = {
            "id": self.unique_id("dlq"),
            "task_run_id": source.get("id"),
            "task_id": source.get("task_id"),
            "pipeline_run_id": source.get("pipeline_run_id"),
            "code_version": source.get("code_version", 1),
            "code_hash": source.get("code_hash", "0" * 16),
            "error": source.get("error") or "task raised",
            "attempts": source.get("attempt", 1),
            "input_path": source.get("input_path"),
            "upstream_refs": source.get("upstream_refs") or {},
            "previous_attempts": source.get("previous_attempts") or [],
            "metadata": {},
        }
        return (yield from self._insert("dlq", values, overrides))

    def _cache_entry(
        self, *, task_run: Row | None = None, ttl_seconds: int | None = None, **overrides: Any
    ) -> Steps[Row]:
        """An idempotency cache entry for a completed run; ``expires_at`` in the past = expired."""
        if "task_run_id" not in overrides:
            task_run = task_run or (yield from self._task_run(status="completed"))
        source = task_run or {}
        task_id = overrides.get("task_id") or source.get("task_id") or self.unique_id("task")
        ttl = DEFAULT_IDEMPOTENCY_TTL if ttl_seconds is None else ttl_seconds
        values: dict[str, Any] = {
            "idempotency_key": idempotency_key(task_id, self.unique_id("key")),
            "task_id": task_id,
            "task_run_id": source.get("id"),
            "code_version": source.get("code_version", 1),
            "output_path": source.get("output_path") or f"outputs/{task_id}.json",
            "assets": {},
            "expires_at": _now() + timedelta(seconds=ttl),
        }
        return (yield from self._insert("idempotency_cache", values, overrides))

    def _insert(self, table: str, values: dict[str, Any], overrides: dict[str, Any]) -> Steps[Row]:
        row = {**values, **overrides}
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING *").format(
            sql.Identifier(table),
            sql.SQL(", ").join(map(sql.Identifier, row)),
            sql.SQL(", ").join(sql.Placeholder() * len(row)),
        )
        inserted: Row = yield Statement("one", statement, _params(row, list(row)))
        return inserted

    def _insert_many(self, table: str, rows: list[dict[str, Any]]) -> Steps[list[Row]]:
        """Rows with the same columns, as many per INSERT as PostgreSQL takes parameters."""
        if not rows:
            return []
        columns = list(rows[0])
        per_statement = _MAX_PARAMETERS // len(columns)
        one_row = "(" + ", ".join(["%s"] * len(columns)) + ")"
        inserted: list[Row] = []
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            statement = sql.SQL("INSERT INTO {} ({}) VALUES {} RETURNING *").format(
                sql.Identifier(table),
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.SQL(", ".join([one_row] * len(chunk))),
            )
            params = [value for row in chunk for value in _params(row, columns)]
            inserted += yield Statement("many", statement, params)
        return inserted


def _on_database(steps: Callable[P, Steps[T]]) -> Callable[P, T]:
    """A method of ``FactorySteps`` run on the factory's Database."""

    @functools.wraps(steps)
    def method(*args: P.args, **kwargs: P.kwargs) -> T:
        return run(cast(FactorySteps, args[0]).db, steps(*args, **kwargs))

    return _named_as_public(method)


def _on_async_database(steps: Callable[P, Steps[T]]) -> Callable[P, Awaitable[T]]:
    """A method of ``FactorySteps`` run on the factory's AsyncDatabase, awaited."""

    @functools.wraps(steps)
    async def method(*args: P.args, **kwargs: P.kwargs) -> T:
        return await run_async(cast(FactorySteps, args[0]).db, steps(*args, **kwargs))

    return _named_as_public(method)


def _named_as_public(method: Callable[P, T]) -> Callable[P, T]:
    """``_task_run`` becomes ``task_run``, as the factories call it (help(), tracebacks)."""
    method.__name__ = method.__name__.removeprefix("_")
    method.__qualname__ = method.__name__
    return method


class PipeweaveFactory(FactorySteps):
    """Builds rows of every PipeWeave table through ``db``; each method returns the row."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db: Database = db

    service = _on_database(FactorySteps._service)
    task = _on_database(FactorySteps._task)
    task_code_history = _on_database(FactorySteps._task_code_history)
    pipeline = _on_database(FactorySteps._pipeline)
    pipeline_run = _on_database(FactorySteps._pipeline_run)
    task_run = _on_database(FactorySteps._task_run)
    task_runs = _on_database(FactorySteps._task_runs)
    dlq_entry = _on_database(FactorySteps._dlq_entry)
    cache_entry = _on_database(FactorySteps._cache_entry)


class AsyncPipeweaveFactory(FactorySteps):
    """``PipeweaveFactory`` through an AsyncDatabase: ``await factory.task_run()``."""

    def __init__(self, db: AsyncDatabase) -> None:
        super().__init__()
        self.db: AsyncDatabase = db

    service = _on_async_database(FactorySteps._service)
    task = _on_async_database(FactorySteps._task)
    task_code_history = _on_async_database(FactorySteps._task_code_history)
    pipeline = _on_async_database(FactorySteps._pipeline)
    pipeline_run = _on_async_database(FactorySteps._pipeline_run)
    task_run = _on_async_database(FactorySteps._task_run)
    task_runs = _on_async_database(FactorySteps._task_runs)
    dlq_entry = _on_async_database(FactorySteps._dlq_entry)
    cache_entry = _on_async_database(FactorySteps._cache_entry)


def _params(row: dict[str, Any], columns: list[str]) -> list[Any]:
    return [
        Jsonb(row[k]) if k in _JSONB_COLUMNS and row[k] is not None else row[k] for k in columns
    ]


def _now() -> datetime:
    return datetime.now(timezone.utc)
