"""pipeweave-db and pipeweave-test-db, run as installed console scripts against real servers.

The plugin's server (trust authentication) serves most tests; a server of our own with
password authentication serves the authentication and pg_hba cases. Every run is checked
for a traceback and, when the test knows a password, for that password in any output.
"""

from __future__ import annotations

import os
import pty
import subprocess
import uuid
from collections.abc import Iterator, Sequence

import psycopg
import pytest
from helpers import BIN_DIR, PIPEWEAVE_DB, PIPEWEAVE_TEST_DB, Run, clean_env, run, run_test_db
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pipeweave_db import (
    PIPEWEAVE_TABLES,
    Database,
    DatabaseConfig,
    is_database_initialized,
    load_migrations,
    schema_status,
)
from pytest_pipeweave import LocalServer, SeedData, ServerInfo
from pytest_pipeweave.runs import base_dir
from pytest_pipeweave.servers.binaries import find_pg_bin
from pytest_pipeweave.servers.local import free_port

COMMANDS = ("init", "status", "reset", "cleanup", "migrate")
JSON_COMMANDS = ("init", "status", "reset", "cleanup", "migrate")
# What each command needs besides the connection to run without asking anything.
COMMAND_ARGS = {"reset": ["--yes"]}
LATEST = load_migrations()[-1]
MIGRATION_LABELS = [m.label for m in load_migrations()]
SCRAM_PASSWORD = "scram-secret-8d1f"
REFUSED_PASSWORD = "refused-secret-77b2"
REFUSED_HINT = "Hint: Ensure PostgreSQL is running"

pytestmark = pytest.mark.skipif(
    PIPEWEAVE_DB is None or PIPEWEAVE_TEST_DB is None,
    reason=f"the console scripts are not installed in {BIN_DIR}",
)


def dbname_of(url: str) -> str:
    return str(conninfo_to_dict(url)["dbname"])


def bullets(*items: str, bullet: str = "•") -> str:
    return "".join(f"  {bullet} {item}\n" for item in items)


def drop_schema(db: Database) -> None:
    """Leave a database as if PipeWeave had never been there."""
    tables = [*PIPEWEAVE_TABLES, "pipeweave_schema_migrations"]
    db.none(
        sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(
            sql.SQL(", ").join(map(sql.Identifier, tables))
        )
    )
    db.none("DROP FUNCTION IF EXISTS update_updated_at_column() CASCADE")
    db.none("DROP FUNCTION IF EXISTS cleanup_expired_idempotency_cache() CASCADE")


def count(db: Database, table: str) -> int:
    return int(db.one(sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(table)))["n"])


UP_TO_DATE_STATUS = "".join(
    [
        "=== Database Status ===\n",
        "\n",
        "Initialized: ✓ Yes\n",
        "Tables (8):\n",
        bullets(*PIPEWEAVE_TABLES),
        f"Schema version: {LATEST.version}\n",
        "Pending migrations: none\n",
    ]
)


# -- connection forms -------------------------------------------------------------------------

FORMS = ("env-url", "env-individual", "url-socket", "url-tcp", "flags-tcp", "flags-socket")


def connection_form(
    form: str, server: ServerInfo, database_url: str
) -> tuple[list[str], dict[str, str]]:
    """Arguments and environment that reach ``database_url`` the way ``form`` says."""
    dbname = dbname_of(database_url)
    password = server.password
    env = clean_env()
    if form == "env-url":
        env["DATABASE_URL"] = database_url
        return [], env
    if form == "env-individual":
        env.update(DB_HOST="127.0.0.1", DB_PORT=str(server.port), DB_NAME=dbname)
        env.update(DB_USER=server.user, **({"DB_PASS": password} if password else {}))
        return [], env
    if form == "url-socket":
        if not server.socket_dir:
            pytest.skip("the server has no unix socket")
        return ["--url", server.url(dbname)], env
    if form == "url-tcp":
        return ["--url", server.tcp_url(dbname)], env
    host = "127.0.0.1" if form == "flags-tcp" else server.socket_dir
    if host is None:
        pytest.skip("the server has no unix socket")
    args = ["--host", host, "--port", str(server.port), "--database", dbname]
    args += ["--user", server.user, *(["--password", password] if password else [])]
    return args, env


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_every_connection_form(
    command: str,
    form: str,
    pipeweave_server: ServerInfo,
    pipeweave_database_url: str,
    pipeweave_database_committed: Database,
) -> None:
    args, env = connection_form(form, pipeweave_server, pipeweave_database_url)
    secrets = [pipeweave_server.password] if pipeweave_server.password else []
    result = run(command, *args, *COMMAND_ARGS.get(command, []), env=env, secrets=secrets)
    assert result.code == 0, result.output
    assert result.stderr == ""
    assert schema_status(pipeweave_database_committed).up_to_date


@pytest.mark.parametrize("form", FORMS)
def test_status_prints_the_seeds_block_for_every_form(
    form: str,
    pipeweave_server: ServerInfo,
    pipeweave_database_url: str,
    pipeweave_database_committed: Database,
) -> None:
    args, env = connection_form(form, pipeweave_server, pipeweave_database_url)
    result = run("status", *args, env=env)
    assert (result.code, result.stdout, result.stderr) == (0, UP_TO_DATE_STATUS, "")


