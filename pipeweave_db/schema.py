"""The PipeWeave schema: versioned migrations, and initialize / status / migrate / reset.

The DDL lives next to this module in ``migrations/NNNN_name.sql``. Applied migrations are
recorded in ``pipeweave_schema_migrations``; every change takes a transaction-scoped advisory
lock first, so that concurrent runs (several replicas starting, eight CI jobs running ``init``)
queue up and each migration is applied once.

Each function has an async twin for an ``AsyncDatabase`` (``initialize_schema_async``...):
both run the same steps (see ``steps``).
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from pipeweave_db.errors import MigrationError, SchemaError
from pipeweave_db.migration_files import Migration, load_migrations
from pipeweave_db.steps import Statement, Steps, Transaction, run, run_async, savepoint

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeweave_db.async_database import AsyncDatabase
    from pipeweave_db.database import Database

__all__ = [
    "PIPEWEAVE_TABLES",
    "AppliedMigration",
    "InitResult",
    "Migration",
    "SchemaStatus",
    "initialize_schema",
    "initialize_schema_async",
    "is_database_initialized",
    "is_database_initialized_async",
    "load_migrations",
    "migrate",
    "migrate_async",
    "reset_schema",
    "reset_schema_async",
    "schema_status",
    "schema_status_async",
]

PIPEWEAVE_TABLES = (
    "dlq",
    "idempotency_cache",
    "pipeline_runs",
    "pipelines",
    "services",
    "task_code_history",
    "task_runs",
    "tasks",
)
MIGRATIONS_TABLE = "pipeweave_schema_migrations"
PIPEWEAVE_FUNCTIONS = ("update_updated_at_column", "cleanup_expired_idempotency_cache")
# Any fixed number serves; this one reads "PIPEWEAVE" on a phone keypad.
_LOCK_KEY = 747_393_283


@dataclass(frozen=True)
class AppliedMigration:
    """A row of the tracking table."""

    version: int
    name: str
    checksum: str
    applied_at: datetime

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class SchemaStatus:
    """What the database holds, compared with what this package ships."""

    tables: tuple[str, ...]
    missing_tables: tuple[str, ...]
    other_tables: tuple[str, ...]
    applied: tuple[AppliedMigration, ...]
    pending: tuple[Migration, ...]
    changed: tuple[AppliedMigration, ...]
    # Indexes, triggers and functions of the applied migrations that are not there, which init
    # creates again ("index idx_tasks_code_hash on tasks", "trigger t on tasks", "function f").
    missing_objects: tuple[str, ...] = ()
    # PipeWeave tables that exist with another shape (columns missing): init cannot repair them.
    differing_tables: tuple[str, ...] = ()

    @property
    def initialized(self) -> bool:
        return not self.missing_tables

    @property
    def repairable(self) -> bool:
        """True when ``initialize_schema`` would create everything that is missing."""
        return not self.differing_tables

    @property
    def up_to_date(self) -> bool:
        return self.initialized and not (
            self.pending or self.changed or self.missing_objects or self.differing_tables
        )

    @property
    def version(self) -> int | None:
        return max((m.version for m in self.applied), default=None)


@dataclass(frozen=True)
class InitResult:
    """What ``initialize_schema`` or ``reset_schema`` did."""

    applied: tuple[Migration, ...]
    created_tables: tuple[str, ...]
    # Indexes, triggers and functions of applied migrations that were missing and are back.
    repaired: tuple[str, ...] = ()

    @property
    def changed_anything(self) -> bool:
        return bool(self.applied or self.created_tables or self.repaired)


def is_database_initialized(db: Database) -> bool:
    """True only when all eight PipeWeave tables exist."""
    return run(db, _is_initialized())


async def is_database_initialized_async(db: AsyncDatabase) -> bool:
    """``is_database_initialized`` for an AsyncDatabase."""
    return await run_async(db, _is_initialized())


def schema_status(db: Database, migrations: Sequence[Migration] | None = None) -> SchemaStatus:
    """PipeWeave tables present and missing, other tables apart, applied and pending migrations."""
    return run(db, _status(_shipped(migrations)))


async def schema_status_async(
    db: AsyncDatabase, migrations: Sequence[Migration] | None = None
) -> SchemaStatus:
    """``schema_status`` for an AsyncDatabase."""
    return await run_async(db, _status(_shipped(migrations)))


def initialize_schema(db: Database, migrations: Sequence[Migration] | None = None) -> InitResult:
    """Create whatever is missing, all in one transaction; safe to run again, and concurrently."""
    return run(db, _initialize(_shipped(migrations)))


async def initialize_schema_async(
    db: AsyncDatabase, migrations: Sequence[Migration] | None = None
) -> InitResult:
    """``initialize_schema`` for an AsyncDatabase."""
    return await run_async(db, _initialize(_shipped(migrations)))


def migrate(db: Database, migrations: Sequence[Migration] | None = None) -> tuple[Migration, ...]:
    """Apply pending migrations in order, each in its own transaction; stop at the first failure.

    Raises MigrationError when a migration fails (those before it stay applied) or when an
    applied migration no longer matches its file (then nothing is run).
    """
    return run(db, _migrate(_shipped(migrations)))


async def migrate_async(
    db: AsyncDatabase, migrations: Sequence[Migration] | None = None
) -> tuple[Migration, ...]:
    """``migrate`` for an AsyncDatabase."""
    return await run_async(db, _migrate(_shipped(migrations)))


def reset_schema(db: Database, migrations: Sequence[Migration] | None = None) -> InitResult:
    """Drop PipeWeave's tables, functions and migration records, then recreate them.

    One transaction: if anything outside PipeWeave depends on its tables (a foreign key, a
    view), SchemaError says what and nothing is changed. Other tables are never touched.
    """
    return run(db, _reset(_shipped(migrations)))


async def reset_schema_async(
    db: AsyncDatabase, migrations: Sequence[Migration] | None = None
) -> InitResult:
    """``reset_schema`` for an AsyncDatabase."""
    return await run_async(db, _reset(_shipped(migrations)))


# -- the steps, shared by both ---------------------------------------------------------------


def _shipped(migrations: Sequence[Migration] | None) -> tuple[Migration, ...]:
    return load_migrations() if migrations is None else tuple(migrations)


def _is_initialized() -> Steps[bool]:
    present = yield from _tables()
    return all(t in present for t in PIPEWEAVE_TABLES)


def _status(migrations: Sequence[Migration]) -> Steps[SchemaStatus]:
    present = yield from _tables()
    applied = (yield from _applied()) if MIGRATIONS_TABLE in present else ()
    missing, differing = yield from _damage(migrations, applied)
    return SchemaStatus(
        tables=tuple(t for t in PIPEWEAVE_TABLES if t in present),
        missing_tables=tuple(t for t in PIPEWEAVE_TABLES if t not in present),
        other_tables=tuple(
            sorted(t for t in present if t not in PIPEWEAVE_TABLES and t != MIGRATIONS_TABLE)
        ),
        applied=applied,
        pending=_pending(migrations, applied),
        changed=_changed(migrations, applied),
        missing_objects=tuple(sorted(label for label in missing if not _is_table(label))),
        differing_tables=differing,
    )


def _initialize(migrations: Sequence[Migration]) -> Steps[InitResult]:
    def locked() -> Steps[InitResult]:
        yield from _lock()
        return (yield from _apply_all(migrations))

    result: InitResult = yield Transaction(locked())
    return result


def _migrate(migrations: Sequence[Migration]) -> Steps[tuple[Migration, ...]]:
    def one(migration: Migration) -> Steps[bool]:
        yield from _lock()
        yield from _ensure_tracking_table()
        applied = yield from _applied()
        _refuse_changed(migrations, applied)
        if any(a.version == migration.version for a in applied):
            return False
        yield from _apply(migration)
        return True

    done: list[Migration] = []
    for migration in migrations:
        if (yield Transaction(one(migration))):
            done.append(migration)
    return tuple(done)


def _reset(migrations: Sequence[Migration]) -> Steps[InitResult]:
    def locked() -> Steps[InitResult]:
        yield from _lock()
        present = yield from _tables()
        drop = [t for t in (*PIPEWEAVE_TABLES, MIGRATIONS_TABLE) if t in present]
        if drop:
            tables = sql.SQL(", ").join(map(sql.Identifier, drop))
            try:
                yield savepoint(Statement("none", sql.SQL("DROP TABLE {}").format(tables)))
            except psycopg.errors.DependentObjectsStillExist as exc:
                raise SchemaError(f"cannot reset: {_dependency_detail(exc)}") from None
        for function in PIPEWEAVE_FUNCTIONS:
            # Another table's trigger may share update_updated_at_column(): then it stays.
            statement = sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(function))
            with contextlib.suppress(psycopg.errors.DependentObjectsStillExist):
                yield savepoint(Statement("none", statement))
        return (yield from _apply_all(migrations))

    result: InitResult = yield Transaction(locked())
    return result


def _lock() -> Steps[None]:
    yield Statement("one", "SELECT pg_advisory_xact_lock(%s) AS locked", [_LOCK_KEY])


def _apply_all(migrations: Sequence[Migration]) -> Steps[InitResult]:
    before = yield from _tables()
    yield from _ensure_tracking_table()
    applied = yield from _applied()
    _refuse_changed(migrations, applied)
    repaired = yield from _repair(migrations, applied)
    pending = _pending(migrations, applied)
    for migration in pending:
        yield from _apply(migration)
    after = yield from _tables()
    created = tuple(name for name in PIPEWEAVE_TABLES if name in after and name not in before)
    return InitResult(applied=pending, created_tables=created, repaired=repaired)


# -- what the applied migrations should have made, and what is missing ------------------------

# Every object of a schema, labelled "table services", "index i on tasks", "trigger t on tasks",
# "function f", "column services.status". Indexes that back a constraint go with their table.
_OBJECTS = """
SELECT 'table ' || c.relname FROM pg_class c
WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p')
UNION ALL
SELECT 'index ' || c.relname || ' on ' || t.relname FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
WHERE c.relnamespace = %(schema)s::regnamespace
  AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = c.oid)
