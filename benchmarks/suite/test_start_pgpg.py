"""Measurement 3, pytest-postgresql: session start to the first test (initdb, pg_ctl, template)."""


def test_first(postgresql):
    assert postgresql.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
