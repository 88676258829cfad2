"""The migrations shipped in this package (``migrations/NNNN_name.sql``), read without psycopg:
what a schema is made of, for keys of templates and caches that must be known before a
connection is."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources

from pipeweave_db.errors import MigrationError

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
