"""``pipeweave-test-db``: try each configuration method the environment sets, PASS or FAIL."""

from __future__ import annotations

import dataclasses
import enum
import os
from collections import Counter
from collections.abc import Mapping

import click
import psycopg

from pipeweave_db import __version__
from pipeweave_db.cli.options import CONTEXT_SETTINGS, INDIVIDUAL_VARIABLES, json_option
from pipeweave_db.cli.output import echo_json
from pipeweave_db.config import config_from_env
from pipeweave_db.database import Database
from pipeweave_db.errors import ConfigError, PipeweaveError
from pipeweave_db.schema import SchemaStatus, schema_status
from pipeweave_db.troubleshooting import diagnose


class DbTestExitCode(enum.IntEnum):
    """Exit codes of ``pipeweave-test-db`` (2 is also click's usage error)."""

    ALL_PASSED = 0
    SOME_FAILED = 1
    NOTHING_CONFIGURED = 2


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
            any(environ.get(name) for name in INDIVIDUAL_VARIABLES),
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
