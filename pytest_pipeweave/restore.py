"""Committed mode's reset: put a database back as it was when captured, in about a millisecond.

A committed test writes a few rows. Deleting them costs microseconds a table, where TRUNCATE
costs milliseconds a table (it swaps files) and a fresh clone tens of milliseconds. So the reset
deletes every row, puts back the rows the template had (kept in a side schema), and rewinds
sequences. A test that changed the schema (DDL) shows in a catalog fingerprint; then, or when
the reset fails, the caller re-clones instead.

``copy_data`` moves the same rows the other way: what a failed test saw, into a database kept
for looking at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

SNAPSHOT_SCHEMA = "pytest_pipeweave_snapshot"

# Every query below looks at the user's schemas only: not the system's, not temporary ones.
_FINGERPRINT = """
WITH ns AS (
    SELECT oid FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
      AND nspname !~ '^pg_(toast_)?temp_'
), rel AS (
    SELECT c.oid, c.relname, c.relkind FROM pg_class c WHERE c.relnamespace IN (SELECT oid FROM ns)
)
SELECT md5(string_agg(item, ',' ORDER BY item)) FROM (
    SELECT concat_ws(':', 'n', oid) FROM ns
    UNION ALL
    SELECT concat_ws(':', 'c', oid, relname, relkind) FROM rel
    UNION ALL
    SELECT concat_ws(':', 'a', attrelid, attname, atttypid, attnotnull, attisdropped)
    FROM pg_attribute WHERE attnum > 0 AND attrelid IN (SELECT oid FROM rel)
    UNION ALL
    SELECT concat_ws(':', 'd', oid) FROM pg_attrdef WHERE adrelid IN (SELECT oid FROM rel)
    UNION ALL
    SELECT concat_ws(':', 'k', oid) FROM pg_constraint WHERE connamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT concat_ws(':', 't', oid, tgenabled) FROM pg_trigger
    WHERE tgrelid IN (SELECT oid FROM rel)
    UNION ALL
    SELECT concat_ws(':', 'p', oid, md5(prosrc)) FROM pg_proc
    WHERE pronamespace IN (SELECT oid FROM ns)
) AS items(item)
"""
_TABLES = """
SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', %s)
  AND n.nspname !~ '^pg_(toast_)?temp_'
ORDER BY c.oid
"""
_COLUMNS = """
SELECT attname FROM pg_attribute
WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
ORDER BY attnum
"""
_SEQUENCES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND n.nspname !~ '^pg_(toast_)?temp_'
"""

Connection = psycopg.Connection[Any]


@dataclass(frozen=True)
class DatabaseSnapshot:
    """The catalog fingerprint at capture time, and the statement that restores the data."""

    fingerprint: str
    restore_statement: sql.Composed

    @classmethod
    def capture(cls, conn: Connection) -> DatabaseSnapshot:
        """Remember what ``conn``'s database holds now (``conn`` must be in autocommit)."""
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}").format(
                sql.Identifier(SNAPSHOT_SCHEMA)
            )
        )
        tables = [
            (int(oid), sql.Identifier(schema, name))
            for oid, schema, name in conn.execute(_TABLES, [SNAPSHOT_SCHEMA]).fetchall()
        ]
        statements: list[sql.Composable] = [
            sql.SQL("BEGIN"),
            sql.SQL("SET LOCAL lock_timeout = '10s'"),
        ]
        if _is_superuser(conn):
            # Skips user triggers (and foreign-key checks) while deleting: nothing fires.
            statements.append(sql.SQL("SET LOCAL session_replication_role = replica"))
        statements += [
            sql.SQL("DELETE FROM {}").format(t) for _, t in _children_first(conn, tables)
        ]
        for oid, table in tables:
            if conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(table)).fetchone()[0]:  # type: ignore[index]
                statements.append(_copy_rows(conn, oid, table))
        statements += _sequence_rewinds(conn)
        statements.append(sql.SQL("COMMIT"))
        fingerprint = str(conn.execute(_FINGERPRINT).fetchone()[0])  # type: ignore[index]
        return cls(fingerprint, sql.SQL("; ").join(statements))

    def restore(self, conn: Connection) -> bool:
        """Put the data back; False when the schema changed or the reset failed (re-clone)."""
        try:
            if str(conn.execute(_FINGERPRINT).fetchone()[0]) != self.fingerprint:  # type: ignore[index]
                return False
            conn.execute(self.restore_statement)
        except psycopg.Error:
            if not conn.closed and not conn.broken:
                conn.execute("ROLLBACK")
            return False
        return True


