"""Data for a module or a class, each test still rolled back: through real inner test runs."""

from __future__ import annotations

import textwrap

import pytest
from helpers import KILL_THE_SERVER

pytestmark = pytest.mark.usefixtures("pipeweave_inner_env")

COMMON = """
import pytest
from pytest_pipeweave import AsyncPipeweaveFactory, PipeweaveFactory

SERVICES = "SELECT count(*) AS n FROM services"
TASK_RUNS = "SELECT count(*) AS n FROM task_runs"
"""

MODULE_DATA = (
    COMMON
    + """
@pytest.fixture(scope="module")
def big_pipeline(pipeweave_module_database):
    PipeweaveFactory(pipeweave_module_database).task_runs(50)


@pytest.mark.parametrize("i", range(4))
def test_sees_the_module_data_and_loses_its_own(i, big_pipeline, pipeweave_database,
                                                pipeweave_factory):
    assert pipeweave_database.one(TASK_RUNS)["n"] == 50
    pipeweave_factory.task_run()
    pipeweave_database.none("INSERT INTO services (id, version, base_url) VALUES ('x', '1', 'u')")
    assert pipeweave_database.one(TASK_RUNS)["n"] == 51


def test_a_failing_statement_leaves_the_data_usable(big_pipeline, pipeweave_database):
    with pytest.raises(Exception):
        pipeweave_database.none("INSERT INTO services (id) VALUES ('no-version')")
    assert pipeweave_database.one(TASK_RUNS)["n"] == 50


def test_the_seed_beside_it(big_pipeline, pipeweave_seed, pipeweave_database):
    assert pipeweave_database.one(TASK_RUNS)["n"] > 50


class TestNested:
    @pytest.fixture(scope="class")
    @classmethod
    def class_rows(cls, pipeweave_class_database):
        PipeweaveFactory(pipeweave_class_database).task_runs(7)

    @pytest.mark.parametrize("i", range(3))
    def test_sees_module_and_class_data(self, i, big_pipeline, class_rows, pipeweave_database):
        assert pipeweave_database.one(TASK_RUNS)["n"] == 57
        PipeweaveFactory(pipeweave_database).task_runs(2)


def test_after_the_class_only_the_module_data(big_pipeline, pipeweave_database):
    assert pipeweave_database.one(TASK_RUNS)["n"] == 50
    assert pipeweave_database.one("SELECT count(*) AS n FROM services WHERE id = 'x'")["n"] == 0
"""
)

AFTER_THE_MODULE = (
    COMMON
    + """
def test_the_module_data_is_gone(pipeweave_database):
    assert pipeweave_database.one(TASK_RUNS)["n"] == 0
    assert pipeweave_database.one(SERVICES)["n"] == 0


def test_committed_mode_works_again(pipeweave_database_committed):
    assert pipeweave_database_committed.one(TASK_RUNS)["n"] == 0


class TestClassAlone:
    @pytest.fixture(scope="class")
    @classmethod
    def class_rows(cls, pipeweave_class_database):
        PipeweaveFactory(pipeweave_class_database).task_runs(3)

    @pytest.mark.parametrize("i", range(2))
    def test_sees_the_class_data(self, i, class_rows, pipeweave_database):
        assert pipeweave_database.one(TASK_RUNS)["n"] == 3
        PipeweaveFactory(pipeweave_database).task_runs(1)
"""
)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", *args, timeout=120)


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_module_and_class_data_seen_by_every_test_and_gone_afterwards(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_a_module=MODULE_DATA, test_b_after=AFTER_THE_MODULE)
    result = run(pytester, *workers)
    result.assert_outcomes(passed=14)


def test_a_committed_test_inside_module_data_gets_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        COMMON
        + textwrap.dedent(
            """
            @pytest.fixture(scope="module")
            def rows(pipeweave_module_database):
                PipeweaveFactory(pipeweave_module_database).task_runs(2)

            def test_uses_the_data(rows, pipeweave_database):
                assert pipeweave_database.one(TASK_RUNS)["n"] == 2

            def test_committed(pipeweave_database_committed):
                pass

            @pytest.mark.pipeweave(committed=True)
            def test_marked(pipeweave_database):
                pass

            def test_env(pipeweave_env):
                pass
            """
        )
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=3)
    result.stdout.fnmatch_lines(
        [
            "*pipeweave: a committed test cannot run inside this module's data "
            "(pipeweave_module_database): * move it out of the module"
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_a_module_fixture_first_needed_inside_a_class_is_refused(
    pytester: pytest.Pytester,
) -> None:
    late = """
@pytest.fixture(scope="module")
def late(pipeweave_module_database):
    PipeweaveFactory(pipeweave_module_database).task_runs(2)

@pytest.fixture(scope="class")
def class_rows(pipeweave_class_database):
    PipeweaveFactory(pipeweave_class_database).task_runs(1)
"""
    refused = """
class TestLate:
    def test_first(self, class_rows):
        pass

    def test_second(self, class_rows, late):
        pass
"""
    remedy = """
@pytest.mark.usefixtures("late")
class TestRemedy:
    def test_first(self, class_rows, pipeweave_database):
        assert pipeweave_database.one(TASK_RUNS)["n"] == 3

    def test_second(self, class_rows, late, pipeweave_database):
        assert pipeweave_database.one(TASK_RUNS)["n"] == 3

def test_after(late, pipeweave_database):
    assert pipeweave_database.one(TASK_RUNS)["n"] == 2
"""
    pytester.makepyfile(test_refused=COMMON + late + refused, test_remedy=COMMON + late + remedy)
    result = run(pytester)
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*pipeweave: the module fixture late is first needed inside a class that holds "
            "data of its own, * add @pytest.mark.usefixtures('late') to the class"
        ]
    )


