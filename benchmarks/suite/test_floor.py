"""The floor of the isolation figures: pytest's own cost per test, with a fixture doing nothing,
for a sync test and for an async one (pytest-asyncio: a loop per test, or one for the session)."""

import pytest
from workload import ISOLATION_TESTS


@pytest.fixture
def nothing():
    yield None


@pytest.mark.parametrize("n", range(ISOLATION_TESTS))
def test_sync(nothing, n):
    pass


@pytest.mark.asyncio
@pytest.mark.parametrize("n", range(ISOLATION_TESTS))
async def test_async(nothing, n):
    pass


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("n", range(ISOLATION_TESTS))
async def test_async_session(nothing, n):
    pass
