"""Measurement 7, pytest-postgresql async: a template clone per test (``postgresql_async``)."""

import pytest
from workload import ISOLATION_TESTS, write_and_read_async


async def rows_of(conn, sql, params):
    cur = await conn.execute(sql, params)
    return await cur.fetchall() if cur.description is not None else []


@pytest.mark.asyncio
@pytest.mark.parametrize("n", range(ISOLATION_TESTS))
async def test_rows(postgresql_async, n):
    await write_and_read_async(lambda sql, params: rows_of(postgresql_async, sql, params), n)
