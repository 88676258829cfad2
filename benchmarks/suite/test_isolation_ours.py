"""Measurement 1, PipeWeave: each test rolled back (``pipeweave_database``)."""

import pytest
from workload import ISOLATION_TESTS, write_and_read


@pytest.mark.parametrize("n", range(ISOLATION_TESTS))
def test_rows(pipeweave_database, n):
    write_and_read(pipeweave_database.any, n)
