"""Leaked commits: writes that code under test committed through a connection of its own while
a rollback-mode test ran, which no rollback removes and the next tests would see.

Every table of the template gets a statement-level trigger that sends a notice (NOTIFY) naming
the table. A notice is delivered only when its transaction commits, so the test's own writes,
rolled back, never send one; and a backend holds the notices it receives inside a transaction
until that transaction ends, then sends them before it says it is ready. So the notices of a
test are in hand right after its ROLLBACK, with no round trip of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from pipeweave_db import Database

CHANNEL = "pytest_pipeweave_write"  # as in _INSTALL, with the schema pytest_pipeweave_notices
LISTEN = b"LISTEN pytest_pipeweave_write"
# Part of a reusable template's key: a template built before the triggers existed is rebuilt.
TEMPLATE_ADDITIONS = "write notices 1"

_INSTALL = """
CREATE SCHEMA IF NOT EXISTS pytest_pipeweave_notices;
CREATE OR REPLACE FUNCTION pytest_pipeweave_notices.notify_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pytest_pipeweave_write', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END
$$;
DO $$
DECLARE t regclass;
BEGIN
    FOR t IN
        SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
          AND n.nspname !~ '^pg_(toast_)?temp_'
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS pytest_pipeweave_write ON %s', t);
        EXECUTE format(
            'CREATE TRIGGER pytest_pipeweave_write'
            ' AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s FOR EACH STATEMENT'
            ' EXECUTE FUNCTION pytest_pipeweave_notices.notify_write()', t);
    END LOOP;
END
$$;
"""


class LeakedCommitWarning(UserWarning):
    """A rollback-mode test's code committed writes through a connection of its own."""


def install_write_notices(db: Database) -> None:
    """The triggers on every table there is now (the schema and the template setup's)."""
    db.none(_INSTALL)


def listen(conn: psycopg.Connection[Any], tables: set[str]) -> None:
    """Collect into ``tables`` the tables named by the notices ``conn`` receives."""
    conn.execute(LISTEN)
    conn.add_notify_handler(collector(tables))


def collector(tables: set[str]) -> Callable[[psycopg.Notify], None]:
    """A notify handler adding the table a notice names to ``tables`` (sync or async)."""
    return lambda notice: tables.add(notice.payload)


def received(pgconn: psycopg.pq.abc.PGconn, tables: set[str]) -> set[str]:
    """``tables`` with the notices libpq read but psycopg has not handed out yet."""
    while (notice := pgconn.notifies()) is not None:
        if notice.relname.decode() == CHANNEL:
            tables.add(notice.extra.decode())
    return tables


def leak_message(tables: set[str], who: str) -> str:
    return (
        f"{who} committed writes to {', '.join(sorted(tables))} through a connection of its own "
        "(not the test's transaction), so no rollback removes them and later tests see them; "
        "use committed mode (pipeweave_database_committed, pipeweave_env or "
        "@pytest.mark.pipeweave(committed=True)) for code that opens its own connections"
    )
