"""The run's template kept made in the local backend's cached cluster, for runs without a
template setup: a warm start then renames it instead of building it (some 50 ms, of a start
that took 250). Keyed by what the template is made of, known without psycopg, which is imported on
another thread while the server starts.
"""

from __future__ import annotations

import hashlib

from pipeweave_db.migration_files import load_migrations
from pytest_pipeweave.leaks import TEMPLATE_ADDITIONS
from pytest_pipeweave.servers import PreparedDatabase

CACHED_TEMPLATE = "pytest_pipeweave_cached_template"


def schema_digest() -> str:
    """What a test template's schema is made of, as a short hash: the shipped migrations and
    the additions for tests."""
    made_of = "".join(m.checksum for m in load_migrations()) + TEMPLATE_ADDITIONS
    return hashlib.sha256(made_of.encode()).hexdigest()[:12]


def cached_template() -> PreparedDatabase:
    return PreparedDatabase(CACHED_TEMPLATE, schema_digest(), _make)


def _make(url: str) -> None:
    from pytest_pipeweave.databases import initialize_template

    initialize_template(url)
