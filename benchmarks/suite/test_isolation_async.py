"""Measurement 7, PipeWeave async: each test rolled back (``pipeweave_async_database``)."""

import pytest
from workload import ISOLATION_TESTS, write_and_read_async


@pytest.mark.asyncio
@pytest.mark.parametrize("n", range(ISOLATION_TESTS))
async def test_rows(pipeweave_async_database, n):
    await write_and_read_async(pipeweave_async_database.any, n)
