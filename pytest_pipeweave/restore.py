"""Committed mode's reset: put a database back as it was when captured, in about a millisecond.

A committed test writes a few rows. Deleting them costs microseconds a table, where TRUNCATE
costs milliseconds a table (it swaps files) and a fresh clone tens of milliseconds. So the reset
deletes the rows of the tables the test wrote to, puts back the rows the template had there
(kept in a side schema), and rewinds sequences. Which tables those are, the write notices tell
(``leaks``): each commit names the tables it wrote to, and the notices reach the connection
that resets before the answer to its next query. Tables that send no notices are reset always.

A test that changed the schema (DDL) shows in a catalog fingerprint, compared when a schema
change was notified (or at every reset, where no event trigger could be installed); then, or
when the reset fails, the caller re-clones instead.

``copy_data`` moves the same rows the other way: what a failed test saw, into a database kept
for looking at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pytest_pipeweave import leaks

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
SELECT c.oid, n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
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
# The tables whose write notices are sent whatever session_replication_role says.
_NOTIFYING = """
SELECT tgrelid FROM pg_trigger WHERE tgname = 'pytest_pipeweave_write' AND tgenabled = 'A'
"""
_SCHEMA_NOTICES = """
SELECT count(*) = %s FROM pg_event_trigger WHERE evtname = ANY(%s) AND evtenabled = 'A'
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
    """What a database held when captured, and how to put each table back."""

    fingerprint: str
    # Per table, by the name its notices give ("schema.table"), children before parents: the
    # DELETE, then the INSERT of the rows it had (or None).
    tables: dict[str, tuple[sql.Composed, sql.Composed | None]]
    # The tables reset after every test: they send no notices (or are partitioned, whose
    # partitions are written to directly).
    unnotified: frozenset[str]
    # Per table, the tables whose foreign keys point to it, directly or not: deleted with it,
    # when foreign keys are checked during the reset (a role that is not a superuser).
    referencing: dict[str, frozenset[str]] | None
    schema_notices: bool
    prologue: list[sql.Composable]
    rewinds: list[sql.Composed]
    _statements: dict[frozenset[str], bytes] = field(default_factory=dict, compare=False)

    @classmethod
    def capture(cls, conn: Connection) -> DatabaseSnapshot:
        """Remember what ``conn``'s database holds now (``conn`` must be in autocommit)."""
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}").format(
                sql.Identifier(SNAPSHOT_SCHEMA)
            )
        )
        found = conn.execute(_TABLES, [SNAPSHOT_SCHEMA]).fetchall()
        names = {int(oid): f"{schema}.{name}" for oid, schema, name, _ in found}
        tables = [(int(oid), sql.Identifier(schema, name)) for oid, schema, name, _ in found]
        notifying = {int(oid) for (oid,) in conn.execute(_NOTIFYING).fetchall()}
        unnotified = frozenset(
            names[int(oid)] for oid, _, _, kind in found if kind != "r" or oid not in notifying
        )
        superuser = _is_superuser(conn)
        prologue: list[sql.Composable] = [
            sql.SQL("BEGIN"),
            sql.SQL("SET LOCAL lock_timeout = '10s'"),
        ]
        if superuser:
            # Skips user triggers (and foreign-key checks) while deleting: nothing fires.
            prologue.append(sql.SQL("SET LOCAL session_replication_role = replica"))
        parents = _parents(conn, [oid for oid, _ in tables])
        restores = {}
        for oid, table in _children_first(tables, parents):
            refill = None
            if conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(table)).fetchone()[0]:  # type: ignore[index]
                refill = _copy_rows(conn, oid, table)
            restores[names[oid]] = (sql.SQL("DELETE FROM {}").format(table), refill)
        referencing = None if superuser else _referencing(names, parents)
        fingerprint = str(conn.execute(_FINGERPRINT).fetchone()[0])  # type: ignore[index]
        schema_notices = bool(
            conn.execute(
                _SCHEMA_NOTICES,
                [len(leaks.SCHEMA_NOTICE_TRIGGERS), list(leaks.SCHEMA_NOTICE_TRIGGERS)],
            ).fetchone()[0]  # type: ignore[index]
        )
        return cls(
            fingerprint,
            restores,
            unnotified,
            referencing,
            schema_notices,
            prologue,
            _sequence_rewinds(conn),
        )

    def restore(self, conn: Connection, written: set[str]) -> bool:
        """Put the data back; False when the schema changed or the reset failed (re-clone).

        ``written`` is where ``conn``'s write notices are collected (``leaks.listen``): the
        tables written to since the capture or the last reset, emptied here.
        """
        try:
            # Either query's answer comes after the notices of every commit made before it.
            if self.schema_notices:
                conn.execute("SELECT 1")
            elif self._schema_changed(conn):
                return False
            touched = set(leaks.received(conn.pgconn, written))
            written.clear()
            notified = self.schema_notices and leaks.SCHEMA_CHANGED in touched
            if notified and self._schema_changed(conn):
                return False
            conn.execute(self._statement(conn, touched))
            # The reset's own deletes sent notices too.
            leaks.received(conn.pgconn, written).clear()
        except psycopg.Error:
            if not conn.closed and not conn.broken:
                conn.execute("ROLLBACK")
            return False
        return True

    def _schema_changed(self, conn: Connection) -> bool:
        return str(conn.execute(_FINGERPRINT).fetchone()[0]) != self.fingerprint  # type: ignore[index]

    def _statement(self, conn: Connection, touched: set[str]) -> bytes:
        """The statement that resets the tables ``touched`` names and those that send no
        notices (all of them, when a name is not one of the captured tables)."""
        touched.discard(leaks.SCHEMA_CHANGED)
        if touched - self.tables.keys():
            reset = frozenset(self.tables)
        else:
            reset = self.unnotified | touched
            if self.referencing is not None:
                reset = reset.union(*(self.referencing[name] for name in reset))
        statement = self._statements.get(reset)
        if statement is None:
            parts = list(self.prologue)
            restores = [self.tables[name] for name in self.tables if name in reset]
            parts += [delete for delete, _ in restores]
            parts += [refill for _, refill in reversed(restores) if refill is not None]
            parts += self.rewinds
            parts.append(sql.SQL("COMMIT"))
            statement = sql.SQL("; ").join(parts).as_bytes(conn)
            self._statements[reset] = statement
        return statement


