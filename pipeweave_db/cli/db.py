"""``pipeweave-db``: init, status, reset, cleanup and migrate (the seed's "CLI Commands")."""

from __future__ import annotations

import dataclasses
import enum
import sys

import click
import psycopg

from pipeweave_db import __version__
from pipeweave_db.cli.options import (
    CONTEXT_SETTINGS,
    ConnectionOptions,
    connect,
    connection_options,
    json_option,
    where,
)
from pipeweave_db.cli.output import Failure, echo_json, echo_list, symbols
from pipeweave_db.errors import PipeweaveError
from pipeweave_db.maintenance import DEFAULT_DLQ_RETENTION_DAYS, cleanup
from pipeweave_db.schema import (
    PIPEWEAVE_TABLES,
    SchemaStatus,
    initialize_schema,
    is_database_initialized,
    load_migrations,
    migrate,
    reset_schema,
    schema_status,
)
from pipeweave_db.troubleshooting import Diagnosis, diagnose


class ExitCode(enum.IntEnum):
    """Exit codes of ``pipeweave-db``; ``status`` uses 3 to 6 to tell a pipeline what is wrong."""

    OK = 0
    FAILED = 1
    USAGE = 2  # click's own, for unknown options and bad values
    NOT_INITIALIZED = 3
    MIGRATIONS_PENDING = 4
    MIGRATIONS_CHANGED = 5
    SCHEMA_DIFFERS = 6


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="pipeweave-db")
def cli() -> None:
    """Create, inspect, migrate and clean PipeWeave's PostgreSQL database.

    Every command but dev connects to the database given by --url, else by --host,
    --database and --user (with --port and --password), else by the environment:
    DATABASE_URL, else DB_HOST, DB_NAME, DB_USER (DB_PORT, DB_PASS, DB_SSL...).
    """


@cli.command()
@connection_options
@json_option
def init(connection: ConnectionOptions, as_json: bool) -> None:
    """Create the PipeWeave tables (safe to run again).

    Only what is missing is created, in one transaction, so running init on an initialized
    database, or from several CI jobs at once, changes nothing. A table, index, trigger or
    function of an applied migration that was dropped is created again; rows are never
    touched.
    """
    with connect(connection, as_json=as_json) as db:
        result = initialize_schema(db)
        version = schema_status(db).version
    if as_json:
        echo_json(
            {
                "changed": result.changed_anything,
                "created_tables": list(result.created_tables),
                "repaired_objects": list(result.repaired),
                "applied_migrations": [m.label for m in result.applied],
                "schema_version": version,
            }
        )
        return
    check = symbols().check
    if not result.changed_anything:
        click.echo(f"{check} Database already initialized (schema version {version})")
        return
    click.echo(f"{check} Database initialized (schema version {version})")
    if result.created_tables:
        echo_list("Created tables", result.created_tables)
    else:
        click.echo(f"Created tables: none, all {len(PIPEWEAVE_TABLES)} were there already")
    if result.repaired:
        echo_list("Created again", result.repaired)
    if result.applied:
        echo_list("Applied migrations", [m.label for m in result.applied])


_STATE_NAMES = {
    ExitCode.OK: "up_to_date",
    ExitCode.NOT_INITIALIZED: "not_initialized",
    ExitCode.MIGRATIONS_PENDING: "migrations_pending",
    ExitCode.MIGRATIONS_CHANGED: "migrations_changed",
    ExitCode.SCHEMA_DIFFERS: "schema_differs",
}


def status_exit_code(current: SchemaStatus) -> ExitCode:
    """What ``status`` exits with: the problem that blocks the most comes first.

    A changed migration makes init and migrate refuse, so it outranks missing tables; so does a
    table with another shape, which init cannot repair.
    """
    if current.changed:
        return ExitCode.MIGRATIONS_CHANGED
    if not current.repairable:
        return ExitCode.SCHEMA_DIFFERS
    if not current.initialized or current.missing_objects:
        return ExitCode.NOT_INITIALIZED
    if current.pending:
        return ExitCode.MIGRATIONS_PENDING
    return ExitCode.OK


