"""The connection options every command but ``dev`` takes, and the Database they lead to.

The options are laid over the environment's variables (``--url`` as ``DATABASE_URL``, ``--host``
as ``DB_HOST``...) and the result is read by ``config_from_env``, so that the command line and
the orchestrator follow the same rules.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import click
import psycopg

from pipeweave_db.cli.output import Failure
from pipeweave_db.config import DatabaseConfig, config_from_env, parse_url
from pipeweave_db.database import Database
from pipeweave_db.errors import ConfigError, PipeweaveError
from pipeweave_db.troubleshooting import Diagnosis, diagnose

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}
CONFIG_HINT = (
    "Give --url, or --host, --database and --user, or set DATABASE_URL, or DB_HOST, DB_NAME "
    "and DB_USER (see --help)"
)


# Each individual option, and the variable of config_from_env's rules that it stands for.
_VARIABLE_OF_OPTION = {
    "host": "DB_HOST",
    "port": "DB_PORT",
    "database": "DB_NAME",
    "user": "DB_USER",
    "password": "DB_PASS",
}
# The variables of the individual form that name a database (DB_PORT, DB_PASS alone do not).
INDIVIDUAL_VARIABLES = ("DB_HOST", "DB_NAME", "DB_DATABASE", "DB_USER", "DB_USERNAME")
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
        return any(env.get(name) for name in ("DATABASE_URL", *INDIVIDUAL_VARIABLES))

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
