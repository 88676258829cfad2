"""Measurement 3, PipeWeave: session start to the first test (server, template, clone)."""


def test_first(pipeweave_database):
    assert pipeweave_database.one("SELECT count(*) AS n FROM tasks")["n"] == 0