def test_url_option_wins_over_the_environment(
    pipeweave_database_url: str, pipeweave_database_committed: Database
) -> None:
    env = clean_env(DATABASE_URL=f"postgresql://nobody@127.0.0.1:{free_port()}/nowhere")
    env.update(DB_HOST="/nonexistent-socket-dir", DB_NAME="wrong", DB_USER="wrong")
    result = run("status", "--url", pipeweave_database_url, env=env)
    assert (result.code, result.stdout) == (0, UP_TO_DATE_STATUS)


def test_individual_options_win_over_database_url(
    pipeweave_server: ServerInfo,
    pipeweave_database_url: str,
    pipeweave_database_committed: Database,
) -> None:
    args, _ = connection_form("flags-tcp", pipeweave_server, pipeweave_database_url)
    env = clean_env(DATABASE_URL=f"postgresql://nobody@127.0.0.1:{free_port()}/nowhere")
    result = run("status", *args, env=env)
    assert (result.code, result.stdout) == (0, UP_TO_DATE_STATUS)


def test_individual_options_take_missing_parts_from_db_variables(
    pipeweave_server: ServerInfo,
    pipeweave_database_url: str,
    pipeweave_database_committed: Database,
) -> None:
    _, env = connection_form("env-individual", pipeweave_server, pipeweave_database_url)
    env["DB_NAME"] = "not_this_one"
    result = run("status", "--database", dbname_of(pipeweave_database_url), env=env)
    assert (result.code, result.stdout) == (0, UP_TO_DATE_STATUS)


def test_url_with_individual_options_warns_that_they_are_ignored(
    pipeweave_database_url: str, pipeweave_database_committed: Database
) -> None:
    result = run("status", "--url", pipeweave_database_url, "--host", "elsewhere", env=clean_env())
    assert (result.code, result.stdout) == (0, UP_TO_DATE_STATUS)
    assert result.stderr == "Warning: --url takes precedence: ignoring --host\n"


# -- help and version -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["", *COMMANDS, "dev"])
def test_help_on_every_command(command: str) -> None:
    result = run(*filter(None, [command, "--help"]), env=clean_env())
    assert result.code == 0
    assert result.stdout.startswith(f"Usage: pipeweave-db {command}".rstrip())
    if command in COMMANDS:
        for option in ("--url", "--host", "--port", "--database", "--user", "--password"):
            assert option in result.stdout
        assert "--ssl / --no-ssl" in result.stdout
    assert ("--json" in result.stdout) == (command in JSON_COMMANDS)


def test_version() -> None:
    from pipeweave_db import __version__

    assert run("--version", env=clean_env()).stdout == f"pipeweave-db, version {__version__}\n"
    result = run_test_db("--version", env=clean_env())
    assert result.stdout == f"pipeweave-test-db, version {__version__}\n"
    assert run_test_db("--help", env=clean_env()).stdout.startswith("Usage: pipeweave-test-db")


def test_unknown_option_is_a_usage_error() -> None:
    result = run("status", "--no-such-option", env=clean_env())
    assert result.code == 2
    assert "No such option '--no-such-option'" in result.stderr


# -- init -------------------------------------------------------------------------------------


def test_init_creates_the_schema_in_an_empty_database(
    pipeweave_env: dict[str, str], pipeweave_database_committed: Database
) -> None:
    db = pipeweave_database_committed
    drop_schema(db)
    result = run("init", env=pipeweave_env)
    assert result.code == 0, result.output
    assert result.stdout == "".join(
        [
            f"✓ Database initialized (schema version {LATEST.version})\n",
            "Created tables (8):\n",
            bullets(*PIPEWEAVE_TABLES),
            f"Applied migrations ({len(MIGRATION_LABELS)}):\n",
            bullets(*MIGRATION_LABELS),
        ]
    )
    assert schema_status(db).up_to_date


def test_init_json_on_an_empty_database(
    pipeweave_env: dict[str, str], pipeweave_database_committed: Database
) -> None:
    drop_schema(pipeweave_database_committed)
    result = run("init", "--json", env=pipeweave_env)
    assert result.code == 0
    assert result.json() == {
        "changed": True,
        "created_tables": list(PIPEWEAVE_TABLES),
        "repaired_objects": [],
        "applied_migrations": MIGRATION_LABELS,
        "schema_version": LATEST.version,
    }
    assert is_database_initialized(pipeweave_database_committed)


def test_init_on_an_initialized_database_changes_nothing(
    pipeweave_env: dict[str, str],
    pipeweave_seed: SeedData,
    pipeweave_database_committed: Database,
) -> None:
    services = count(pipeweave_database_committed, "services")
    result = run("init", env=pipeweave_env)
    assert (result.code, result.stdout) == (
        0,
        f"✓ Database already initialized (schema version {LATEST.version})\n",
    )
    assert run("init", "--json", env=pipeweave_env).json() == {
        "changed": False,
        "created_tables": [],
        "repaired_objects": [],
        "applied_migrations": [],
        "schema_version": LATEST.version,
    }
    assert count(pipeweave_database_committed, "services") == services > 0


def test_init_records_migrations_on_a_schema_made_without_them(
    pipeweave_env: dict[str, str], pipeweave_database_committed: Database
) -> None:
    """A database the orchestrator created itself: tables there, no migration records."""
    pipeweave_database_committed.none("DROP TABLE pipeweave_schema_migrations")
    result = run("init", env=pipeweave_env)
    assert result.code == 0
    assert "Created tables: none, all 8 were there already\n" in result.stdout
    assert f"Applied migrations (1):\n  • {LATEST.label}\n" in result.stdout
    assert schema_status(pipeweave_database_committed).up_to_date