def copy_data(source: Connection, target: Connection) -> None:
    """Every row of ``target``'s tables as ``source`` sees it (uncommitted writes of its
    transaction too), and the sequences' positions, into ``target``: a database of the same
    schema, copied from the same template (the data of a failed test, kept)."""
    tables = [
        (int(oid), sql.Identifier(schema, name))
        for oid, schema, name in target.execute(_TABLES, [SNAPSHOT_SCHEMA]).fetchall()
    ]
    ordered = _children_first(target, tables)
    # A savepoint inside the test's transaction: a failure here must not poison it.
    with source.transaction(), target.transaction():
        if _is_superuser(target):
            target.execute("SET LOCAL session_replication_role = replica")
        for _, table in ordered:
            target.execute(sql.SQL("DELETE FROM {}").format(table))
        for oid, table in reversed(ordered):  # parents first, for the foreign keys
            columns = sql.SQL(", ").join(
                sql.Identifier(str(name)) for (name,) in target.execute(_COLUMNS, [oid]).fetchall()
            )
            with (
                source.cursor().copy(
                    sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT BINARY)").format(
                        columns, table
                    )
                ) as rows_out,
                target.cursor().copy(
                    sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(table, columns)
                ) as rows_in,
            ):
                for block in rows_out:
                    rows_in.write(block)
        for rewind in _sequence_rewinds(source):
            target.execute(rewind)


def _is_superuser(conn: Connection) -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


def _children_first(
    conn: Connection, tables: list[tuple[int, sql.Identifier]]
) -> list[tuple[int, sql.Identifier]]:
    """Tables ordered so that a table comes before those its foreign keys point to."""
    refs: dict[int, set[int]] = {oid: set() for oid, _ in tables}
    for child, parent in conn.execute(
        "SELECT conrelid, confrelid FROM pg_constraint"
        " WHERE contype = 'f' AND conrelid <> confrelid"
    ).fetchall():
        if child in refs and parent in refs:
            refs[parent].add(child)
    ordered: list[tuple[int, sql.Identifier]] = []
    remaining = dict(tables)
    while remaining:
        # A table whose children are all placed already; in a cycle, any table.
        ready = [oid for oid in remaining if not (refs[oid] & remaining.keys())]
        for oid in ready or [next(iter(remaining))]:
            ordered.append((oid, remaining.pop(oid)))
    return ordered


def _copy_rows(conn: Connection, oid: int, table: sql.Identifier) -> sql.Composed:
    """Keep ``table``'s rows in the snapshot schema; return the INSERT that puts them back."""
    columns = sql.SQL(", ").join(
        sql.Identifier(str(name)) for (name,) in conn.execute(_COLUMNS, [oid]).fetchall()
    )
    copy = sql.Identifier(SNAPSHOT_SCHEMA, f"t{oid}")
    conn.execute(sql.SQL("CREATE TABLE {} AS SELECT {} FROM {}").format(copy, columns, table))
    return sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}").format(
        table, columns, columns, copy
    )


def _sequence_rewinds(conn: Connection) -> list[sql.Composed]:
    rewinds = []
    for schema, name in conn.execute(_SEQUENCES).fetchall():
        sequence = sql.Identifier(str(schema), str(name))
        last_value, is_called = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sequence)
        ).fetchone()  # type: ignore[misc]
        rewinds.append(
            sql.SQL("SELECT setval({}::regclass, {}, {})").format(
                sql.Literal(sequence.as_string(conn)),
                sql.Literal(last_value),
                sql.Literal(is_called),
            )
        )
    return rewinds
