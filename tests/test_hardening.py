"""Hostile input and concurrency across the tools: a password never printed (pytest reports and
log lines included), SQL-looking values inert everywhere, init and migrate from many processes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import quote

import psycopg
import pytest
from helpers import PIPEWEAVE_DB, clean_env, run, run_at_once, run_test_db
from psycopg import sql

from pipeweave_db import (
    PIPEWEAVE_TABLES,
    create_database,
    is_database_initialized,
    schema_status,
    test_connection,
)
from pytest_pipeweave import LocalServer, ServerInfo
from pytest_pipeweave.servers.local import free_port

CANARY = "Canary-Pa55-4f1e"
HOSTILE = "x'); DROP TABLE canary; --"
PASSWORD_HBA = "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"

StartServer = Callable[..., tuple[LocalServer, ServerInfo]]


@pytest.fixture
def guarded(start_local_server: StartServer) -> ServerInfo:
    """A password-protected server holding a canary table that must survive every test."""
    _, info = start_local_server(hba=PASSWORD_HBA, password=CANARY)
    with psycopg.connect(info.url(), autocommit=True) as conn:
        conn.execute("CREATE TABLE canary (alive boolean); INSERT INTO canary VALUES (true)")
    return info


def canary_alive(info: ServerInfo) -> bool:
    with psycopg.connect(info.url()) as conn:
        return conn.execute("SELECT alive FROM canary").fetchone() == (True,)


def url(info: ServerInfo, password: str = CANARY, dbname: str = "postgres") -> str:
    return f"postgresql://postgres:{quote(password, safe='')}@127.0.0.1:{info.port}/{quote(dbname, safe='')}"


# -- a password never printed ----------------------------------------------------------------


def test_no_password_in_any_cli_output(guarded: ServerInfo) -> None:
    wrong = "Wrong-" + CANARY
    good_env = clean_env(DATABASE_URL=url(guarded))
    outputs = []
    for args in (
        ["init"],
        ["status"],
        ["status", "--json"],
        ["cleanup", "--json"],
        ["migrate"],
        ["init", "--json"],
        ["reset"],
        ["reset", "--yes"],
        ["reset", "--yes", "--json"],
    ):
        outputs.append(run(*args, env=good_env, secrets=[CANARY]).output)
        outputs.append(
            run(*args, "--url", url(guarded, wrong), env=clean_env(), secrets=[wrong]).output
        )
        outputs.append(
            run(
                *args,
                "--host",
                "127.0.0.1",
                "--port",
                str(guarded.port),
                "--database",
                "postgres",
                "--user",
                "postgres",
                "--password",
                wrong,
                env=clean_env(),
                secrets=[wrong],
            ).output
        )
    for args in ([], ["--json"]):
        outputs.append(run_test_db(*args, env=good_env, secrets=[CANARY]).output)
        outputs.append(
            run_test_db(
                *args, env=clean_env(DATABASE_URL=url(guarded, wrong)), secrets=[wrong]
            ).output
        )
    assert any("password authentication failed" in out for out in outputs)
    assert any("=== Database Status ===" in out for out in outputs)


def test_no_password_in_log_lines(guarded: ServerInfo, caplog: pytest.LogCaptureFixture) -> None:
    wrong = "Wrong-" + CANARY
    with caplog.at_level(logging.DEBUG):
        with create_database(connection_string=url(guarded, wrong), connect_timeout=2) as db:
            assert test_connection(db) is False
            assert CANARY not in repr(db)
        with create_database(connection_string=url(guarded)) as db:
            assert test_connection(db) is True
    assert "password authentication failed" in caplog.text
    assert CANARY not in caplog.text


def test_no_password_in_a_pytest_report(
    pytester: pytest.Pytester, pipeweave_inner_env: None, guarded: ServerInfo
) -> None:
    pytester.makepyfile(
        """
        def test_passes(pipeweave_database, pipeweave_server, pipeweave_config):
            print(pipeweave_server, pipeweave_config)

        def test_fails(pipeweave_database, pipeweave_config):
            assert pipeweave_database.one("SELECT 1 AS x") == {"x": 2}, pipeweave_config

        def test_committed(pipeweave_database_committed):
            pipeweave_database_committed.none("SELECT * FROM no_such_table")
        """
    )
    good = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-v", "-rA", "-s", f"--pipeweave-url={url(guarded)}"
    )
    good.assert_outcomes(passed=1, failed=2)
    bad = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-v", "-rA", f"--pipeweave-url={url(guarded, 'Wrong-' + CANARY)}"
    )
    bad.assert_outcomes(errors=3)
    bad.stdout.fnmatch_lines(["*password authentication failed*"])
    for result in (good, bad):
        text = result.stdout.str() + result.stderr.str()
        assert CANARY not in text
        assert quote(CANARY, safe="") not in text


# -- SQL-looking values are inert ---------------------------------------------------------------


def test_hostile_values_in_cli_options_and_variables(guarded: ServerInfo) -> None:
    base = ["--host", "127.0.0.1", "--port", str(guarded.port), "--password", CANARY]
    for option in ("--database", "--user"):
        values = {"--database": "postgres", "--user": "postgres"}
        values[option] = HOSTILE
        args = [*base, "--database", values["--database"], "--user", values["--user"]]
        result = run("status", *args, env=clean_env(), secrets=[CANARY])
        assert result.code == 1, result.output
    assert (
        run(
            "cleanup",
            "--url",
            url(guarded),
            "--dlq-retention-days",
            "1; DROP TABLE dlq",
            env=clean_env(),
        ).code
        == 2
    )
    assert (
        run(
            "status", "--url", f"{url(guarded)}?application_name={quote(HOSTILE)}", env=clean_env()
        ).code
        == 3
    )  # tables missing, nothing else
    for variable in ("DB_NAME", "DB_USER", "DB_HOST"):
        env = clean_env(
            DB_HOST="127.0.0.1",
            DB_PORT=str(guarded.port),
            DB_NAME="postgres",
            DB_USER="postgres",
            DB_PASS=CANARY,
        )
        env[variable] = HOSTILE
        assert run_test_db(env=env, secrets=[CANARY]).code == 1
    assert canary_alive(guarded)


def test_a_database_with_a_hostile_name_is_just_a_name(guarded: ServerInfo) -> None:
    with psycopg.connect(guarded.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(HOSTILE)))
    result = run("init", "--url", url(guarded, dbname=HOSTILE), env=clean_env(), secrets=[CANARY])
    assert result.code == 0, result.output
    with create_database(connection_string=url(guarded, dbname=HOSTILE)) as db:
        assert is_database_initialized(db)
    assert canary_alive(guarded)


def test_the_plugin_on_a_server_whose_url_names_a_hostile_database(
    pytester: pytest.Pytester, pipeweave_inner_env: None, guarded: ServerInfo
) -> None:
    with psycopg.connect(guarded.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(HOSTILE)))
    pytester.makepyfile(
        "def test_db(pipeweave_database):\n    pipeweave_database.one('SELECT 1 AS x')\n"
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--pipeweave-url={url(guarded, dbname=HOSTILE)}"
    )
    result.assert_outcomes(passed=1)
    assert canary_alive(guarded)


# -- many processes at once ----------------------------------------------------------------------


def test_eight_concurrent_inits_create_the_schema_once(empty_database_url: str) -> None:
    results = run_at_once(
        8, [PIPEWEAVE_DB, "init", "--json"], clean_env(DATABASE_URL=empty_database_url)
    )
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    creators = [
        r
        for r in results
        if '"created_tables": [' in r.stdout and '"created_tables": []' not in r.stdout
    ]
    assert len(creators) == 1, [r.stdout for r in results]
    with create_database(connection_string=empty_database_url) as db:
        assert schema_status(db).up_to_date
        assert db.one("SELECT count(*) AS n FROM pipeweave_schema_migrations") == {"n": 1}
        assert schema_status(db).tables == PIPEWEAVE_TABLES


def test_two_concurrent_migrates_apply_each_migration_once(empty_database_url: str) -> None:
    results = run_at_once(
        2, [PIPEWEAVE_DB, "migrate", "--json"], clean_env(DATABASE_URL=empty_database_url)
    )
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    with create_database(connection_string=empty_database_url) as db:
        assert db.one("SELECT count(*) AS n FROM pipeweave_schema_migrations") == {"n": 1}


def test_a_refused_port_fails_fast(guarded: ServerInfo) -> None:
    result = run(
        "status",
        "--url",
        f"postgresql://postgres:{CANARY}@127.0.0.1:{free_port()}/x",
        env=clean_env(),
        secrets=[CANARY],
    )
    assert result.code == 1
    assert "Connection refused" in result.output or "refused" in result.output.lower()