# -- status -----------------------------------------------------------------------------------


def test_status_of_an_empty_database_exits_3(
    pipeweave_env: dict[str, str], pipeweave_database_committed: Database
) -> None:
    drop_schema(pipeweave_database_committed)
    result = run("status", env=pipeweave_env)
    assert result.code == 3
    assert result.stdout == "".join(
        [
            "=== Database Status ===\n",
            "\n",
            "Initialized: ✗ No\n",
            "Tables (0):\n",
            "Missing tables (8):\n",
            bullets(*PIPEWEAVE_TABLES),
            "Schema version: none\n",
            f"Pending migrations ({len(MIGRATION_LABELS)}):\n",
            bullets(*MIGRATION_LABELS),
            "\n",
            "Run `pipeweave-db init` to create the missing tables.\n",
        ]
    )
    payload = run("status", "--json", env=pipeweave_env).json()
    assert payload["state"] == "not_initialized"
    assert payload["initialized"] is False
    assert payload["missing_tables"] == list(PIPEWEAVE_TABLES)


def test_status_with_one_table_missing_exits_3(
    pipeweave_env: dict[str, str], pipeweave_database_committed: Database
) -> None:
    pipeweave_database_committed.none("DROP TABLE dlq")
    result = run("status", env=pipeweave_env)
    assert result.code == 3
    present = [t for t in PIPEWEAVE_TABLES if t != "dlq"]
    assert "Initialized: ✗ No\nTables (7):\n" + bullets(*present) in result.stdout
    assert "Missing tables (1):\n  • dlq\n" in result.stdout


def test_status_with_pending_migrations_exits_4(
    pipeweave_env: dict[str, str], pipeweave_database_committed: Database
) -> None:
    pipeweave_database_committed.none(
        "DELETE FROM pipeweave_schema_migrations WHERE version = %s", [LATEST.version]
    )
    result = run("status", env=pipeweave_env)
    assert result.code == 4
    assert "Initialized: ✓ Yes\n" in result.stdout
    assert f"Pending migrations (1):\n  • {LATEST.label}\n" in result.stdout
    assert result.stdout.endswith("Run `pipeweave-db migrate` to apply the pending migrations.\n")
    payload = run("status", "--json", env=pipeweave_env).json()
    assert payload["state"] == "migrations_pending"
    assert payload["pending_migrations"] == [LATEST.label]
    assert payload["up_to_date"] is False


def test_status_with_a_changed_migration_exits_5(
    pipeweave_env: dict[str, str], pipeweave_database_committed: Database
) -> None:
    pipeweave_database_committed.none("UPDATE pipeweave_schema_migrations SET checksum = 'edited'")
    result = run("status", env=pipeweave_env)
    assert result.code == 5
    assert f"  • {LATEST.label}\n" in result.stdout
    assert "Changed migrations (applied, but their files differ)" in result.stdout
    payload = run("status", "--json", env=pipeweave_env).json()
    assert payload["changed_migrations"] == MIGRATION_LABELS


def test_status_json_when_up_to_date(
    pipeweave_env: dict[str, str], pipeweave_database_committed: Database
) -> None:
    pipeweave_database_committed.none("CREATE TABLE my_app_users (id int)")
    result = run("status", "--json", env=pipeweave_env)
    assert result.code == 0
    payload = result.json()
    applied = payload.pop("applied_migrations")
    assert payload == {
        "state": "up_to_date",
        "initialized": True,
        "up_to_date": True,
        "schema_version": LATEST.version,
        "tables": list(PIPEWEAVE_TABLES),
        "missing_tables": [],
        "missing_objects": [],
        "differing_tables": [],
        "other_tables": ["my_app_users"],
        "pending_migrations": [],
        "changed_migrations": [],
    }
    assert isinstance(applied, list)
    assert [(m["version"], m["name"]) for m in applied] == [
        (m.version, m.name) for m in load_migrations()
    ]


def test_status_does_not_count_other_tables(
    pipeweave_env: dict[str, str], pipeweave_database_committed: Database
) -> None:
    pipeweave_database_committed.none("CREATE TABLE my_app_users (id int)")
    result = run("status", env=pipeweave_env)
    assert result.code == 0
    assert "Tables (8):\n" in result.stdout
    assert "my_app_users" not in result.stdout
    assert "Other tables (not PipeWeave's): 1\n" in result.stdout


# -- reset ------------------------------------------------------------------------------------


def add_foreign_table(db: Database) -> None:
    db.none("CREATE TABLE my_app_notes (id int PRIMARY KEY, note text)")
    db.none("INSERT INTO my_app_notes VALUES (1, 'keep me')")


def test_reset_with_yes_empties_pipeweave_tables_only(
    pipeweave_env: dict[str, str],
    pipeweave_seed: SeedData,
    pipeweave_database_committed: Database,
) -> None:
    db = pipeweave_database_committed
    add_foreign_table(db)
    result = run("reset", "--yes", env=pipeweave_env)
    assert result.code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "⚠ WARNING: This will delete all data!"
    masked = DatabaseConfig(connection_string=pipeweave_env["DATABASE_URL"]).masked_url
    assert lines[1] == f"  Database: {masked}"
    assert (
        lines[-1] == f"✓ Database reset: 8 tables recreated empty (schema version {LATEST.version})"
    )
    assert all(count(db, table) == 0 for table in PIPEWEAVE_TABLES)
    assert db.many("SELECT * FROM my_app_notes") == [{"id": 1, "note": "keep me"}]
    assert schema_status(db).up_to_date


