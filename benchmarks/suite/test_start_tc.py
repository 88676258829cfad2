"""Measurement 3, bare testcontainers: session start to the first test (container, schema)."""


def test_first(tc_database):
    assert tc_database.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
