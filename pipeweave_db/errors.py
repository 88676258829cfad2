"""The exceptions pipeweave_db raises, so that callers can catch them by class.

Each class has a ``kind``: a stable name for programs (the command line's ``--json`` output
carries it), which does not change when a class is renamed or moved.
"""

from __future__ import annotations


class PipeweaveError(Exception):
    """Base class of every error raised by pipeweave_db (and by the test plugin's own errors)."""

    kind = "pipeweave_error"


class ConfigError(PipeweaveError, ValueError):
    """The connection settings are missing or invalid.

    The message names the setting (``DB_PORT``, ``DATABASE_URL``, ``port``...) and the
    offending value, never a password.
    """

    kind = "config_error"


class ArgumentError(PipeweaveError, ValueError):
    """An argument of a pipeweave_db call is out of range; the message names it and its value."""

    kind = "invalid_argument"


def require_whole_number(value: object, name: str, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``, else an ArgumentError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArgumentError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


class QueryResultError(PipeweaveError):
    """A query returned a number of rows its helper does not allow (pg-promise's rules)."""

    kind = "query_result_error"

    def __init__(self, expected: str, received: int, query: str) -> None:
        self.expected = expected
        self.received = received
        self.query = query
        rows = "row" if received == 1 else "rows"
        super().__init__(f"expected {expected}, got {received} {rows}: {_shorten(query)}")


class MigrationError(PipeweaveError):
    """A migration failed, or one already applied no longer matches its file."""

    kind = "migration_error"


class SchemaError(PipeweaveError):
    """The schema cannot be changed as asked without touching objects that are not PipeWeave's."""

    kind = "schema_error"


def _shorten(query: str, limit: int = 120) -> str:
    flat = " ".join(query.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