@cli.command()
@connection_options
@json_option
@click.pass_context
def status(ctx: click.Context, connection: ConnectionOptions, as_json: bool) -> None:
    """Show the schema's state; the exit code says if it is up to date.

    Lists the PipeWeave tables (other tables are not counted), the schema version and the
    pending migrations.

    \b
    Exit codes:
      0  initialized and up to date
      1  could not check (connection or configuration error)
      3  objects are missing that init creates (tables, indexes, triggers): run init
      4  migrations pending (run migrate)
      5  an applied migration no longer matches its file
      6  a PipeWeave table has another shape (columns missing): init cannot repair it
    """
    with connect(connection, as_json=as_json) as db:
        current = schema_status(db)
    code = status_exit_code(current)
    if as_json:
        echo_json(
            {
                "state": _STATE_NAMES[code],
                "initialized": current.initialized,
                "up_to_date": current.up_to_date,
                "schema_version": current.version,
                "tables": list(current.tables),
                "missing_tables": list(current.missing_tables),
                "missing_objects": list(current.missing_objects),
                "differing_tables": list(current.differing_tables),
                "other_tables": list(current.other_tables),
                "applied_migrations": [
                    {
                        "version": m.version,
                        "name": m.name,
                        "applied_at": m.applied_at.isoformat(),
                    }
                    for m in current.applied
                ],
                "pending_migrations": [m.label for m in current.pending],
                "changed_migrations": [m.label for m in current.changed],
            }
        )
    else:
        echo_status(current, code)
    ctx.exit(code)


def echo_status(current: SchemaStatus, code: ExitCode) -> None:
    """The seed's "=== Database Status ===" block, then version, migrations and next step."""
    marks = symbols()
    click.echo("=== Database Status ===")
    click.echo()
    answer = f"{marks.check} Yes" if current.initialized else f"{marks.cross} No"
    click.echo(f"Initialized: {answer}")
    echo_list("Tables", current.tables)
    if current.missing_tables:
        echo_list("Missing tables", current.missing_tables)
    if current.missing_objects:
        echo_list("Missing indexes, triggers and functions", current.missing_objects)
    if current.differing_tables:
        echo_list("Tables with another shape", current.differing_tables)
    if current.other_tables:
        click.echo(f"Other tables (not PipeWeave's): {len(current.other_tables)}")
    version = current.version if current.version is not None else "none"
    click.echo(f"Schema version: {version}")
    if current.pending:
        echo_list("Pending migrations", [m.label for m in current.pending])
    else:
        click.echo("Pending migrations: none")
    if current.changed:
        echo_list(
            "Changed migrations (applied, but their files differ)",
            [m.label for m in current.changed],
        )
    missing = "tables" if current.missing_tables else "indexes, triggers and functions"
    next_step = {
        ExitCode.NOT_INITIALIZED: f"Run `pipeweave-db init` to create the missing {missing}.",
        ExitCode.SCHEMA_DIFFERS: (
            "`pipeweave-db init` cannot repair a table with missing columns: restore them by "
            "hand, or run `pipeweave-db reset` (it deletes every PipeWeave row)."
        ),
        ExitCode.MIGRATIONS_PENDING: "Run `pipeweave-db migrate` to apply the pending migrations.",
        ExitCode.MIGRATIONS_CHANGED: (
            "Restore the changed migration files, or repair the database by hand."
        ),
    }.get(code)
    if next_step:
        click.echo()
        click.echo(next_step)


