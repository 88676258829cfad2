"""Measurement 2: committed mode's reset, and on the same server the two usual alternatives.

The committed tests come first; their teardown is the reset (run.py reads it from pytest's
reports). The last test then times, on a fresh clone of the same template: TRUNCATE of the
eight tables after the same writes, and a template clone per test (CREATE DATABASE ... TEMPLATE
and a first connection, with both of PostgreSQL 15's strategies; then DROP DATABASE, timed apart).
"""

import time

import psycopg
import pytest
from psycopg import sql
from workload import ISOLATION_TESTS, TRUNCATE_ALL, psycopg_query, record, write_and_read

from pytest_pipeweave import clone_database, drop_database

PEER_REPEAT = 30


@pytest.mark.parametrize("n", range(ISOLATION_TESTS))
def test_committed(pipeweave_database_committed, n):
    write_and_read(pipeweave_database_committed.any, n)


def test_zz_alternatives(pipeweave_server, pipeweave_template):
    template = pipeweave_template
    name = "pwb_truncate"
    clone_database(pipeweave_server, template, name)
    truncate = []
    try:
        with psycopg.connect(pipeweave_server.url(name), autocommit=True) as conn:
            query = psycopg_query(conn)
            for n in range(PEER_REPEAT):
                write_and_read(query, n)
                started = time.perf_counter()
                conn.execute(TRUNCATE_ALL)
                truncate.append(time.perf_counter() - started)
    finally:
        drop_database(pipeweave_server, name)

    clones, drops = {}, {}
    with psycopg.connect(pipeweave_server.url(), autocommit=True) as admin:
        for strategy in ("FILE_COPY", "WAL_LOG"):
            clones[strategy], drops[strategy] = [], []
            for _ in range(PEER_REPEAT):
                started = time.perf_counter()
                admin.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY {}").format(
                        sql.Identifier(name), sql.Identifier(template), sql.SQL(strategy)
                    )
                )
                psycopg.connect(pipeweave_server.url(name)).close()
                created = time.perf_counter()
                # DROP DATABASE may wait (polling every 100 ms) for a backend still exiting.
                admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
                clones[strategy].append(created - started)
                drops[strategy].append(time.perf_counter() - created)
    record(
        truncate_seconds=truncate,
        clone_file_copy_seconds=clones["FILE_COPY"],
        clone_wal_log_seconds=clones["WAL_LOG"],
        drop_seconds=drops["FILE_COPY"] + drops["WAL_LOG"],
    )
