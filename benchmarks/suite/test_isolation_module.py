"""Measurement 8: the same tests as test_isolation_ours.py, inside a module with shared data
(each test a savepoint in the module's transaction)."""

import pytest
from workload import ISOLATION_TESTS, write_and_read

from pytest_pipeweave import PipeweaveFactory


@pytest.fixture(scope="module", autouse=True)
def shared_rows(pipeweave_module_database):
    PipeweaveFactory(pipeweave_module_database).task_runs(500)


@pytest.mark.parametrize("n", range(ISOLATION_TESTS))
def test_rows(pipeweave_database, n):
    write_and_read(pipeweave_database.any, n)