ASYNC_MODULE_DATA = (
    COMMON
    + """
import pytest_asyncio


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def big_pipeline(pipeweave_async_module_database):
    await AsyncPipeweaveFactory(pipeweave_async_module_database).task_runs(20)


@pytest.mark.parametrize("i", range(3))
async def test_sees_the_module_data_and_loses_its_own(i, big_pipeline, pipeweave_async_database,
                                                      pipeweave_async_factory):
    db = pipeweave_async_database
    assert (await db.one(TASK_RUNS))["n"] == 20
    await pipeweave_async_factory.task_run()
    async with db.tx() as t:
        await t.none("INSERT INTO services (id, version, base_url) VALUES ('x', '1', 'u')")
    assert (await db.one(TASK_RUNS))["n"] == 21


class TestNested:
    @pytest_asyncio.fixture(scope="class", loop_scope="module")
    @classmethod
    async def class_rows(cls, pipeweave_async_class_database):
        await AsyncPipeweaveFactory(pipeweave_async_class_database).task_runs(5)

    @pytest.mark.parametrize("i", range(2))
    async def test_sees_module_and_class_data(self, i, big_pipeline, class_rows,
                                              pipeweave_async_database):
        assert (await pipeweave_async_database.one(TASK_RUNS))["n"] == 25
        await AsyncPipeweaveFactory(pipeweave_async_database).task_runs(2)


async def test_after_the_class(big_pipeline, pipeweave_async_database):
    assert (await pipeweave_async_database.one(TASK_RUNS))["n"] == 20


def test_sync_tests_have_their_own_connection(pipeweave_database):
    assert pipeweave_database.one(TASK_RUNS)["n"] == 0


async def test_committed_is_refused(pipeweave_async_database_committed):
    pass
"""
)


@pytest.mark.parametrize(
    "workers", [(), ("-n", "2", "--dist", "loadfile")], ids=["serial", "xdist"]
)
def test_async_module_and_class_data(pytester: pytest.Pytester, workers: tuple[str, ...]) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    after = "async def test_gone(pipeweave_async_database):\n" + (
        "    assert (await pipeweave_async_database.one(TASK_RUNS))['n'] == 0\n"
    )
    pytester.makepyfile(test_a_module=ASYNC_MODULE_DATA, test_b_after=COMMON + after)
    result = run(pytester, *workers)
    result.assert_outcomes(passed=8, errors=1)


def test_a_server_lost_under_module_data_fails_the_tests_after(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        KILL_THE_SERVER
        + COMMON
        + textwrap.dedent(
            """
            @pytest.fixture(scope="module")
            def rows(pipeweave_module_database):
                PipeweaveFactory(pipeweave_module_database).task_runs(2)

            def test_kill_the_server(rows, pipeweave_server, pipeweave_database):
                kill_the_server(pipeweave_server)

            def test_after(rows, pipeweave_database):
                pass
            """
        )
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*pipeweave: the local test server stopped answering, and the data held for this "
            "module went with its connection"
        ]
    )


def test_a_module_fixture_first_needed_by_a_later_test_keeps_its_data(
    pytester: pytest.Pytester,
) -> None:
    """A test inside module data ends on its savepoint, kept for the next test: what a module
    fixture writes between two tests must not be undone with the second."""
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = module\n")
    pytester.makepyfile(
        COMMON
        + textwrap.dedent(
            """
            import pytest_asyncio

            LATER = (
                "INSERT INTO services (id, version, base_url) "
                "SELECT '{}-' || g, '1', 'u' FROM generate_series(1, 2) g"
            )
            LATER_ROWS = "SELECT count(*) AS n FROM services WHERE id LIKE '{}-%'"

            @pytest.fixture(scope="module")
            def first(pipeweave_module_database):
                PipeweaveFactory(pipeweave_module_database).task_runs(3)

            @pytest.fixture(scope="module")
            def later(pipeweave_module_database):
                pipeweave_module_database.none(LATER.format('sync'))

            @pytest_asyncio.fixture(scope="module", loop_scope="module")
            async def async_first(pipeweave_async_module_database):
                await AsyncPipeweaveFactory(pipeweave_async_module_database).task_runs(3)

            @pytest_asyncio.fixture(scope="module", loop_scope="module")
            async def async_later(pipeweave_async_module_database):
                await pipeweave_async_module_database.none(LATER.format('async'))

            def test_one(first, pipeweave_database):
                assert pipeweave_database.one(TASK_RUNS)["n"] == 3
                PipeweaveFactory(pipeweave_database).service()

            @pytest.mark.parametrize("i", range(2))
            def test_two(i, first, later, pipeweave_database):
                assert pipeweave_database.one(LATER_ROWS.format("sync"))["n"] == 2
                assert pipeweave_database.one(TASK_RUNS)["n"] == 3
                PipeweaveFactory(pipeweave_database).service()

            async def test_async_one(async_first, pipeweave_async_database):
                assert (await pipeweave_async_database.one(TASK_RUNS))["n"] == 3
                await AsyncPipeweaveFactory(pipeweave_async_database).service()

            @pytest.mark.parametrize("i", range(2))
            async def test_async_two(i, async_first, async_later, pipeweave_async_database):
                assert (await pipeweave_async_database.one(LATER_ROWS.format("async")))["n"] == 2
                await AsyncPipeweaveFactory(pipeweave_async_database).service()
            """
        )
    )
    run(pytester).assert_outcomes(passed=6)
