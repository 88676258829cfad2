"""Cleanup of expired idempotency cache entries and old dead-letter entries.

Rows go in short batches, each its own transaction, so that millions of expired rows never hold
locks for long and an interrupted cleanup leaves consistent tables that a second run finishes.
Cut-offs are fixed when the cleanup starts: rows written meanwhile are judged by that moment,
so a live row is never deleted and the loop always ends.

On PostgreSQL 14 and later the batches walk the table's pages in order (a TID range scan, as a
plain DELETE reads the table), a range of pages at a time, sized from the expired rows found in
the ranges before so that a batch holds about ``batch_size`` rows and never more. Looking the
expired rows up through an index instead costs a random heap visit per row, and each batch
first passes the index entries of the rows the batches before it deleted: ten times slower.
These batches lock no row before deleting it: a lock writes every row once more, which cost a
third of the rows per second. So a row another transaction holds makes the batch wait for it,
as a plain DELETE would, and a row another transaction changed meanwhile is left for the next
cleanup to judge (in a range holding more than a batch of expired rows, so are the rows of
the range after that batch: the batch came up short, which is how a walk knows a range done).

Each function has an async twin for an ``AsyncDatabase`` (``cleanup_async``...), running the
same steps (see ``steps``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pipeweave_db.errors import require_whole_number
from pipeweave_db.steps import Statement, Steps, run, run_async

if TYPE_CHECKING:
    from pipeweave_db.async_database import AsyncDatabase
    from pipeweave_db.database import Database

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "CleanupResult",
    "cleanup",
    "cleanup_async",
    "cleanup_expired_cache",
    "cleanup_expired_cache_async",
    "cleanup_old_dlq",
    "cleanup_old_dlq_async",
]

# A batch of this many rows took about 20 ms in benchmarks/ (2 cores); at 5,000 the batches'
# fixed costs held cleanup to half a plain DELETE's rows per second.
DEFAULT_BATCH_SIZE = 20_000
DEFAULT_DLQ_RETENTION_DAYS = 30
# make_interval takes a 32-bit day count; beyond ~2,700 years every retention is the same.
_MAX_RETENTION_DAYS = 1_000_000

# "= ANY(ARRAY(subquery))", not "IN (subquery)": with IN the planner joins the batch to the
# whole table (a hash join over a sequential scan, ~80 ms a batch on a million rows); with an
# array it looks the batch's keys up in the primary key (benchmarks/: 4x the rows per second).
_DELETE_EXPIRED_CACHE = """
    DELETE FROM idempotency_cache WHERE idempotency_key = ANY(ARRAY(
        SELECT idempotency_key FROM idempotency_cache
        WHERE expires_at < %s LIMIT %s FOR UPDATE SKIP LOCKED))"""
_DELETE_OLD_DLQ = """
    DELETE FROM dlq WHERE id = ANY(ARRAY(
        SELECT id FROM dlq WHERE failed_at < %s::timestamptz - make_interval(days => %s)
        LIMIT %s FOR UPDATE SKIP LOCKED))"""
# The same among the pages [%s, %s) of the table, unlocked: a TID range scan (PostgreSQL 14+).
_DELETE_IN_PAGES = """
    DELETE FROM {table} WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {table}
        WHERE ctid >= format('(%%s,0)', %s::bigint)::tid
          AND ctid < format('(%%s,0)', %s::bigint)::tid AND {expired}
        LIMIT %s))"""
_EXPIRED_CACHE = "expires_at < %s"
_OLD_DLQ = "failed_at < %s::timestamptz - make_interval(days => %s)"
_PAGES = """
    SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int AS pages,
           current_setting('server_version_num')::int >= 140000 AS tid_ranges"""
# The most row versions a heap page holds (8 kB pages): a first range of batch_size / 291 pages
# cannot hold more than batch_size rows.
_MAX_ROWS_PER_PAGE = 291
# A range of pages is read whole (a few ms per thousand pages): bounded however sparse the
# expired rows are.
_MAX_PAGES_PER_BATCH = 8192


@dataclass(frozen=True)
class CleanupResult:
    """The two counts ``pipeweave-db cleanup`` prints."""

    expired_cache_deleted: int
    old_dlq_deleted: int


def cleanup(
    db: Database,
    dlq_retention_days: int = DEFAULT_DLQ_RETENTION_DAYS,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> CleanupResult:
    """Delete expired cache entries and DLQ entries older than ``dlq_retention_days``."""
    return run(db, _cleanup(dlq_retention_days, batch_size))


async def cleanup_async(
    db: AsyncDatabase,
    dlq_retention_days: int = DEFAULT_DLQ_RETENTION_DAYS,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> CleanupResult:
    """``cleanup`` for an AsyncDatabase."""
    return await run_async(db, _cleanup(dlq_retention_days, batch_size))


def cleanup_expired_cache(db: Database, *, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """Delete idempotency cache entries that expired before now; return how many."""
    return run(db, _expired_cache(batch_size))


async def cleanup_expired_cache_async(
    db: AsyncDatabase, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> int:
    """``cleanup_expired_cache`` for an AsyncDatabase."""
    return await run_async(db, _expired_cache(batch_size))


def cleanup_old_dlq(
    db: Database,
    retention_days: int = DEFAULT_DLQ_RETENTION_DAYS,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Delete DLQ entries that failed more than ``retention_days`` ago; return how many."""
    return run(db, _old_dlq(retention_days, batch_size))


