"""The floors of the isolation and statement figures, on the server the suite runs on: a
BEGIN + ROLLBACK round trip pair and one statement, on a raw psycopg connection in autocommit;
and the same statement through ``pipeweave_database`` (rollback mode), for its ratio."""

import statistics
import time

import psycopg
from workload import record

BATCHES, PER_BATCH = 7, 300
STATEMENT = "SELECT id FROM services WHERE id = %s"


def per_call(call):
    """Seconds one ``call()`` takes: the median over batches, after a warm-up batch."""
    batches = []
    for _ in range(BATCHES + 1):
        started = time.perf_counter()
        for _ in range(PER_BATCH):
            call()
        batches.append((time.perf_counter() - started) / PER_BATCH)
    return statistics.median(batches[1:])


def test_floors(pipeweave_database, pipeweave_database_url):
    with psycopg.connect(pipeweave_database_url, autocommit=True) as conn:
        pair = per_call(lambda: (conn.execute("BEGIN"), conn.execute("ROLLBACK")))
        statement = per_call(lambda: conn.execute(STATEMENT, ["x"]).fetchall())
    ours = per_call(lambda: pipeweave_database.any(STATEMENT, ["x"]))
    record(
        floor_begin_rollback_seconds=pair,
        floor_statement_seconds=statement,
        ours_statement_seconds=ours,
    )