def test_reset_without_yes_and_without_a_terminal_refuses(
    pipeweave_env: dict[str, str],
    pipeweave_seed: SeedData,
    pipeweave_database_committed: Database,
) -> None:
    services = count(pipeweave_database_committed, "services")
    result = run("reset", env=pipeweave_env)
    assert result.code == 1
    assert result.stdout.startswith("⚠ WARNING: This will delete all data!\n")
    assert result.stderr.splitlines() == [
        "Error: refusing to reset without --yes",
        "Hint: Run `pipeweave-db reset --yes` to confirm (there is no terminal to ask)",
    ]
    assert count(pipeweave_database_committed, "services") == services > 0


def test_reset_json(
    pipeweave_env: dict[str, str],
    pipeweave_seed: SeedData,
    pipeweave_database_committed: Database,
) -> None:
    db = pipeweave_database_committed
    add_foreign_table(db)
    refused = run("reset", "--json", env=pipeweave_env)
    assert refused.code == 1
    assert refused.json()["error"]["kind"] == "refused"
    assert count(db, "services") > 0
    result = run("reset", "--yes", "--json", env=pipeweave_env)
    assert result.code == 0, result.output
    assert result.json() == {
        "dropped_tables": list(PIPEWEAVE_TABLES),
        "created_tables": list(PIPEWEAVE_TABLES),
        "schema_version": LATEST.version,
    }
    assert result.stderr.startswith("⚠ WARNING: This will delete all data!\n")
    assert all(count(db, table) == 0 for table in PIPEWEAVE_TABLES)
    assert db.many("SELECT * FROM my_app_notes") == [{"id": 1, "note": "keep me"}]


def run_with_terminal(args: Sequence[str], env: dict[str, str], answer: str) -> Run:
    """Run pipeweave-db with a terminal as stdin, typing ``answer`` at it."""
    assert PIPEWEAVE_DB is not None
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [PIPEWEAVE_DB, *args],
            env=env,
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
        )
        os.close(terminal)
        os.write(controller, answer.encode() + b"\n")
        stdout, stderr = process.communicate(timeout=120)
    finally:
        os.close(controller)
    return Run(process.returncode, stdout, stderr)


def test_reset_asks_on_a_terminal_and_stops_on_no(
    pipeweave_env: dict[str, str],
    pipeweave_seed: SeedData,
    pipeweave_database_committed: Database,
) -> None:
    services = count(pipeweave_database_committed, "services")
    result = run_with_terminal(["reset"], pipeweave_env, "n")
    assert result.code == 1
    assert "Drop all PipeWeave tables and their data? [y/N]" in result.stdout
    assert "Aborted" in result.stderr
    assert count(pipeweave_database_committed, "services") == services > 0


def test_reset_asks_on_a_terminal_and_resets_on_yes(
    pipeweave_env: dict[str, str],
    pipeweave_seed: SeedData,
    pipeweave_database_committed: Database,
) -> None:
    result = run_with_terminal(["reset"], pipeweave_env, "y")
    assert result.code == 0, result.output
    assert "✓ Database reset" in result.stdout
    assert count(pipeweave_database_committed, "services") == 0


def test_reset_refuses_when_another_table_depends_on_pipeweave(
    pipeweave_env: dict[str, str],
    pipeweave_seed: SeedData,
    pipeweave_database_committed: Database,
) -> None:
    db = pipeweave_database_committed
    db.none("CREATE TABLE my_app_links (service_id text REFERENCES services (id))")
    services = count(db, "services")
    result = run("reset", "--yes", env=pipeweave_env)
    assert result.code == 1
    assert result.stderr.startswith("Error: cannot reset: ")
    assert "my_app_links" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert count(db, "services") == services > 0


# -- cleanup ----------------------------------------------------------------------------------


def test_cleanup_prints_the_seeds_counts(
    pipeweave_env: dict[str, str],
    pipeweave_seed: SeedData,
    pipeweave_database_committed: Database,
) -> None:
    db = pipeweave_database_committed
    expected = pipeweave_seed.expected_cleanup
    result = run("cleanup", "--dlq-retention-days", "30", env=pipeweave_env)
    assert (result.code, result.stderr) == (0, "")
    assert result.stdout == (
        "✓ Cleanup complete\n"
        f"  • Expired cache entries deleted: {expected.expired_cache_deleted}\n"
        f"  • Old DLQ entries deleted: {expected.old_dlq_deleted}\n"
    )
    assert count(db, "idempotency_cache") == len(pipeweave_seed.cache_live)
    assert count(db, "dlq") == len(pipeweave_seed.dlq_recent)
    again = run("cleanup", "--json", env=pipeweave_env)
    assert again.json() == {
        "expired_cache_deleted": 0,
        "old_dlq_deleted": 0,
        "dlq_retention_days": 30,
    }


def test_cleanup_json_defaults_to_30_days(
    pipeweave_env: dict[str, str], pipeweave_seed: SeedData
) -> None:
    expected = pipeweave_seed.expected_cleanup
    result = run("cleanup", "--json", env=pipeweave_env)
    assert result.code == 0
    assert result.json() == {
        "expired_cache_deleted": expected.expired_cache_deleted,
        "old_dlq_deleted": expected.old_dlq_deleted,
        "dlq_retention_days": 30,
    }


