"""The ``pipeweave-db`` and ``pipeweave-test-db`` command lines (the seed's "CLI Commands").

Expected failures end in one line and a hint on stderr, exit 1: never a traceback, never a
password. docs/cli.md describes the commands, their output and their exit codes.

    output.py   marks, lists, JSON, Failure          options.py  connection options
    db.py       pipeweave-db's commands               dev.py      pipeweave-db dev
    check.py    pipeweave-test-db
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeweave_db.cli.check import DbTestExitCode, check_connections
from pipeweave_db.cli.db import ExitCode, cli
from pipeweave_db.cli.dev import dev
from pipeweave_db.cli.output import tolerate_unencodable_output

__all__ = ["DbTestExitCode", "ExitCode", "check_connections", "cli", "main", "test_db_main"]

cli.add_command(dev)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``pipeweave-db`` console script."""
    tolerate_unencodable_output()
    cli.main(args=argv, prog_name="pipeweave-db")


def test_db_main(argv: Sequence[str] | None = None) -> None:
    """The ``pipeweave-test-db`` console script."""
    tolerate_unencodable_output()
    check_connections.main(args=argv, prog_name="pipeweave-test-db")


test_db_main.__test__ = False  # type: ignore[attr-defined]
