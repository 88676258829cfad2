"""Measurement 4: a database-bound suite, run with -n 0 and with -n 2 (one shared server)."""

import pytest
from workload import XDIST_TESTS, dashboard


@pytest.mark.parametrize("n", range(XDIST_TESTS))
def test_dashboard(pipeweave_database, n):
    dashboard(pipeweave_database.any, n)