def test_cleanup_with_zero_retention_empties_the_dlq(
    pipeweave_env: dict[str, str],
    pipeweave_seed: SeedData,
    pipeweave_database_committed: Database,
) -> None:
    result = run("cleanup", "--dlq-retention-days", "0", "--json", env=pipeweave_env)
    assert result.json()["old_dlq_deleted"] == len(pipeweave_seed.dlq_old) + len(
        pipeweave_seed.dlq_recent
    )
    assert count(pipeweave_database_committed, "dlq") == 0


@pytest.mark.parametrize("days", ["-1", "abc", "1.5", ""])
def test_cleanup_rejects_a_bad_retention(
    days: str,
    pipeweave_env: dict[str, str],
    pipeweave_seed: SeedData,
    pipeweave_database_committed: Database,
) -> None:
    result = run("cleanup", "--dlq-retention-days", days, env=pipeweave_env)
    assert result.code == 2
    assert "Invalid value for '--dlq-retention-days'" in result.stderr
    assert result.stdout == ""
    assert count(pipeweave_database_committed, "dlq") == len(pipeweave_seed.dlq_old) + len(
        pipeweave_seed.dlq_recent
    )


def test_cleanup_of_an_uninitialized_database_says_to_init(
    pipeweave_env: dict[str, str], pipeweave_database_committed: Database
) -> None:
    drop_schema(pipeweave_database_committed)
    result = run("cleanup", env=pipeweave_env)
    assert result.code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Error: the PipeWeave tables are missing in postgresql://")
    assert lines[1] == "Hint: Run `pipeweave-db init` first"
    payload = run("cleanup", "--json", env=pipeweave_env).json()
    assert payload["error"]["kind"] == "not_initialized"  # type: ignore[index]


# -- migrate ----------------------------------------------------------------------------------


def test_migrate_applies_and_prints_pending_migrations(
    pipeweave_env: dict[str, str], pipeweave_database_committed: Database
) -> None:
    db = pipeweave_database_committed
    db.none("DELETE FROM pipeweave_schema_migrations WHERE version = %s", [LATEST.version])
    result = run("migrate", env=pipeweave_env)
    assert (result.code, result.stderr) == (0, "")
    assert result.stdout == (
        f"Applied {LATEST.label}\n✓ Migrations complete (schema version {LATEST.version})\n"
    )
    assert schema_status(db).up_to_date
    assert run("migrate", env=pipeweave_env).stdout == (
        f"✓ Nothing to migrate: schema up to date (version {LATEST.version})\n"
    )


def test_migrate_json(
    pipeweave_env: dict[str, str], pipeweave_database_committed: Database
) -> None:
    drop_schema(pipeweave_database_committed)
    result = run("migrate", "--json", env=pipeweave_env)
    assert result.code == 0
    assert result.json() == {
        "applied_migrations": MIGRATION_LABELS,
        "schema_version": LATEST.version,
    }
    assert schema_status(pipeweave_database_committed).up_to_date
    again = run("migrate", "--json", env=pipeweave_env).json()
    assert again == {"applied_migrations": [], "schema_version": LATEST.version}


def test_migrate_refuses_a_changed_migration(
    pipeweave_env: dict[str, str], pipeweave_database_committed: Database
) -> None:
    pipeweave_database_committed.none("UPDATE pipeweave_schema_migrations SET checksum = 'edited'")
    result = run("migrate", env=pipeweave_env)
    assert result.code == 1
    assert result.stderr.startswith(f"Error: applied migration(s) {LATEST.label} no longer match")
    payload = run("migrate", "--json", env=pipeweave_env).json()
    assert payload["error"]["kind"] == "migration_error"  # type: ignore[index]
    assert payload["applied_migrations"] == []


# -- output without Unicode -------------------------------------------------------------------


def test_ascii_stdout_gets_ascii_marks(
    pipeweave_env: dict[str, str],
    pipeweave_seed: SeedData,
    pipeweave_database_committed: Database,
) -> None:
    env = {**pipeweave_env, "PYTHONIOENCODING": "ascii"}
    outputs = {command: run(command, env=env) for command in ("status", "cleanup")}
    outputs["reset"] = run("reset", "--yes", env=env)
    drop_schema(pipeweave_database_committed)
    outputs["missing"] = run("status", env=env)
    outputs["init"] = run("init", env=env)
    for result in outputs.values():
        assert result.stdout.isascii(), result.stdout
    assert "Initialized: + Yes\nTables (8):\n" + bullets(*PIPEWEAVE_TABLES, bullet="-") in (
        outputs["status"].stdout
    )
    assert outputs["cleanup"].stdout.startswith("+ Cleanup complete\n  - Expired cache")
    assert outputs["reset"].stdout.startswith("! WARNING: This will delete all data!\n")
    assert "Initialized: x No\n" in outputs["missing"].stdout
    assert outputs["missing"].code == 3
    assert outputs["init"].stdout.startswith("+ Database initialized")


# -- troubleshooting: the seed's cases ---------------------------------------------------------


def refused_url() -> str:
    """A URL with a password, to a port on 127.0.0.1 where nothing listens."""
    return f"postgresql://postgres:{REFUSED_PASSWORD}@127.0.0.1:{free_port()}/pipeweave"