UNION ALL
SELECT 'trigger ' || t.tgname || ' on ' || c.relname FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = %(schema)s::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'function ' || p.proname FROM pg_proc p WHERE p.pronamespace = %(schema)s::regnamespace
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p')
  AND a.attnum > 0 AND NOT a.attisdropped
"""


class _Probed(Exception):
    """Ends the probe's savepoint (rolling its schema back) with what it found."""

    def __init__(self, objects: frozenset[str]) -> None:
        self.objects = objects


def _objects(schema: str) -> Steps[frozenset[str]]:
    rows = yield Statement("many_or_none", sql.SQL(_OBJECTS), {"schema": schema})
    return frozenset(next(iter(row.values())) for row in rows)


def _expected(migrations: Sequence[Migration]) -> Steps[frozenset[str] | None]:
    """What ``migrations`` create in an empty schema: run there, in a savepoint rolled back.

    None when the role may not create a schema: then only tables are compared.
    """
    probe = f"pipeweave_probe_{uuid.uuid4().hex[:12]}"

    def in_probe() -> Steps[None]:
        yield Statement("none", sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(probe)))
        yield Statement("none", sql.SQL("SET LOCAL search_path = {}").format(sql.Identifier(probe)))
        for migration in migrations:
            yield Statement("none", migration.sql)
        raise _Probed((yield from _objects(probe)))

    try:
        yield Transaction(in_probe())
    except _Probed as probed:
        return probed.objects
    except psycopg.errors.InsufficientPrivilege:
        return None
    raise AssertionError("the probe always ends in _Probed")  # pragma: no cover


