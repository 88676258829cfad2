"""Measurement 9's second floor: pytest, and importing psycopg in the first test's fixture, as
any tool built on psycopg must before its first query (PipeWeave imports it at that point when
no server has to start), with no server or connection."""

import pytest


@pytest.fixture
def psycopg_module():
    import psycopg

    return psycopg


def test_first(psycopg_module):
    assert psycopg_module.__version__