@pytest.mark.parametrize("command", COMMANDS)
def test_connection_refused(command: str) -> None:
    url = refused_url()
    port = conninfo_to_dict(url)["port"]
    args = [command, "--url", url, *COMMAND_ARGS.get(command, [])]
    result = run(*args, env=clean_env(), secrets=[REFUSED_PASSWORD])
    assert result.code == 1
    assert result.stdout == ""
    error, hint = result.stderr.splitlines()
    assert (
        error
        == f'Error: connection to server at "127.0.0.1", port {port} failed: Connection refused'
    )
    assert hint.startswith(REFUSED_HINT)
    assert "brew services start postgresql" in hint
    assert "docker run -d -p 5432:5432 -e POSTGRES_PASSWORD=postgres postgres:15" in hint


@pytest.mark.parametrize("command", JSON_COMMANDS)
def test_connection_refused_json(command: str) -> None:
    result = run(
        command, "--json", "--url", refused_url(), env=clean_env(), secrets=[REFUSED_PASSWORD]
    )
    assert result.code == 1
    error = result.json()["error"]
    assert isinstance(error, dict)
    assert error["kind"] == "connection_refused"
    assert "Connection refused" in error["message"]
    assert "brew services start postgresql" in error["hint"]
    assert result.stderr.startswith("Error: connection to server at")


def test_connection_refused_from_individual_variables() -> None:
    env = clean_env(DB_HOST="127.0.0.1", DB_PORT=str(free_port()), DB_NAME="pipeweave")
    env.update(DB_USER="postgres", DB_PASS=REFUSED_PASSWORD)
    result = run("status", env=env, secrets=[REFUSED_PASSWORD])
    assert result.code == 1
    assert "Connection refused" in result.stderr.splitlines()[0]
    assert result.stderr.splitlines()[1].startswith(REFUSED_HINT)


def test_missing_database(pipeweave_server: ServerInfo) -> None:
    name = f"pipeweave_cli_missing_{uuid.uuid4().hex[:8]}"
    for url in (pipeweave_server.tcp_url(name), pipeweave_server.url(name)):
        result = run("init", "--url", url, env=clean_env())
        assert result.code == 1
        error, hint = result.stderr.splitlines()
        assert error.startswith("Error: connection to server ")
        assert error.endswith(f'failed: FATAL: database "{name}" does not exist')
        assert hint == (
            f"Hint: Create the database first: `createdb {name}`, or with Docker "
            f'`docker exec -it <container> psql -U postgres -c "CREATE DATABASE {name};"`'
        )


@pytest.fixture(scope="module")
def password_server() -> Iterator[ServerInfo]:
    """A server of our own: trust on its unix socket, scram-sha-256 over TCP for ``postgres``
    only, and no pg_hba.conf entry at all for any other user over TCP (as a server that
    accepts only SSL connections answers a plain one)."""
    bin_dir = find_pg_bin(os.environ.get("PIPEWEAVE_PG_BIN"))
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries to start a server with password authentication")
    server = LocalServer(
        bin_dir,
        base_dir() / f"cli-password-{uuid.uuid4().hex[:12]}",
        cache_dir=base_dir() / "cache",
        hba="local all all trust\nhost all postgres 127.0.0.1/32 scram-sha-256\n",
        password=SCRAM_PASSWORD,
    )
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def password_database(password_server: ServerInfo) -> Iterator[str]:
    """An empty database on the password server, dropped after the test."""
    name = f"cli_pw_{uuid.uuid4().hex[:10]}"
    admin_url = password_server.url()  # its unix socket, where trust applies
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def password_url(
    server: ServerInfo, database: str, password: str | None, user: str = "postgres"
) -> str:
    secret = f":{password}" if password is not None else ""
    return f"postgresql://{user}{secret}@127.0.0.1:{server.port}/{database}"


def test_right_password_in_every_form(password_server: ServerInfo, password_database: str) -> None:
    port = str(password_server.port)
    flags = ["--host", "127.0.0.1", "--port", port, "--database", password_database]
    flags += ["--user", "postgres"]
    secrets = [SCRAM_PASSWORD]
    url = password_url(password_server, password_database, SCRAM_PASSWORD)
    result = run("init", "--url", url, env=clean_env(), secrets=secrets)
    assert result.code == 0, result.output
    result = run("status", *flags, "--password", SCRAM_PASSWORD, env=clean_env(), secrets=secrets)
    assert result.code == 0, result.output
    result = run("status", *flags, env=clean_env(DB_PASS=SCRAM_PASSWORD), secrets=secrets)
    assert result.code == 0, result.output
    env = clean_env(DB_HOST="127.0.0.1", DB_PORT=port, DB_NAME=password_database)
    env.update(DB_USER="postgres", DB_PASSWORD=SCRAM_PASSWORD)
    result = run("reset", "--yes", env=env, secrets=secrets)
    assert result.code == 0, result.output
    assert "postgresql://postgres:***@127.0.0.1:" in result.stdout


