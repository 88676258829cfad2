"""Measurement 5: cleanup of 1,000,000 expired cache rows and 200,000 old DLQ rows.

Each repetition loads the rows (plus live ones that must stay), then runs ``cleanup`` with every
batch statement timed; then loads them again and runs one plain DELETE per table instead.
"""

import os
import time

import psycopg
from workload import record

from pipeweave_db import create_database
from pipeweave_db.maintenance import cleanup

EXPIRED_CACHE = int(os.environ.get("PWB_EXPIRED_CACHE", "1000000"))
OLD_DLQ = int(os.environ.get("PWB_OLD_DLQ", "200000"))
LIVE_EVERY = 20  # one live row for every 20 that go
REPEAT = int(os.environ.get("PWB_CLEANUP_REPEAT", "3"))

LOAD_CACHE = """
INSERT INTO idempotency_cache
    (idempotency_key, task_id, task_run_id, code_version, output_path, output_size, expires_at)
SELECT md5(i::text) || md5((-i)::text), 'task-' || i %% 50, 'run-' || i, 1,
       'outputs/run-' || i || '.json', 1024,
       CASE WHEN i %% %(every)s = 0 THEN now() + interval '1 day'
            ELSE now() - (%(n)s - i) * interval '1 second' END
FROM generate_series(1, %(total)s) AS i
"""
LOAD_DLQ = """
INSERT INTO dlq (id, task_run_id, task_id, code_version, code_hash, error, attempts,
                 previous_attempts, failed_at)
SELECT 'dlq-' || i, 'run-' || i, 'task-' || i %% 50, 1, 'c0ffee', 'task raised', 3, '[]',
       CASE WHEN i %% %(every)s = 0 THEN now() - interval '1 day'
            ELSE now() - interval '31 days' - (%(n)s - i) * interval '1 second' END
FROM generate_series(1, %(total)s) AS i
"""


def _load(conn):
    conn.execute("TRUNCATE idempotency_cache, dlq")
    for statement, gone in ((LOAD_CACHE, EXPIRED_CACHE), (LOAD_DLQ, OLD_DLQ)):
        total = gone + gone // (LIVE_EVERY - 1)
        conn.execute(statement, {"every": LIVE_EVERY, "n": total, "total": total})
    conn.execute("VACUUM ANALYZE idempotency_cache, dlq")


def _gone(conn):
    row = conn.execute(
        "SELECT (SELECT count(*) FROM idempotency_cache WHERE expires_at < now()),"
        " (SELECT count(*) FROM dlq WHERE failed_at < now() - interval '30 days')"
    ).fetchone()
    return row[0] + row[1]


def test_cleanup(pipeweave_database_url):
    runs = []
    with psycopg.connect(pipeweave_database_url, autocommit=True) as conn:
        for _ in range(REPEAT):
            _load(conn)
            expected = _gone(conn)
            with create_database(connection_string=pipeweave_database_url, max=1) as db:
                batches = []
                query = db.query

                def timed(sql, params=None, kind="many_or_none", query=query, batches=batches):
                    started = time.perf_counter()
                    value = query(sql, params, kind)
                    if kind == "result":  # the batches' DELETEs
                        batches.append(time.perf_counter() - started)
                    return value

                db.query = timed
                started = time.perf_counter()
                counts = cleanup(db, 30)
                seconds = time.perf_counter() - started
            deleted = counts.expired_cache_deleted + counts.old_dlq_deleted
            assert deleted == expected, (deleted, expected)
            assert _gone(conn) == 0

            _load(conn)
            plain = []
            for statement in (
                "DELETE FROM idempotency_cache WHERE expires_at < now()",
                "DELETE FROM dlq WHERE failed_at < now() - interval '30 days'",
            ):
                started = time.perf_counter()
                conn.execute(statement)
                plain.append(time.perf_counter() - started)
            runs.append(
                {
                    "rows": deleted,
                    "cleanup_seconds": seconds,
                    "batch_seconds": batches,
                    "plain_seconds": plain,
                }
            )
    record(cleanup_runs=runs)