def _damage(
    migrations: Sequence[Migration], applied: Sequence[AppliedMigration]
) -> Steps[tuple[frozenset[str], tuple[str, ...]]]:
    """What the applied migrations made that is missing now, and the tables whose shape is not
    theirs (a column missing: nothing init may repair)."""
    done = [m for m in migrations if any(a.version == m.version for a in applied)]
    expected = (yield from _expected(done)) if done else None
    if not expected:
        return frozenset(), ()
    schema = yield Statement("one", "SELECT current_schema() AS name")
    missing = expected - (yield from _objects(schema["name"]))
    tables_missing = {label.split()[1] for label in missing if _is_table(label)}
    columns: dict[str, list[str]] = {}
    for label in sorted(missing):
        if label.startswith("column "):
            table, column = label.split()[1].split(".", 1)
            if table not in tables_missing:
                columns.setdefault(table, []).append(column)
    differing = tuple(
        f"{table} (missing columns: {', '.join(names)})" for table, names in sorted(columns.items())
    )
    # A missing table's indexes and triggers come back with it: not listed apart.
    parts = {label for label in missing if label.startswith("column ")}
    parts |= {label for label in missing for t in tables_missing if label.endswith(f" on {t}")}
    return frozenset(missing - parts), differing


def _repair(
    migrations: Sequence[Migration], applied: Sequence[AppliedMigration]
) -> Steps[tuple[str, ...]]:
    """Run the applied migrations again where what they made is missing (they create only
    what is not there); refuse, changing nothing, where a table has another shape."""
    missing, differing = yield from _damage(migrations, applied)
    if differing:
        raise SchemaError(
            f"cannot repair: {'; '.join(differing)}. Restore those columns by hand, or run "
            "`pipeweave-db reset` (it deletes every PipeWeave row)"
        )
    if not missing:
        return ()
    for migration in migrations:
        if any(a.version == migration.version for a in applied):
            yield from _apply(migration, record=False)
    return tuple(sorted(label for label in missing if not _is_table(label)))