@pytest.mark.parametrize("form", ["url", "flags", "env"])
def test_wrong_password(form: str, password_server: ServerInfo, password_database: str) -> None:
    wrong = "wrong-secret-3c9e"
    port = str(password_server.port)
    env = clean_env()
    if form == "url":
        args = ["--url", password_url(password_server, password_database, wrong)]
    elif form == "flags":
        args = ["--host", "127.0.0.1", "--port", port, "--database", password_database]
        args += ["--user", "postgres", "--password", wrong]
    else:
        args = []
        env.update(DB_HOST="127.0.0.1", DB_PORT=port, DB_NAME=password_database)
        env.update(DB_USER="postgres", DB_PASS=wrong)
    result = run("status", *args, env=env, secrets=[wrong, SCRAM_PASSWORD])
    assert result.code == 1
    error, hint = result.stderr.splitlines()
    assert error == (
        f'Error: connection to server at "127.0.0.1", port {port} failed: '
        'FATAL: password authentication failed for user "postgres"'
    )
    assert hint == "Hint: Check username and password in your connection config"


def test_missing_password(password_server: ServerInfo, password_database: str) -> None:
    url = password_url(password_server, password_database, None)
    result = run("status", "--url", url, env=clean_env(), secrets=[SCRAM_PASSWORD])
    assert result.code == 1
    assert result.stderr.splitlines()[0].endswith("failed: fe_sendauth: no password supplied")
    assert result.stderr.splitlines()[1].startswith("Hint: The server asks for a password")


def test_no_pg_hba_entry_says_to_enable_ssl(password_server: ServerInfo) -> None:
    url = password_url(password_server, "pipeweave", "app-secret-5a0d", user="app")
    result = run("status", "--url", url, env=clean_env(), secrets=["app-secret-5a0d"])
    assert result.code == 1
    error, hint = result.stderr.splitlines()
    assert error.endswith(
        'failed: FATAL: no pg_hba.conf entry for host "127.0.0.1", user "app", '
        'database "pipeweave", no encryption'
    )
    assert hint.startswith("Hint: Enable SSL in your connection config: --ssl, DB_SSL=true")
    assert "?sslmode=require" in hint


def test_ssl_option_asks_for_ssl(password_server: ServerInfo, password_database: str) -> None:
    """The test server has no SSL: --ssl must make the client insist on it, and fail."""
    url = password_url(password_server, password_database, SCRAM_PASSWORD)
    result = run("status", "--url", url, "--ssl", env=clean_env(), secrets=[SCRAM_PASSWORD])
    assert result.code == 1
    error, hint = result.stderr.splitlines()
    assert error.endswith("failed: server does not support SSL, but SSL was required")
    assert hint.startswith("Hint: The server does not accept SSL")


# -- configuration errors ---------------------------------------------------------------------


def test_nothing_configured() -> None:
    result = run("status", env=clean_env())
    assert result.code == 1
    error, hint = result.stderr.splitlines()
    assert error.startswith("Error: no database configured")
    assert hint.startswith("Hint: Give --url, or --host, --database and --user")


def test_bad_database_url_in_the_environment() -> None:
    env = clean_env(DATABASE_URL="mysql://user:cfg-secret-1@127.0.0.1/db")
    result = run("status", "--json", env=env, secrets=["cfg-secret-1"])
    assert result.code == 1
    assert result.stderr == (
        "Error: DATABASE_URL has an unknown scheme 'mysql': expected postgres:// or postgresql://\n"
    )
    assert result.json()["error"] == {
        "kind": "config_error",
        "message": "DATABASE_URL has an unknown scheme 'mysql': expected postgres:// or "
        "postgresql://",
        "hint": "",
    }


