"""The PipeWeave schema: versioned migrations, and initialize / status / migrate / reset.

The DDL lives next to this module in ``migrations/NNNN_name.sql``. Applied migrations are
recorded in ``pipeweave_schema_migrations``; every change takes a transaction-scoped advisory
lock first, so that concurrent runs (several replicas starting, eight CI jobs running ``init``)
queue up and each migration is applied once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from pipeweave_db.errors import MigrationError, SchemaError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeweave_db.database import Database

__all__ = [
    "PIPEWEAVE_TABLES",
    "AppliedMigration",
    "InitResult",
    "Migration",
    "SchemaStatus",
    "initialize_schema",
    "is_database_initialized",
    "load_migrations",
    "migrate",
    "reset_schema",
    "schema_status",
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
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One ``NNNN_name.sql`` file."""

    version: int
    name: str
    sql: str = field(repr=False)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


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

    @property
    def initialized(self) -> bool:
        return not self.missing_tables

    @property
    def up_to_date(self) -> bool:
        return self.initialized and not self.pending and not self.changed

    @property
    def version(self) -> int | None:
        return max((m.version for m in self.applied), default=None)


@dataclass(frozen=True)
class InitResult:
    """What ``initialize_schema`` or ``reset_schema`` did."""

    applied: tuple[Migration, ...]
    created_tables: tuple[str, ...]

    @property
    def changed_anything(self) -> bool:
        return bool(self.applied or self.created_tables)


def load_migrations() -> tuple[Migration, ...]:
    """The migrations shipped in this package, in version order."""
    folder = resources.files("pipeweave_db") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return tuple(found)


def is_database_initialized(db: Database) -> bool:
    """True only when all eight PipeWeave tables exist."""
    return not _missing_tables(db)


def schema_status(db: Database, migrations: Sequence[Migration] | None = None) -> SchemaStatus:
    """PipeWeave tables present and missing, other tables apart, applied and pending migrations."""
    migrations = load_migrations() if migrations is None else tuple(migrations)
    present = _tables(db)
    applied = _applied(db) if MIGRATIONS_TABLE in present else ()
    return SchemaStatus(
        tables=tuple(t for t in PIPEWEAVE_TABLES if t in present),
        missing_tables=tuple(t for t in PIPEWEAVE_TABLES if t not in present),
        other_tables=tuple(
            sorted(t for t in present if t not in PIPEWEAVE_TABLES and t != MIGRATIONS_TABLE)
        ),
        applied=applied,
        pending=_pending(migrations, applied),
        changed=_changed(migrations, applied),
    )


def initialize_schema(db: Database, migrations: Sequence[Migration] | None = None) -> InitResult:
    """Create whatever is missing, all in one transaction; safe to run again, and concurrently."""
    migrations = load_migrations() if migrations is None else tuple(migrations)
    with db.tx() as t:
        _lock(t)
        return _apply_all(t, migrations)


def migrate(db: Database, migrations: Sequence[Migration] | None = None) -> tuple[Migration, ...]:
    """Apply pending migrations in order, each in its own transaction; stop at the first failure.

    Raises MigrationError when a migration fails (those before it stay applied) or when an
    applied migration no longer matches its file (then nothing is run).
    """
    migrations = load_migrations() if migrations is None else tuple(migrations)
    done: list[Migration] = []
    for migration in migrations:
        with db.tx() as t:
            _lock(t)
            _ensure_tracking_table(t)
            applied = _applied(t)
            _refuse_changed(migrations, applied)
            if any(a.version == migration.version for a in applied):
                continue
            _apply(t, migration)
        done.append(migration)
    return tuple(done)


def reset_schema(db: Database, migrations: Sequence[Migration] | None = None) -> InitResult:
    """Drop PipeWeave's tables, functions and migration records, then recreate them.

    One transaction: if anything outside PipeWeave depends on its tables (a foreign key, a
    view), SchemaError says what and nothing is changed. Other tables are never touched.
    """
    migrations = load_migrations() if migrations is None else tuple(migrations)
    with db.tx() as t:
        _lock(t)
        present = _tables(t)
        drop = [t_ for t_ in (*PIPEWEAVE_TABLES, MIGRATIONS_TABLE) if t_ in present]
        if drop:
            try:
                with t.tx() as sp:
                    sp.none(
                        sql.SQL("DROP TABLE {}").format(
                            sql.SQL(", ").join(map(sql.Identifier, drop))
                        )
                    )
            except psycopg.errors.DependentObjectsStillExist as exc:
                raise SchemaError(f"cannot reset: {_dependency_detail(exc)}") from None
        for function in PIPEWEAVE_FUNCTIONS:
            # Another table's trigger may share update_updated_at_column(): then it stays.
            try:
                with t.tx() as sp:
                    sp.none(
                        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(function))
                    )
            except psycopg.errors.DependentObjectsStillExist:
                pass
        return _apply_all(t, migrations)


# -- internals ------------------------------------------------------------------------------


def _lock(t: Database) -> None:
    t.one("SELECT pg_advisory_xact_lock(%s) AS locked", [_LOCK_KEY])


def _apply_all(t: Database, migrations: Sequence[Migration]) -> InitResult:
    before = _tables(t)
    _ensure_tracking_table(t)
    applied = _applied(t)
    _refuse_changed(migrations, applied)
    pending = _pending(migrations, applied)
    for migration in pending:
        _apply(t, migration)
    after = _tables(t)
    created = tuple(name for name in PIPEWEAVE_TABLES if name in after and name not in before)
    return InitResult(applied=pending, created_tables=created)


def _apply(t: Database, migration: Migration) -> None:
    try:
        with t.tx() as sp:
            sp.none(migration.sql)
    except psycopg.Error as exc:
        reason = (exc.diag.message_primary or str(exc)).strip()
        raise MigrationError(f"migration {migration.label} failed: {reason}") from exc
    t.none(
        sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(
            sql.Identifier(MIGRATIONS_TABLE)
        ),
        [migration.version, migration.name, migration.checksum],
    )


def _ensure_tracking_table(t: Database) -> None:
    t.none(
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {} (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
        )"""
        ).format(sql.Identifier(MIGRATIONS_TABLE))
    )


def _applied(db: Database) -> tuple[AppliedMigration, ...]:
    rows = db.many_or_none(
        sql.SQL("SELECT version, name, checksum, applied_at FROM {} ORDER BY version").format(
            sql.Identifier(MIGRATIONS_TABLE)
        )
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


def _tables(db: Database) -> set[str]:
    rows = db.many_or_none(
        "SELECT c.relname AS name FROM pg_class c"
        " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')"
    )
    return {row["name"] for row in rows}


def _missing_tables(db: Database) -> list[str]:
    present = _tables(db)
    return [t for t in PIPEWEAVE_TABLES if t not in present]


def _dependency_detail(exc: psycopg.Error) -> str:
    detail = (exc.diag.message_detail or exc.diag.message_primary or str(exc)).strip()
    return " ".join(detail.split()) + "; remove or change those objects first"
