"""Measurement 6: the standard seed (``pipeweave_seed``) and the factory's throughput."""

import time

import psycopg
import pytest
from workload import record

from pipeweave_db import CleanupResult, Database
from pytest_pipeweave.factories import PipeweaveFactory

SEEDS = 50
TASK_RUNS = 10_000


@pytest.mark.parametrize("n", range(SEEDS))
def test_seed(pipeweave_seed, n):
    assert pipeweave_seed.expected_cleanup == CleanupResult(3, 2)


def _task_runs(db):
    factory = PipeweaveFactory(db)
    task, pipeline_run = factory.task(), factory.pipeline_run()
    started = time.perf_counter()
    for _ in range(TASK_RUNS):
        factory.task_run(task=task, pipeline_run=pipeline_run)
    return time.perf_counter() - started


def test_factory_rolled_back(pipeweave_database):
    """As tests use it: inside the rolled-back transaction (one savepoint per statement)."""
    record(factory_rolled_back_seconds=_task_runs(pipeweave_database), factory_rows=TASK_RUNS)


def test_factory_bulk(pipeweave_database):
    """``factory.task_runs(n)``: the same rows in a few multi-row INSERTs, rolled back."""
    factory = PipeweaveFactory(pipeweave_database)
    task, pipeline_run = factory.task(), factory.pipeline_run()
    started = time.perf_counter()
    rows = factory.task_runs(TASK_RUNS, task=task, pipeline_run=pipeline_run)
    record(factory_bulk_seconds=time.perf_counter() - started)
    assert len(rows) == TASK_RUNS


def test_bulk_reference(pipeweave_database_url):
    """The same rows in one executemany (rolled back): the most a bulk factory method could win."""
    with psycopg.connect(pipeweave_database_url) as conn:
        factory = PipeweaveFactory(Database.bound(conn, statement_savepoints=False))
        task, pipeline_run = factory.task(), factory.pipeline_run()
        rows = [
            (f"bulk-{i}", task["id"], pipeline_run["id"], 1, task["code_hash"], 3)
            for i in range(TASK_RUNS)
        ]
        started = time.perf_counter()
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO task_runs (id, task_id, pipeline_run_id, code_version, code_hash,"
                " max_retries) VALUES (%s, %s, %s, %s, %s, %s)",
                rows,
            )
        record(bulk_reference_seconds=time.perf_counter() - started)
        conn.rollback()


def test_factory_committed(pipeweave_database_committed):
    """Committed mode: each INSERT commits on its own (autocommit), no savepoints."""
    record(factory_committed_seconds=_task_runs(pipeweave_database_committed))