def test_bad_db_port_in_the_environment() -> None:
    env = clean_env(DB_HOST="127.0.0.1", DB_PORT="fifty", DB_NAME="db", DB_USER="u")
    result = run("status", env=env)
    assert result.code == 1
    assert result.stderr == "Error: DB_PORT must be a whole number from 1 to 65535, got 'fifty'\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "mysql://u:opt-secret-2@127.0.0.1/db"], "Invalid value for '--url'"),
        (["--url", "postgres://u:opt-secret-2@127.0.0.1:99999/db"], "has an invalid port"),
        (["--url", "not a url"], "it is not a URL"),
        (["--port", "0"], "Invalid value for '--port'"),
        (["--port", "fifty"], "Invalid value for '--port'"),
        (["--host", "127.0.0.1"], "missing --database, --user"),
        (["--database", "db", "--password", "opt-secret-2"], "missing --host, --user"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    result = run("status", *args, env=clean_env(), secrets=["opt-secret-2"])
    assert result.code == 2
    assert message in result.stderr
    assert result.stdout == ""


# -- pipeweave-test-db ------------------------------------------------------------------------


def test_db_with_nothing_configured_exits_2() -> None:
    result = run_test_db(env=clean_env())
    assert result.code == 2
    assert result.stdout == (
        "=== Connection string (DATABASE_URL) ===\n"
        "SKIP  not configured\n"
        "\n"
        "=== Individual credentials (DB_HOST, DB_NAME, DB_USER) ===\n"
        "SKIP  not configured\n"
        "\n"
        "Result: 0 passed, 0 failed, 2 skipped\n"
    )


def test_db_passes_both_methods(
    pipeweave_server: ServerInfo, pipeweave_database_url: str, pipeweave_env: dict[str, str]
) -> None:
    _, env = connection_form("env-individual", pipeweave_server, pipeweave_database_url)
    env["DATABASE_URL"] = pipeweave_env["DATABASE_URL"]
    result = run_test_db(env=env)
    assert result.code == 0, result.output
    sections = result.stdout.split("\n\n")
    version = f"  Server version: PostgreSQL {pipeweave_server.version}"
    schema = f"  Schema initialized: yes (schema version {LATEST.version})"
    for section in sections[:2]:
        lines = section.splitlines()
        assert lines[1].startswith(f"PASS  postgresql://{pipeweave_server.user}")
        assert lines[2].startswith(version)
        assert lines[3] == schema
    assert sections[2] == "Result: 2 passed, 0 failed, 0 skipped\n"


def test_db_url_only_skips_individual_credentials(pipeweave_env: dict[str, str]) -> None:
    result = run_test_db(env=pipeweave_env)
    assert result.code == 0
    assert "=== Individual credentials (DB_HOST, DB_NAME, DB_USER) ===\nSKIP" in result.stdout
    assert "Result: 1 passed, 0 failed, 1 skipped" in result.stdout


def test_db_reports_an_uninitialized_schema(
    pipeweave_env: dict[str, str], pipeweave_database_committed: Database
) -> None:
    drop_schema(pipeweave_database_committed)
    result = run_test_db(env=pipeweave_env)
    assert result.code == 0
    assert "  Schema initialized: no (run `pipeweave-db init`)\n" in result.stdout


def test_db_one_failure_exits_1_and_masks_passwords(
    pipeweave_server: ServerInfo, pipeweave_database_url: str
) -> None:
    url = refused_url()
    _, env = connection_form("env-individual", pipeweave_server, pipeweave_database_url)
    env["DATABASE_URL"] = url
    result = run_test_db(env=env, secrets=[REFUSED_PASSWORD])
    assert result.code == 1
    failed = result.stdout.split("\n\n")[0].splitlines()
    port = conninfo_to_dict(url)["port"]
    assert failed[1] == f"FAIL  postgresql://postgres:***@127.0.0.1:{port}/pipeweave"
    assert failed[2].startswith("  Reason: connection to server at")
    assert failed[2].endswith("Connection refused")
    assert failed[3].startswith(f"  {REFUSED_HINT}")
    assert "Result: 1 passed, 1 failed, 0 skipped" in result.stdout


def test_db_with_password_authentication(
    password_server: ServerInfo, password_database: str
) -> None:
    wrong = "wrong-secret-91aa"
    env = clean_env(DATABASE_URL=password_url(password_server, password_database, SCRAM_PASSWORD))
    env.update(DB_HOST="127.0.0.1", DB_PORT=str(password_server.port), DB_NAME=password_database)
    env.update(DB_USER="postgres", DB_PASS=wrong)
    result = run_test_db(env=env, secrets=[SCRAM_PASSWORD, wrong])
    assert result.code == 1
    url_section, individual_section, _ = result.stdout.split("\n\n")
    assert url_section.splitlines()[1] == (
        f"PASS  postgresql://postgres:***@127.0.0.1:{password_server.port}/{password_database}"
    )
    assert "Schema initialized: no (run `pipeweave-db init`)" in url_section
    lines = individual_section.splitlines()
    assert lines[1].startswith("FAIL  postgresql://postgres:***@127.0.0.1:")
    assert lines[2].endswith('password authentication failed for user "postgres"')
    assert lines[3] == "  Hint: Check username and password in your connection config"


def test_db_json_for_ci_pipelines(
    pipeweave_server: ServerInfo, pipeweave_env: dict[str, str]
) -> None:
    env = clean_env(DATABASE_URL=pipeweave_env["DATABASE_URL"], DB_HOST="127.0.0.1")
    env.update(DB_PORT=str(free_port()), DB_NAME="pipeweave", DB_USER="u", DB_PASS="js-secret-7")
    result = run_test_db("--json", env=env, secrets=["js-secret-7"])
    assert (result.code, result.stderr) == (1, "")
    report = result.json()
    url, individual = report.pop("methods")
    assert report == {"passed": 1, "failed": 1, "skipped": 0}
    assert url["method"] == "connection_string"
    assert url["outcome"] == "PASS"
    assert url["server_version"].startswith(f"PostgreSQL {pipeweave_server.version}")
    assert (url["schema_initialized"], url["schema_version"]) == (True, LATEST.version)
    assert individual["method"] == "individual_credentials"
    assert individual["outcome"] == "FAIL"
    assert individual["target"].startswith("postgresql://u:***@127.0.0.1:")
    assert individual["reason"].endswith("Connection refused")
    assert individual["hint"].startswith("Ensure PostgreSQL is running")
    assert individual["schema_initialized"] is None

    nothing = run_test_db("--json", env=clean_env())
    assert nothing.code == 2
    assert [m["outcome"] for m in nothing.json()["methods"]] == ["SKIP", "SKIP"]


def test_db_reports_bad_configuration_as_failure() -> None:
    env = clean_env(DATABASE_URL="mysql://u:cfg-secret-9@127.0.0.1/db", DB_HOST="127.0.0.1")
    result = run_test_db(env=env, secrets=["cfg-secret-9"])
    assert result.code == 1
    url_section, individual_section, _ = result.stdout.split("\n\n")
    assert url_section.splitlines()[1:] == [
        "FAIL  (no valid configuration)",
        "  Reason: DATABASE_URL has an unknown scheme 'mysql': expected postgres:// or "
        "postgresql://",
    ]
    assert "Reason: no database configured" in individual_section
    assert "(missing: DB_NAME, DB_USER)" in individual_section
