"""Measurement 1, bare testcontainers: one container, every table emptied after each test."""

import pytest
from workload import ISOLATION_TESTS, psycopg_query, write_and_read


@pytest.mark.parametrize("n", range(ISOLATION_TESTS))
def test_rows(tc_database, n):
    write_and_read(psycopg_query(tc_database), n)
