"""pipeweave_queries and the query-count assertions, through real inner test runs."""

from __future__ import annotations

import pytest

from pipeweave_db import ExecutedStatement
from pytest_pipeweave.queries import CapturedQueries, count_mismatch

pytestmark = pytest.mark.usefixtures("pipeweave_inner_env")

SUITE = """
import pytest
from pytest_pipeweave import PipeweaveFactory

INSERT = "INSERT INTO services (id, version, base_url) VALUES (%s, '1', 'u')"


def test_rollback_in_order_with_parameter_counts(pipeweave_database, pipeweave_queries):
    pipeweave_database.none(INSERT, ["a"])
    with pipeweave_database.tx() as t:
        t.none(INSERT, ["b"])
    with pytest.raises(Exception):
        pipeweave_database.none("INSERT INTO services (id) VALUES ('no-version')")
    assert pipeweave_database.one("SELECT count(*) AS n FROM services")["n"] == 2
    assert [(s.sql, s.params, s.failed) for s in pipeweave_queries] == [
        (INSERT, 1, False),
        (INSERT, 1, False),
        ("INSERT INTO services (id) VALUES ('no-version')", 0, True),
        ("SELECT count(*) AS n FROM services", 0, False),
    ]
    assert all(s.seconds > 0 for s in pipeweave_queries)


def test_factory_and_seed_are_counted(pipeweave_seed, pipeweave_factory, pipeweave_queries):
    before = len(pipeweave_queries)
    pipeweave_factory.task_run()
    assert len(pipeweave_queries) - before == 5  # service, task, pipeline, its run, the task run


@pytest.mark.pipeweave(committed=True)
def test_committed(pipeweave_database, pipeweave_assert_num_queries):
    with pipeweave_assert_num_queries(2):
        pipeweave_database.none(INSERT, ["c"])
        pipeweave_database.one("SELECT 1 AS x")


def test_module_database(pipeweave_module_database, pipeweave_assert_num_queries):
    with pipeweave_assert_num_queries(1):
        pipeweave_module_database.one("SELECT 1 AS x")


async def test_async(pipeweave_async_database, pipeweave_async_factory, pipeweave_queries):
    await pipeweave_async_database.none(INSERT, ["d"])
    async with pipeweave_async_database.tx() as t:
        await t.one("SELECT 1 AS x")
    assert [s.sql for s in pipeweave_queries] == [INSERT, "SELECT 1 AS x"]


def test_max_passes_below(pipeweave_database, pipeweave_assert_max_num_queries):
    with pipeweave_assert_max_num_queries(3) as captured:
        pipeweave_database.one("SELECT 1 AS x")
    assert len(captured) == 1


def test_too_many(pipeweave_database, pipeweave_assert_num_queries):
    with pipeweave_assert_num_queries(1):
        for i in range(3):
            pipeweave_database.one("SELECT %s::int AS n", [i])


def test_too_many_for_max(pipeweave_factory, pipeweave_assert_max_num_queries):
    with pipeweave_assert_max_num_queries(2):
        pipeweave_factory.service()
        pipeweave_factory.service()
        pipeweave_factory.service()
"""


def test_counts_through_every_fixture_kind_and_failures_list_the_statements(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=6, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*Expected to perform 1 queries but 3 were done",
            "*Queries:",
            "*1. SELECT %s::int AS n  [[]1 parameter]",
            "*2. SELECT %s::int AS n  [[]1 parameter]",
            "*3. SELECT %s::int AS n  [[]1 parameter]",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*Expected to perform at most 2 queries but 3 were done",
            '*1. INSERT INTO "services" ("id", *) RETURNING *  [[]6 parameters]',
        ]
    )


def test_a_listing_shows_no_parameter_values() -> None:
    captured = CapturedQueries()
    captured.statements.append(
        ExecutedStatement("SELECT *\n  FROM x WHERE a = %s AND b = %s", 2, 0.001)
    )
    captured.statements.append(ExecutedStatement("SELECT 1", 0, 0.001, failed=True))
    assert captured.listing() == (
        "1. SELECT * FROM x WHERE a = %s AND b = %s  [2 parameters]\n2. SELECT 1  (failed)"
    )
    assert count_mismatch(captured, 2, exact=True) is None
    assert count_mismatch(captured, 3, exact=False) is None
    assert "at most 1 queries but 2" in (count_mismatch(captured, 1, exact=False) or "")