def copy_data(source: Connection, target: Connection) -> None:
    """Every row of ``target``'s tables as ``source`` sees it (uncommitted writes of its
    transaction too), and the sequences' positions, into ``target``: a database of the same
    schema, copied from the same template (the data of a failed test, kept)."""
    tables = [
        (int(oid), sql.Identifier(schema, name))
        for oid, schema, name, _ in target.execute(_TABLES, [SNAPSHOT_SCHEMA]).fetchall()
    ]
    ordered = _children_first(tables, _parents(target, [oid for oid, _ in tables]))
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


def _parents(conn: Connection, oids: list[int]) -> dict[int, set[int]]:
    """Per table, the tables its foreign keys point to (itself left out)."""
    parents: dict[int, set[int]] = {oid: set() for oid in oids}
    for child, parent in conn.execute(
        "SELECT conrelid, confrelid FROM pg_constraint"
        " WHERE contype = 'f' AND conrelid <> confrelid"
    ).fetchall():
        if child in parents and parent in parents:
            parents[child].add(parent)
    return parents


def _children(parents: dict[int, set[int]]) -> dict[int, set[int]]:
    """Per table, the tables whose foreign keys point to it."""
    children: dict[int, set[int]] = {oid: set() for oid in parents}
    for child, its_parents in parents.items():
        for parent in its_parents:
            children[parent].add(child)
    return children


def _children_first(
    tables: list[tuple[int, sql.Identifier]], parents: dict[int, set[int]]
) -> list[tuple[int, sql.Identifier]]:
    """Tables ordered so that a table comes before those its foreign keys point to."""
    children = _children(parents)
    ordered: list[tuple[int, sql.Identifier]] = []
    remaining = dict(tables)
    while remaining:
        # A table whose children are all placed already; in a cycle, any table.
        ready = [oid for oid in remaining if not (children[oid] & remaining.keys())]
        for oid in ready or [next(iter(remaining))]:
            ordered.append((oid, remaining.pop(oid)))
    return ordered


def _referencing(names: dict[int, str], parents: dict[int, set[int]]) -> dict[str, frozenset[str]]:
    """Per table, every table whose foreign keys lead to it, through others or not."""
    children = _children(parents)
    closure = {}
    for oid in parents:
        found: set[int] = set()
        pending = list(children[oid])
        while pending:
            child = pending.pop()
            if child not in found:
                found.add(child)
                pending += children[child]
        closure[names[oid]] = frozenset(names[child] for child in found)
    return closure


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
