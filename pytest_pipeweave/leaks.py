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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported without psycopg: its TEMPLATE_ADDITIONS are part of a cache key
    import psycopg

    from pipeweave_db import Database

CHANNEL = "pytest_pipeweave_write"  # as in _INSTALL, with the schema pytest_pipeweave_notices
LISTEN = b"LISTEN pytest_pipeweave_write"
# The payload of the notice of a schema change (DDL) committed, where a table's name would be.
SCHEMA_CHANGED = ""
# Part of a reusable template's key: a template built before the triggers were as they are now
# is rebuilt.
TEMPLATE_ADDITIONS = "write notices 2"

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
        -- Also under session_replication_role = replica, as bulk loads and the reset run.
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER pytest_pipeweave_write', t);
    END LOOP;
END
$$;
"""
# Event triggers need a superuser. Temporary objects are no change to the schema.
_INSTALL_SCHEMA_NOTICES = """
CREATE OR REPLACE FUNCTION pytest_pipeweave_notices.notify_schema_change() RETURNS event_trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_EVENT = 'sql_drop' THEN
        IF EXISTS (SELECT FROM pg_event_trigger_dropped_objects() WHERE NOT is_temporary) THEN
            PERFORM pg_notify('pytest_pipeweave_write', '');
        END IF;
    ELSIF EXISTS (
        SELECT FROM pg_event_trigger_ddl_commands() WHERE schema_name IS DISTINCT FROM 'pg_temp'
    ) THEN
        PERFORM pg_notify('pytest_pipeweave_write', '');
    END IF;
END
$$;
DROP EVENT TRIGGER IF EXISTS pytest_pipeweave_schema_end;
DROP EVENT TRIGGER IF EXISTS pytest_pipeweave_schema_drop;
CREATE EVENT TRIGGER pytest_pipeweave_schema_end ON ddl_command_end
    EXECUTE FUNCTION pytest_pipeweave_notices.notify_schema_change();
CREATE EVENT TRIGGER pytest_pipeweave_schema_drop ON sql_drop
    EXECUTE FUNCTION pytest_pipeweave_notices.notify_schema_change();
ALTER EVENT TRIGGER pytest_pipeweave_schema_end ENABLE ALWAYS;
ALTER EVENT TRIGGER pytest_pipeweave_schema_drop ENABLE ALWAYS;
"""
SCHEMA_NOTICE_TRIGGERS = ("pytest_pipeweave_schema_end", "pytest_pipeweave_schema_drop")


class LeakedCommitWarning(UserWarning):
    """A rollback-mode test's code committed writes through a connection of its own."""


def install_write_notices(db: Database) -> None:
    """The triggers on every table there is now (the schema and the template setup's), and
    where the role may, the event triggers that tell of schema changes."""
    db.none(_INSTALL)
    if db.one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")["rolsuper"]:
        db.none(_INSTALL_SCHEMA_NOTICES)


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
    changes = []
    if tables - {SCHEMA_CHANGED}:
        changes.append(f"writes to {', '.join(sorted(tables - {SCHEMA_CHANGED}))}")
    if SCHEMA_CHANGED in tables:
        changes.append("changes to the schema")
    return (
        f"{who} committed {' and '.join(changes)} through a connection of its own "
        "(not the test's transaction), so no rollback removes them and later tests see them; "
        "use committed mode (pipeweave_database_committed, pipeweave_env or "
        "@pytest.mark.pipeweave(committed=True)) for code that opens its own connections"
    )
