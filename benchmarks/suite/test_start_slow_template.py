"""Measurement 9: session start to the first test with a template setup that takes 2 s (a
migration of the user's), built each run, or once with --pipeweave-reuse."""

import pytest


@pytest.fixture(scope="session")
def pipeweave_template_setup():
    def slow_migration(db):
        db.none("CREATE TABLE reference_data (id int PRIMARY KEY)")
        db.one("SELECT pg_sleep(2)")

    return slow_migration


def test_first(pipeweave_database):
    assert pipeweave_database.one("SELECT count(*) AS n FROM reference_data")["n"] == 0
