"""The async fixtures through real inner test runs: runners, loop scopes, xdist, faults."""

from __future__ import annotations

import textwrap

import pytest
from helpers import KILL_THE_SERVER

pytestmark = pytest.mark.usefixtures("pipeweave_inner_env")

ISOLATION = """
import asyncio
import pytest

COUNT = "SELECT count(*) AS n FROM services"
INSERT = "INSERT INTO services (id, version, base_url) VALUES (%s, '1', 'u')"

{mark}
async def test_writes_and_fails(pipeweave_async_database):
    db = pipeweave_async_database
    await db.none(INSERT, ["a"])
    async with db.tx() as t:
        await t.none(INSERT, ["b"])
        async with t.tx() as sp:
            await sp.none(INSERT, ["c"])
    with pytest.raises(Exception):
        await db.none("INSERT INTO services (id) VALUES ('no-version')")
    assert (await db.one(COUNT))["n"] == 3
    raise AssertionError("the test fails: its rows must still go")

{mark}
async def test_a_tx_as_the_first_statement_is_rolled_back(pipeweave_async_database):
    async with pipeweave_async_database.tx() as t:
        await t.none(INSERT, ["in-tx"])

{mark}
@pytest.mark.parametrize("i", range(6))
async def test_starts_empty(i, pipeweave_async_database, pipeweave_async_factory):
    assert (await pipeweave_async_database.one(COUNT))["n"] == 0
    await asyncio.gather(*(pipeweave_async_factory.task_run() for _ in range(3)))
    assert (await pipeweave_async_database.one(COUNT))["n"] == 3

{mark}
async def test_seed(pipeweave_async_seed, pipeweave_async_database):
    assert set(pipeweave_async_seed.services) == {{"active", "inactive", "disconnected"}}
    assert (await pipeweave_async_database.one(COUNT))["n"] == 3

def test_sync_tests_beside_them(pipeweave_database):
    assert pipeweave_database.one(COUNT)["n"] == 0
"""

RUNNERS = {
    "asyncio-strict-function": ("@pytest.mark.asyncio", ""),
    "asyncio-strict-module": ('@pytest.mark.asyncio(loop_scope="module")', ""),
    "asyncio-strict-session": ('@pytest.mark.asyncio(loop_scope="session")', ""),
    "asyncio-auto": ("", "asyncio_mode = auto\n"),
    "anyio": (
        "@pytest.mark.anyio",
        "",
    ),
}
ANYIO_BACKEND = """
import pytest

@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", *args, timeout=120)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_rollback_isolation_with_every_runner_and_loop_scope(
    pytester: pytest.Pytester, runner: str, workers: tuple[str, ...]
) -> None:
    mark, ini = RUNNERS[runner]
    pytester.makeini(f"[pytest]\nasyncio_default_fixture_loop_scope = function\n{ini}")
    if runner == "anyio":
        pytester.makeconftest(ANYIO_BACKEND)
    pytester.makepyfile(ISOLATION.format(mark=mark))
    result = run(pytester, "-rf", *workers)
    result.assert_outcomes(passed=9, failed=1)
    result.stdout.fnmatch_lines(["FAILED *::test_writes_and_fails*"])


def test_committed_mode_is_seen_by_others_and_reset_after(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(
        """
        import asyncio, os, shutil, sys
        import psycopg
        import pytest

        COUNT = "SELECT count(*) AS n FROM services"

        async def test_committed(pipeweave_async_database_committed, pipeweave_env,
                                 pipeweave_database_url):
            await pipeweave_async_database_committed.none(
                "INSERT INTO services (id, version, base_url) VALUES ('a', '1', 'u')")
            async with await psycopg.AsyncConnection.connect(pipeweave_database_url) as other:
                assert await (await other.execute("SELECT count(*) FROM services")).fetchone() == (1,)
            program = shutil.which("pipeweave-db", path=os.path.dirname(sys.executable))
            status = await asyncio.create_subprocess_exec(
                program, "status", env=pipeweave_env, stdout=asyncio.subprocess.PIPE)
            out, _ = await status.communicate()
            assert status.returncode == 0, out
            assert b"Initialized: " in out

        async def test_back_to_template_state(pipeweave_async_database_committed):
            assert (await pipeweave_async_database_committed.one(COUNT))["n"] == 0

        @pytest.mark.pipeweave(committed=True)
        async def test_marker(pipeweave_async_database, pipeweave_async_factory,
                              pipeweave_database_url):
            await pipeweave_async_factory.service()
            with psycopg.connect(pipeweave_database_url) as other:
                assert other.execute("SELECT count(*) FROM services").fetchone() == (1,)

        async def test_schema_change_is_undone(pipeweave_async_database_committed):
            await pipeweave_async_database_committed.none("ALTER TABLE services ADD COLUMN extra int")

        async def test_rollback_after(pipeweave_async_database):
            assert (await pipeweave_async_database.one(COUNT))["n"] == 0
            assert await pipeweave_async_database.one_or_none(
                "SELECT 1 AS x FROM pg_attribute WHERE attrelid = 'services'::regclass"
                " AND attname = 'extra'") is None
        """
    )
    run(pytester).assert_outcomes(passed=5)


def test_without_an_async_runner_one_line_says_what_to_install(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        async def test_async(pipeweave_async_database):
            pass

        def test_sync(pipeweave_database):
            pass
        """
    )
    result = run(pytester, "-p", "no:asyncio", "-p", "no:anyio")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*pipeweave: async tests need an async test runner: pip install pytest-asyncio*"]
    )


def test_a_server_killed_mid_test_fails_the_next_in_one_line(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(
        KILL_THE_SERVER
        + textwrap.dedent(
            """
            async def test_kill_the_server(pipeweave_server, pipeweave_async_database):
                await pipeweave_async_database.one("SELECT 1 AS x")
                kill_the_server(pipeweave_server)

            async def test_rollback_after(pipeweave_async_database):
                pass

            async def test_committed_after(pipeweave_async_database_committed):
                pass
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*pipeweave: the local test server stopped answering*"])
    assert result.duration < 30


def test_a_query_cancelled_half_way_leaves_the_next_test_clean(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        async def test_cancelled(pipeweave_async_database):
            await pipeweave_async_database.none(
                "INSERT INTO services (id, version, base_url) VALUES ('a', '1', 'u')")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(pipeweave_async_database.one("SELECT pg_sleep(5)"), 0.2)

        async def test_next(pipeweave_async_database):
            assert (await pipeweave_async_database.one(
                "SELECT count(*) AS n FROM services"))["n"] == 0
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)
    assert result.duration < 30
