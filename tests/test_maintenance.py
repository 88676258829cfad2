"""cleanup: the seed's two counts, batches, validation, and live rows left alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import psycopg
import pytest
from helpers import INSERT_CACHE_ROWS

from pipeweave_db import (
    ArgumentError,
    CleanupResult,
    Database,
    DatabaseConfig,
    cleanup,
    cleanup_expired_cache,
    cleanup_old_dlq,
    create_database,
)
from pytest_pipeweave import PipeweaveFactory, SeedData
from pytest_pipeweave.processes import wait_until


def test_cleanup_deletes_what_the_seed_expects(
    pipeweave_database: Database, pipeweave_seed: SeedData
) -> None:
    assert pipeweave_seed.expected_cleanup == CleanupResult(3, 2)
    assert cleanup(pipeweave_database, dlq_retention_days=30) == pipeweave_seed.expected_cleanup
    assert cleanup(pipeweave_database) == CleanupResult(0, 0)
    remaining_cache = {
        r["idempotency_key"] for r in pipeweave_database.many("SELECT * FROM idempotency_cache")
    }
    assert remaining_cache == {r["idempotency_key"] for r in pipeweave_seed.cache_live}
    remaining_dlq = {r["id"] for r in pipeweave_database.many("SELECT id FROM dlq")}
    assert remaining_dlq == {r["id"] for r in pipeweave_seed.dlq_recent}


def test_retention_decides_what_is_old(
    pipeweave_database: Database, pipeweave_seed: SeedData
) -> None:
    assert cleanup_old_dlq(pipeweave_database, 60) == 1  # only the 90-day-old entry
    assert cleanup_old_dlq(pipeweave_database, 10**9) == 0  # older than any timestamp: nothing
    assert cleanup_old_dlq(pipeweave_database, 0) == 3  # everything that failed before now


@pytest.mark.parametrize("days", [-1, 1.5, "30", True, None])
def test_retention_must_be_a_whole_number(pipeweave_database: Database, days: Any) -> None:
    with pytest.raises(
        ArgumentError, match=rf"dlq_retention_days must be a whole number >= 0, got {days!r}"
    ) as raised:
        cleanup(pipeweave_database, days)
    assert isinstance(raised.value, ValueError) and raised.value.kind == "invalid_argument"


@pytest.mark.parametrize("size", [0, -5, 2.0])
def test_batch_size_must_be_positive(pipeweave_database: Database, size: Any) -> None:
    with pytest.raises(
        ArgumentError, match=rf"^batch_size must be a whole number >= 1, got {size!r}$"
    ):
        cleanup(pipeweave_database, batch_size=size)


def test_a_negative_count_of_task_runs(pipeweave_factory: PipeweaveFactory) -> None:
    with pytest.raises(ArgumentError, match=r"^count must be a whole number >= 0, got -1$"):
        pipeweave_factory.task_runs(-1)


class CountingDatabase:
    """Counts the DELETE statements cleanup sends, to see the batches."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.deletes: list[int] = []

    def query(self, query: Any, params: Any = None, kind: Any = "many_or_none") -> Any:
        value = self.db.query(query, params, kind)
        if kind == "result":
            self.deletes.append(value)
        return value


def test_deletes_in_batches(pipeweave_database: Database) -> None:
    # The batches walk the table's pages from its first: earlier tests' rolled-back rows
    # leave pages, empty ones, that each cost a statement deleting nothing (the CI run of
    # fe5a023 saw six). A table truncated in the test's transaction has none.
    pipeweave_database.none("TRUNCATE idempotency_cache")
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    pipeweave_database.none(INSERT_CACHE_ROWS, ["k", past, 25])
    counting = CountingDatabase(pipeweave_database)
    assert cleanup_expired_cache(cast(Database, counting), batch_size=10) == 25
    assert counting.deletes == [10, 10, 5]


@pytest.fixture
def pool_db(
    pipeweave_database_committed: Database, pipeweave_config: DatabaseConfig
) -> Iterator[Database]:
    with create_database(pipeweave_config, max=4) as db:
        yield db


def test_live_rows_written_during_cleanup_survive(pool_db: Database) -> None:
    now = datetime.now(timezone.utc)
    pool_db.none(INSERT_CACHE_ROWS, ["expired-", now - timedelta(minutes=5), 20_000])
    stop = threading.Event()
    written: list[int] = []

    def keep_writing() -> None:
        n = 0
        while not stop.is_set() or n < 50:
            n += 1
            pool_db.none(
                INSERT_CACHE_ROWS, [f"live{n}-", datetime.now(timezone.utc) + timedelta(hours=1), 5]
            )
            pool_db.none(
                "INSERT INTO dlq (id, task_run_id, task_id, code_version, code_hash, error,"
                " attempts, previous_attempts) VALUES (%s, 'r', 't', 1, 'h', 'e', 1, '[]')",
                [f"fresh{n}"],
            )
        written.append(n)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        result = cleanup(pool_db, dlq_retention_days=0, batch_size=500)
    finally:
        stop.set()
        writer.join()
    assert result.expired_cache_deleted == 20_000
    live = pool_db.one(
        "SELECT count(*) AS n FROM idempotency_cache WHERE idempotency_key LIKE 'live%%'"
    )
    assert live == {"n": written[0] * 5}, "no live cache entry was deleted"
    assert pool_db.one("SELECT count(*) AS n FROM idempotency_cache WHERE expires_at < now()") == {
        "n": 0
    }
    # DLQ rows written after the cleanup started are younger than its cut-off.
    assert pool_db.one("SELECT count(*) AS n FROM dlq")["n"] >= written[0] - result.old_dlq_deleted


def test_a_row_made_live_while_cleanup_waits_for_it_stays(
    pool_db: Database, pipeweave_config: DatabaseConfig
) -> None:
    """The batches lock nothing before deleting: one that meets a row another transaction is
    changing waits for it, then sees the row's new version, and leaves it if it is live."""
    past = datetime.now(timezone.utc) - timedelta(minutes=5)
    pool_db.none(INSERT_CACHE_ROWS, ["expired-", past, 100])
    results: list[int] = []
    with psycopg.connect(pipeweave_config.conninfo()) as app:
        app.execute(
            "UPDATE idempotency_cache SET expires_at = now() + interval '1 hour'"
            " WHERE idempotency_key = 'expired-50'"
        )
        with create_database(pipeweave_config, application_name="cleanup-waits", max=1) as db:
            worker = threading.Thread(
                target=lambda: results.append(cleanup_expired_cache(db, batch_size=500))
            )
            worker.start()
            waiting = (
                "SELECT count(*) AS n FROM pg_stat_activity"
                " WHERE application_name = 'cleanup-waits' AND wait_event_type = 'Lock'"
            )
            assert wait_until(lambda: pool_db.one(waiting)["n"] == 1, 30), "the batch waits"
            app.commit()
            worker.join(timeout=30)
    assert results == [99]
    assert pool_db.many("SELECT idempotency_key FROM idempotency_cache") == [
        {"idempotency_key": "expired-50"}
    ]


def test_cleanup_counts_are_numbers(
    pipeweave_database: Database, pipeweave_factory: PipeweaveFactory
) -> None:
    pipeweave_factory.cache_entry(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    result = cleanup(pipeweave_database)
    assert isinstance(result.expired_cache_deleted, int) and result.expired_cache_deleted == 1
    assert isinstance(result.old_dlq_deleted, int) and result.old_dlq_deleted == 0