@cli.command()
@connection_options
@click.option("--yes", "-y", is_flag=True, help="Reset without asking (needed without a terminal).")
@json_option
def reset(connection: ConnectionOptions, yes: bool, as_json: bool) -> None:
    """Drop the PipeWeave tables and recreate them empty (DESTRUCTIVE).

    Only PipeWeave's tables, functions and migration records are dropped: other tables in
    the database are never touched. Without --yes it asks on a terminal, and refuses
    (exit 1) when there is none. With --json the warning and the question go to stderr.
    """
    marks = symbols()
    with connect(connection, as_json=as_json) as db:
        present = schema_status(db).tables  # proves the connection before anyone is asked
        click.echo(f"{marks.warning} WARNING: This will delete all data!", err=as_json)
        click.echo(f"  Database: {where(db)}", err=as_json)
        click.echo(
            f"  Drops and recreates the PipeWeave tables ({len(present)} present); "
            "other tables are kept.",
            err=as_json,
        )
        if not yes:
            if sys.stdin is None or not sys.stdin.isatty():
                raise Failure(
                    Diagnosis(
                        "refused",
                        "refusing to reset without --yes",
                        "Run `pipeweave-db reset --yes` to confirm (there is no terminal to ask)",
                    ),
                    as_json=as_json,
                )
            click.confirm("Drop all PipeWeave tables and their data?", abort=True, err=as_json)
        result = reset_schema(db)
        version = schema_status(db).version
    if as_json:
        echo_json(
            {
                "dropped_tables": list(present),
                "created_tables": list(result.created_tables),
                "schema_version": version,
            }
        )
        return
    click.echo(
        f"{marks.check} Database reset: {len(result.created_tables)} tables recreated empty "
        f"(schema version {version})"
    )


@cli.command("cleanup")
@connection_options
@click.option(
    "--dlq-retention-days",
    type=click.IntRange(min=0),
    default=DEFAULT_DLQ_RETENTION_DAYS,
    show_default=True,
    metavar="DAYS",
    help="Delete dead-letter entries that failed more than DAYS days ago.",
)
@json_option
def cleanup_command(connection: ConnectionOptions, dlq_retention_days: int, as_json: bool) -> None:
    """Delete expired cache entries and old dead-letter (DLQ) entries.

    Rows go in short batches, each committed on its own, so that a large cleanup never holds
    locks for long; an interrupted cleanup is finished by the next run.
    """
    with connect(connection, as_json=as_json) as db:
        if not is_database_initialized(db):
            raise Failure(
                Diagnosis(
                    "not_initialized",
                    f"the PipeWeave tables are missing in {where(db)}",
                    "Run `pipeweave-db init` first",
                ),
                as_json=as_json,
            )
        result = cleanup(db, dlq_retention_days)
    if as_json:
        echo_json({**dataclasses.asdict(result), "dlq_retention_days": dlq_retention_days})
        return
    marks = symbols()
    click.echo(f"{marks.check} Cleanup complete")
    click.echo(f"  {marks.bullet} Expired cache entries deleted: {result.expired_cache_deleted}")
    click.echo(f"  {marks.bullet} Old DLQ entries deleted: {result.old_dlq_deleted}")


@cli.command("migrate")
@connection_options
@json_option
def migrate_command(connection: ConnectionOptions, as_json: bool) -> None:
    """Apply pending migrations, printing each one.

    Each migration runs in its own transaction; on a failure the ones before it stay applied
    and the command exits 1.
    """
    shipped = load_migrations()
    ran: list[str] = []
    with connect(connection, as_json=as_json) as db:
        try:
            current = schema_status(db, shipped)
            # One call per pending migration (those before it are applied already), so that
            # each is reported as soon as it is committed, even if a later one fails. With a
            # changed migration, one call over all of them refuses before running anything.
            batches = [shipped] if current.changed else []
            batches += [shipped[: shipped.index(m) + 1] for m in current.pending]
            for batch in batches:
                for done in migrate(db, batch):
                    ran.append(done.label)
                    if not as_json:
                        click.echo(f"Applied {done.label}")
            version = schema_status(db, shipped).version
        except (psycopg.Error, PipeweaveError) as exc:
            raise Failure(
                diagnose(exc), as_json=as_json, details={"applied_migrations": ran}
            ) from None
    if as_json:
        echo_json({"applied_migrations": ran, "schema_version": version})
        return
    check = symbols().check
    if ran:
        click.echo(f"{check} Migrations complete (schema version {version})")
    else:
        click.echo(f"{check} Nothing to migrate: schema up to date (version {version})")
