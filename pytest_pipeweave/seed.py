"""The standard dataset: a small orchestrator caught mid-life, for tests to read and act on.

Services in each status; an ETL pipeline of three tasks (one of them changed once, so it has
code history); pipeline runs completed, failed and running; task runs in every status including
a retried one; dead-letter entries old and recent; idempotency cache entries expired and live.
What ``cleanup`` should remove is known in advance: ``expected_cleanup``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from pipeweave_db import AsyncDatabase, CleanupResult, Database, Row
from pipeweave_db.steps import Statement, Steps, run, run_async
from pytest_pipeweave.factories import (
    AsyncPipeweaveFactory,
    FactorySteps,
    PipeweaveFactory,
    code_hash,
)

__all__ = ["DLQ_RETENTION_DAYS", "SeedData", "seed_database", "seed_database_async"]

DLQ_RETENTION_DAYS = 30
TASK_RUN_STATUSES = ("pending", "running", "completed", "failed", "timeout", "cancelled", "waiting")


@dataclass
class SeedData:
    """Every row the seed wrote, grouped the way tests ask for them."""

    services: dict[str, Row] = field(default_factory=dict)
    tasks: dict[str, Row] = field(default_factory=dict)
    code_history: list[Row] = field(default_factory=list)
    pipeline: Row = field(default_factory=dict)
    pipeline_runs: dict[str, Row] = field(default_factory=dict)
    task_runs: dict[str, list[Row]] = field(default_factory=dict)
    retried_task_runs: list[Row] = field(default_factory=list)
    dlq_recent: list[Row] = field(default_factory=list)
    dlq_old: list[Row] = field(default_factory=list)
    cache_live: list[Row] = field(default_factory=list)
    cache_expired: list[Row] = field(default_factory=list)

    @property
    def expected_cleanup(self) -> CleanupResult:
        """What ``cleanup(db)`` returns on the seed, so a test can compare the two."""
        return CleanupResult(len(self.cache_expired), len(self.dlq_old))

    def all_task_runs(self) -> list[Row]:
        return [run for runs in self.task_runs.values() for run in runs]


def seed_database(db: Database, factory: PipeweaveFactory | None = None) -> SeedData:
    """Write the standard dataset through ``db`` and return it."""
    return run(db, _seed(factory or PipeweaveFactory(db)))


async def seed_database_async(
    db: AsyncDatabase, factory: AsyncPipeweaveFactory | None = None
) -> SeedData:
    """``seed_database`` through an AsyncDatabase."""
    return await run_async(db, _seed(factory or AsyncPipeweaveFactory(db)))


def _seed(make: FactorySteps) -> Steps[SeedData]:
    data = SeedData()
    now = datetime.now(timezone.utc)

    for status, heartbeat in (
        ("active", now),
        ("inactive", now - timedelta(days=2)),
        ("disconnected", now - timedelta(minutes=10)),
    ):
        data.services[status] = yield from make._service(
            id=f"svc-{status}", status=status, last_heartbeat=heartbeat, version="2.1.0"
        )
    active = data.services["active"]

    chain = {"fetch": ["transform"], "transform": ["load"], "load": []}
    for name, allowed_next in chain.items():
        data.tasks[name] = yield from make._task(
            service=active,
            id=name,
            allowed_next=allowed_next,
            code_hash=code_hash({"task": name, "version": 1}),
            idempotency_ttl_seconds=3600 if name == "load" else None,
            input_schema={"type": "object"} if name == "fetch" else None,
        )
    # transform changed once: version 2, and two history rows.
    for version in (1, 2):
        history = yield from make._task_code_history(
            task_id="transform",
            code_version=version,
            code_hash=code_hash({"task": "transform", "version": version}),
            service_version=f"2.{version - 1}.0",
        )
        data.code_history.append(history)
    data.tasks["transform"] = yield Statement(
        "one",
        "UPDATE tasks SET code_version = 2, code_hash = %s WHERE id = 'transform' RETURNING *",
        [code_hash({"task": "transform", "version": 2})],
    )

    data.pipeline = yield from make._pipeline(
        id="etl",
        name="etl",
        entry_tasks=["fetch"],
        structure={
            "nodes": [{"id": name} for name in chain],
            "edges": [[a, b] for a, nexts in chain.items() for b in nexts],
        },
    )
    for status in ("completed", "failed", "running"):
        data.pipeline_runs[status] = yield from make._pipeline_run(
            pipeline=data.pipeline, id=f"prun-{status}", status=status
        )

    data.task_runs = {status: [] for status in TASK_RUN_STATUSES}

    def task_run(status: str, task: str, pipeline_run: str, **extra: object) -> Steps[Row]:
        row = yield from make._task_run(
            task=data.tasks[task],
            pipeline_run=data.pipeline_runs[pipeline_run],
            status=status,
            **extra,
        )
        data.task_runs[status].append(row)
        return row

    for task in chain:
        yield from task_run("completed", task, "completed")
    yield from task_run("completed", "fetch", "failed")
    failed = yield from task_run(
        "failed", "transform", "failed", attempt=3, error_code="E_TRANSFORM"
    )
    yield from task_run("cancelled", "load", "failed")
    yield from task_run("completed", "fetch", "running")
    yield from task_run("running", "transform", "running")
    yield from task_run("waiting", "load", "running")
    yield from task_run("timeout", "transform", "running", error_code="E_HEARTBEAT")
    yield from task_run("pending", "load", "running")
    retried = yield from task_run(
        "pending",
        "transform",
        "running",
        attempt=2,
        scheduled_for=now + timedelta(minutes=5),
        previous_attempts=[{"attempt": 1, "error": "task raised", "failed_at": now.isoformat()}],
    )
    data.retried_task_runs.append(retried)

    for days in (1, 0):
        entry = yield from make._dlq_entry(task_run=failed, failed_at=now - timedelta(days=days))
        data.dlq_recent.append(entry)
    for days in (45, 90):
        entry = yield from make._dlq_entry(task_run=failed, failed_at=now - timedelta(days=days))
        data.dlq_old.append(entry)

    done = data.task_runs["completed"]
    for offset in (timedelta(hours=1), timedelta(days=1)):
        entry = yield from make._cache_entry(task_run=done[0], expires_at=now + offset)
        data.cache_live.append(entry)
    for offset in (timedelta(minutes=1), timedelta(hours=1), timedelta(days=2)):
        entry = yield from make._cache_entry(task_run=done[1], expires_at=now - offset)
        data.cache_expired.append(entry)
    return data
