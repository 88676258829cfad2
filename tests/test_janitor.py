"""DatabaseJanitor on a server that outlives runs: templates shared within a run, and what is
dropped (a dead run's databases, a run's own when its last process leaves) and what never is.

The server is the outer run's, reached as a user's own (``ServerInfo.from_url``); a run that
"dies" is a janitor whose connection is closed without a word, as a SIGKILL would.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from pipeweave_db import ArgumentError
from pytest_pipeweave import DatabaseJanitor, ServerInfo, new_run_key
from pytest_pipeweave.databases import TemplateKey
from pytest_pipeweave.processes import wait_until


@pytest.fixture
def users_server(pipeweave_server: ServerInfo) -> ServerInfo:
    server = ServerInfo.from_url(pipeweave_server.url())
    assert not server.ephemeral
    return server


# The tests' own strangers: databases with our prefix that no run of ours made.
STRANGER_PREFIX = "pytest_pipeweave_000000000000_"


@pytest.fixture
def janitors(users_server: ServerInfo) -> Iterator[list[DatabaseJanitor]]:
    """Janitors the test opens: closed afterwards, and what their runs left dropped, with the
    test's strangers. Only those: under pytest-xdist, tests on other workers share the server."""
    opened: list[DatabaseJanitor] = []
    yield opened
    for janitor in opened:
        janitor.close()
    runs = {f" run={janitor.run_key} " for janitor in opened}
    with DatabaseJanitor(users_server, new_run_key()) as sweeper:
        with psycopg.connect(users_server.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT datname, coalesce(shobj_description(oid, 'pg_database'), '')"
                " FROM pg_database"
            ).fetchall()
        for name, comment in rows:
            if name.startswith(STRANGER_PREFIX) or any(run in f" {comment}" for run in runs):
                sweeper.drop(name)


def names(server: ServerInfo) -> set[str]:
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}


def die(janitor: DatabaseJanitor) -> None:
    """The process holding ``janitor`` is killed: its connection goes, nothing is cleaned."""
    assert janitor._conn is not None
    janitor._conn.close()
    janitor._conn = None


def test_processes_of_one_run_share_its_template(
    users_server: ServerInfo, janitors: list[DatabaseJanitor]
) -> None:
    run_key = new_run_key()
    first = DatabaseJanitor(users_server, run_key)
    second = DatabaseJanitor(users_server, run_key)
    janitors += [first, second]
    built = first.template()
    assert built.build_seconds is not None
    again = second.template()
    assert (again.name, again.build_seconds) == (built.name, None)
    first.clone(built.name, "gw0")
    second.clone(built.name, "gw1")
    first.close()
    assert {built.name, first.name("gw0")} <= names(users_server), "the run goes on"
    second.close()
    assert not {built.name, first.name("gw0"), first.name("gw1")} & names(users_server)


def test_a_dead_runs_databases_are_dropped_by_the_next_run_and_a_live_runs_are_not(
    users_server: ServerInfo, janitors: list[DatabaseJanitor]
) -> None:
    dead = DatabaseJanitor(users_server, new_run_key())
    live = DatabaseJanitor(users_server, new_run_key())
    janitors += [dead, live]
    dead_template, live_template = dead.template().name, live.template().name
    die(dead)
    assert dead_template in names(users_server)
    following = DatabaseJanitor(users_server, new_run_key())
    janitors.append(following)
    assert dead_template not in names(users_server)
    assert live_template in names(users_server)


def test_kept_databases_and_strangers_are_never_dropped(
    users_server: ServerInfo, janitors: list[DatabaseJanitor]
) -> None:
    kept = DatabaseJanitor(users_server, new_run_key(), keep=True)
    janitors.append(kept)
    kept_template = kept.template().name
    die(kept)
    stranger = f"{STRANGER_PREFIX}not_ours"
    with psycopg.connect(users_server.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{stranger}"')
    janitors.append(DatabaseJanitor(users_server, new_run_key()))
    assert {kept_template, stranger} <= names(users_server)


def test_a_run_key_is_twelve_hex_digits(users_server: ServerInfo) -> None:
    with pytest.raises(ArgumentError, match=r"^run_key must be 12 hex digits"):
        DatabaseJanitor(users_server, "../etc")


# Older than anything of the outer run on this server, so that the limit reaches only the
# databases the test ages.
LONG_AGO = 10**8
LIMIT = 10**7


def made_long_ago(server: ServerInfo, name: str) -> None:
    """Rewrite ``name``'s comment as if it had been made LONG_AGO seconds earlier."""
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            [name],
        ).fetchone()
        assert row is not None
        made = row[0].split("created=")[1].split()[0]
        comment = row[0].replace(f"created={made}", f"created={int(made) - LONG_AGO}")
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal(comment)
            )
        )


def test_an_age_limit_drops_what_is_older_even_of_live_runs_and_nothing_else(
    users_server: ServerInfo, janitors: list[DatabaseJanitor]
) -> None:
    live, young, kept = (
        DatabaseJanitor(users_server, new_run_key()),
        DatabaseJanitor(users_server, new_run_key()),
        DatabaseJanitor(users_server, new_run_key(), keep=True),
    )
    in_use = DatabaseJanitor(users_server, new_run_key())
    janitors += [live, young, kept, in_use]
    old, young_template, kept_template = (j.template().name for j in (live, young, kept))
    reusable = in_use.template(reuse=TemplateKey.of(users_server, None, "aged")).name
    stranger = f"{STRANGER_PREFIX}no_time"
    with psycopg.connect(users_server.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{stranger}"')
        conn.execute(
            f"COMMENT ON DATABASE \"{stranger}\" IS 'pytest-pipeweave run=000000000000 host=x kept'"
        )
    reaper = DatabaseJanitor(users_server, new_run_key())
    janitors.append(reaper)
    own = reaper.template().name
    for name in (old, kept_template, reusable, own):
        made_long_ago(users_server, name)

    assert sorted(reaper.drop_older_than(LIMIT)) == sorted([old, kept_template])
    assert {young_template, reusable, stranger, own} <= names(users_server)
    in_use.close()
    # Its backend lets go of the lock once it has seen the connection close.
    dropped: list[str] = []
    assert wait_until(lambda: dropped.extend(reaper.drop_older_than(LIMIT)) or dropped, 10)
    assert dropped == [reusable], "once no run uses it"
