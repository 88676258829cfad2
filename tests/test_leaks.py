"""Leaked commits: a rollback-mode test whose code commits through a connection of its own."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("pipeweave_inner_env")

SUITE = """
import psycopg
import pytest

INSERT = "INSERT INTO services (id, version, base_url) VALUES (%s, '1', 'u')"


def count(db):
    return db.one("SELECT count(*) AS n FROM services")["n"]


def test_leaks(pipeweave_database, pipeweave_database_url):
    with psycopg.connect(pipeweave_database_url) as own:  # code under test's own connection
        own.execute(INSERT, ["leaked"])
        own.execute("UPDATE tasks SET timeout_seconds = 1")
    assert count(pipeweave_database) == 1


def test_next_starts_clean(pipeweave_database):
    assert count(pipeweave_database) == 0


def test_own_reads_and_rolled_back_writes_are_not_leaks(pipeweave_database, pipeweave_database_url):
    pipeweave_database.none(INSERT, ["mine"])
    with psycopg.connect(pipeweave_database_url) as own:
        assert own.execute("SELECT count(*) FROM services").fetchone() == (0,)
        with own.transaction(force_rollback=True):
            own.execute(INSERT, ["undone"])


@pytest.mark.pipeweave(committed=True)
def test_committed_mode_commits_are_no_leak(pipeweave_database, pipeweave_database_url):
    pipeweave_database.none(INSERT, ["committed"])
    with psycopg.connect(pipeweave_database_url) as own:
        own.execute(INSERT, ["also committed"])


def test_after_committed(pipeweave_database):
    assert count(pipeweave_database) == 0


async def test_async_leaks(pipeweave_async_database, pipeweave_database_url):
    async with await psycopg.AsyncConnection.connect(pipeweave_database_url) as own:
        await own.execute(INSERT, ["async leaked"])
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_leak_suite=SUITE)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args, timeout=180)


@pytest.mark.parametrize("workers", [[], ["-n", "2", "--dist", "loadfile"]], ids=["serial", "n2"])
def test_a_leaked_commit_is_a_warning_naming_the_tables(
    pytester: pytest.Pytester, workers: list[str]
) -> None:
    result = _run(pytester, *workers)
    result.assert_outcomes(passed=6, warnings=2)
    result.stdout.fnmatch_lines(
        [
            "*test_leak_suite.py::test_leaks*",
            "*LeakedCommitWarning: the test committed writes to public.services, public.tasks "
            "through a connection of its own*use committed mode*put back to its template state*",
        ]
    )
    result.stdout.fnmatch_lines(["*test_async_leaks*", "*writes to public.services through*"])
    assert result.stdout.str().count("LeakedCommitWarning") == 2


def test_with_strict_a_leaked_commit_fails_the_test(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "--pipeweave-strict")
    result.assert_outcomes(passed=6, errors=2)
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_leaks*", "*pipeweave: the test committed writes to public*"]
    )
    assert "Traceback" not in result.stdout.str()


MODULE_SUITE = """
import psycopg
import pytest

@pytest.fixture(scope="module")
def shared(pipeweave_module_database):
    pipeweave_module_database.none("INSERT INTO services (id, version, base_url) VALUES ('s', '1', 'u')")

def test_leaks_inside_module_data(shared, pipeweave_database, pipeweave_database_url):
    with psycopg.connect(pipeweave_database_url) as own:
        own.execute("DELETE FROM dlq")
"""


def _run_sync(pytester: pytest.Pytester, **files: str) -> pytest.RunResult:
    """``files`` run without pytest-asyncio: sync tests only."""
    pytester.makepyfile(**files)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio")


def test_a_leak_inside_module_data_is_told_at_the_modules_end(pytester: pytest.Pytester) -> None:
    result = _run_sync(pytester, test_leak_module=MODULE_SUITE)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        ["*LeakedCommitWarning: a test of this module committed writes to public.dlq*"]
    )


SCHEMA_SUITE = """
import psycopg

def test_changes_the_schema(pipeweave_database, pipeweave_database_url):
    with psycopg.connect(pipeweave_database_url, autocommit=True) as own:
        own.execute("CREATE TABLE scratch (id int)")
        own.execute("CREATE TEMP TABLE own_scratch (id int)")  # gone with its connection

def test_next_has_the_templates_schema(pipeweave_database):
    assert pipeweave_database.one_or_none(
        "SELECT 1 AS x FROM pg_tables WHERE tablename = 'scratch'") is None

def test_a_temporary_table_is_no_leak(pipeweave_database, pipeweave_database_url):
    with psycopg.connect(pipeweave_database_url, autocommit=True) as own:
        own.execute("CREATE TEMP TABLE own_scratch (id int)")
        own.execute("DROP TABLE own_scratch")
"""


def test_a_leaked_schema_change_is_told_and_undone(pytester: pytest.Pytester) -> None:
    result = _run_sync(pytester, test_leak_schema=SCHEMA_SUITE)
    result.assert_outcomes(passed=3, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*test_changes_the_schema*",
            "*LeakedCommitWarning: the test committed changes to the schema through a connection*",
        ]
    )
