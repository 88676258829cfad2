"""The exceptions pipeweave_db raises, so that callers can catch them by class."""

from __future__ import annotations


class PipeweaveError(Exception):
    """Base class of every error raised by pipeweave_db itself."""


class ConfigError(PipeweaveError, ValueError):
    """The connection settings are missing or invalid.

    The message names the setting (``DB_PORT``, ``DATABASE_URL``, ``port``...) and the
    offending value, never a password.
    """


class QueryResultError(PipeweaveError):
    """A query returned a number of rows its helper does not allow (pg-promise's rules)."""

    def __init__(self, expected: str, received: int, query: str) -> None:
        self.expected = expected
        self.received = received
        self.query = query
        rows = "row" if received == 1 else "rows"
        super().__init__(f"expected {expected}, got {received} {rows}: {_shorten(query)}")


class MigrationError(PipeweaveError):
    """A migration failed, or one already applied no longer matches its file."""


class SchemaError(PipeweaveError):
    """The schema cannot be changed as asked without touching objects that are not PipeWeave's."""


def _shorten(query: str, limit: int = 120) -> str:
    flat = " ".join(query.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
