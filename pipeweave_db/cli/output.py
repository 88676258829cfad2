"""What the command lines print: the seed's marks, lists, JSON, and expected failures."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

import click

from pipeweave_db.troubleshooting import Diagnosis


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

    exit_code = 1  # ExitCode.FAILED of pipeweave-db

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


def tolerate_unencodable_output() -> None:
    """Escape what stdout or stderr cannot encode (a database name, say) instead of crashing."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
