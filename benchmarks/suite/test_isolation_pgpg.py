"""Measurement 1, pytest-postgresql: each test gets a clone of the template (``postgresql``)."""

import pytest
from workload import ISOLATION_TESTS, psycopg_query, write_and_read


@pytest.mark.parametrize("n", range(ISOLATION_TESTS))
def test_rows(postgresql, n):
    write_and_read(psycopg_query(postgresql), n)
