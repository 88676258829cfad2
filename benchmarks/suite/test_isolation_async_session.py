"""Measurement 7, PipeWeave async with one event loop for the session
(``loop_scope="session"``): pytest-asyncio no longer makes and closes a loop per test."""

import pytest
from workload import ISOLATION_TESTS, write_and_read_async


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("n", range(ISOLATION_TESTS))
async def test_rows(pipeweave_async_database, n):
    await write_and_read_async(pipeweave_async_database.any, n)