def _is_table(label: str) -> bool:
    return label.startswith("table ")


def _apply(migration: Migration, *, record: bool = True) -> Steps[None]:
    """Run ``migration``; record it as applied unless it is run again to repair."""
    try:
        yield savepoint(Statement("none", migration.sql))
    except psycopg.Error as exc:
        reason = (exc.diag.message_primary or str(exc)).strip()
        raise MigrationError(f"migration {migration.label} failed: {reason}") from exc
    if not record:
        return
    yield Statement(
        "none",
        sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(
            sql.Identifier(MIGRATIONS_TABLE)
        ),
        [migration.version, migration.name, migration.checksum],
    )


def _ensure_tracking_table() -> Steps[None]:
    yield Statement(
        "none",
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {} (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
        )"""
        ).format(sql.Identifier(MIGRATIONS_TABLE)),
    )


def _applied() -> Steps[tuple[AppliedMigration, ...]]:
    rows = yield Statement(
        "many_or_none",
        sql.SQL("SELECT version, name, checksum, applied_at FROM {} ORDER BY version").format(
            sql.Identifier(MIGRATIONS_TABLE)
        ),
    )
    return tuple(AppliedMigration(**row) for row in rows)


def _pending(
    migrations: Sequence[Migration], applied: Sequence[AppliedMigration]
) -> tuple[Migration, ...]:
    done = {a.version for a in applied}
    return tuple(m for m in migrations if m.version not in done)


def _changed(
    migrations: Sequence[Migration], applied: Sequence[AppliedMigration]
) -> tuple[AppliedMigration, ...]:
    checksums = {m.version: m.checksum for m in migrations}
    return tuple(
        a for a in applied if a.version in checksums and checksums[a.version] != a.checksum
    )


def _refuse_changed(migrations: Sequence[Migration], applied: Sequence[AppliedMigration]) -> None:
    changed = _changed(migrations, applied)
    if changed:
        labels = ", ".join(a.label for a in changed)
        raise MigrationError(
            f"applied migration(s) {labels} no longer match their files (checksum changed); "
            "they are never re-run: restore the files or repair the database by hand"
        )


def _tables() -> Steps[set[str]]:
    rows = yield Statement(
        "many_or_none",
        "SELECT c.relname AS name FROM pg_class c"
        " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')",
    )
    return {row["name"] for row in rows}


def _dependency_detail(exc: psycopg.Error) -> str:
    detail = (exc.diag.message_detail or exc.diag.message_primary or str(exc)).strip()
    return " ".join(detail.split()) + "; remove or change those objects first"