async def cleanup_old_dlq_async(
    db: AsyncDatabase,
    retention_days: int = DEFAULT_DLQ_RETENTION_DAYS,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """``cleanup_old_dlq`` for an AsyncDatabase."""
    return await run_async(db, _old_dlq(retention_days, batch_size))


# -- the steps, shared by both ---------------------------------------------------------------


def _cleanup(dlq_retention_days: int, batch_size: int) -> Steps[CleanupResult]:
    # Checked before the cache part runs: a bad retention must not leave half a cleanup.
    days = require_whole_number(dlq_retention_days, "dlq_retention_days", 0)
    return CleanupResult(
        expired_cache_deleted=(yield from _expired_cache(batch_size)),
        old_dlq_deleted=(yield from _old_dlq(days, batch_size)),
    )


def _expired_cache(batch_size: int) -> Steps[int]:
    require_whole_number(batch_size, "batch_size", 1)
    start = yield from _start()
    return (
        yield from _delete_in_batches(
            "idempotency_cache", _EXPIRED_CACHE, _DELETE_EXPIRED_CACHE, [start], batch_size
        )
    )


def _old_dlq(retention_days: int, batch_size: int) -> Steps[int]:
    days = require_whole_number(retention_days, "dlq_retention_days", 0)
    require_whole_number(batch_size, "batch_size", 1)
    # The retention is subtracted by PostgreSQL: a cut-off thousands of years back is valid
    # there, not in Python's datetime.
    start = yield from _start()
    cutoff = [start, min(days, _MAX_RETENTION_DAYS)]
    return (yield from _delete_in_batches("dlq", _OLD_DLQ, _DELETE_OLD_DLQ, cutoff, batch_size))


def _start() -> Steps[datetime]:
    # clock_timestamp(), not now(): inside a transaction now() is when it began.
    row = yield Statement("one", "SELECT clock_timestamp() AS start")
    start: datetime = row["start"]
    return start


def _delete_in_batches(
    table: str, expired: str, by_index: str, cutoff: list[Any], batch_size: int
) -> Steps[int]:
    """Delete the rows of ``table`` matching ``expired`` (with ``cutoff``), batch by batch:
    by page ranges where the server can, else through ``by_index``."""
    size = yield Statement("one", _PAGES, [table])
    total = 0
    if not size["tid_ranges"]:
        while True:
            deleted: int = yield Statement("result", by_index, [*cutoff, batch_size])
            total += deleted
            if deleted < batch_size:
                return total
    statement = _DELETE_IN_PAGES.format(table=table, expired=expired)
    first, step = 0, max(1, batch_size // _MAX_ROWS_PER_PAGE)
    # The pages there were at the start: a row that moves (an update) to a page the walk has
    # passed, or to a page added since, waits for the next cleanup.
    while first < size["pages"]:
        found = 0
        while True:  # a range with more than a batch of rows takes several
            deleted = yield Statement(
                "result", statement, [first, first + step, *cutoff, batch_size]
            )
            found += deleted
            if deleted < batch_size:
                break
        total += found
        first += step
        # As many pages as held nine tenths of a batch of expired rows (a range that holds
        # more takes a second statement, which reads the range again), growing at most 4x.
        per_page = found / step
        wanted = 0.9 * batch_size / per_page if per_page else step * 4
        step = max(1, min(int(wanted), step * 4, _MAX_PAGES_PER_BATCH))
    return total
