"""The public fixtures. Thin: they compose the server, the databases and the reset.

The chain, each link overridable in a conftest (as pytest-django's ``django_db_setup``)::

    pipeweave_server            session   the running server (ServerInfo)
    pipeweave_template_setup    session   None, or a function that adds to the template once
    pipeweave_database_url      session   this process's database, cloned from the template
    pipeweave_config            session   a DatabaseConfig for it
    pipeweave_database          function  rolled back after the test (committed if asked)
    pipeweave_database_committed function real commits; the database is restored after
    pipeweave_env               function  DATABASE_URL for create_database_from_env and the CLI
    pipeweave_factory           function  rows for every table
    pipeweave_seed              function  the standard dataset

Each fixture imports the database code it needs (psycopg with it) when it first runs: this
module is loaded into every pytest process, most of which never use a database.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import pytest

from pipeweave_db.config import DatabaseConfig
from pytest_pipeweave.servers import ServerGone, ServerInfo, ServerUnavailable
from pytest_pipeweave.session import PipeweaveSession

if TYPE_CHECKING:
    from pipeweave_db import Database
    from pytest_pipeweave.databases import TemplateSetup, WorkerDatabase
    from pytest_pipeweave.factories import PipeweaveFactory
    from pytest_pipeweave.seed import SeedData

T = TypeVar("T")
COMMITTED_FIXTURES = ("pipeweave_database_committed", "pipeweave_env")
# Variables that would send create_database_from_env() somewhere else than the test database.
_CLEARED_VARIABLES = ("AUTO_INIT_DB", "NODE_ENV", "PIPEWEAVE_ENV")


def _session(request: pytest.FixtureRequest) -> PipeweaveSession:
    return PipeweaveSession.of(request.config)


def _fail_if_gone(step: Callable[[], T]) -> T:
    """``step()``, or a one-line test failure (not a traceback) when the server is gone."""
    try:
        return step()
    except ServerGone as exc:
        error = exc
    pytest.fail(f"pipeweave: {error}", pytrace=False)


@pytest.fixture(scope="session")
def pipeweave_server(request: pytest.FixtureRequest) -> ServerInfo:
    """The PostgreSQL server of this test run, shared by all pytest-xdist workers."""
    try:
        return _session(request).server()
    except ServerUnavailable as exc:
        error = exc
    pytest.fail(f"pipeweave: {error}", pytrace=False)


@pytest.fixture(scope="session")
def pipeweave_template_setup() -> TemplateSetup | None:
    """Override to add your own tables or rows to the template database, once per run.

    Return a function taking a ``pipeweave_db.Database`` on the template (schema already
    created); every test database is cloned from the result.
    """
    return None


@pytest.fixture(scope="session")
def _pipeweave_worker_database(
    request: pytest.FixtureRequest,
    pipeweave_server: ServerInfo,
    pipeweave_template_setup: TemplateSetup | None,
) -> Iterator[WorkerDatabase]:
    from pytest_pipeweave.databases import WorkerDatabase, database_name, owner_comment

    session = _session(request)
    shared = session.shared
    assert shared is not None
    template = shared.template(pipeweave_template_setup)
    database = WorkerDatabase(
        pipeweave_server,
        template,
        database_name(shared.run.key, session.worker),
        comment=owner_comment(str(shared.run.path)),
    )
    database.create()
    session.databases.append(database.name)
    yield database
    # A server of the run's own takes its databases with it (a DROP right after disconnecting
    # can wait ~100 ms for the backend to exit); a server that outlives the run must not keep them.
    if pipeweave_server.backend == "url" and not session.settings.keep:
        database.drop()
    else:
        database.close()


@pytest.fixture(scope="session")
def pipeweave_database_url(_pipeweave_worker_database: WorkerDatabase) -> str:
    """The URL of this process's test database (schema initialized)."""
    return _pipeweave_worker_database.url


@pytest.fixture(scope="session")
def pipeweave_config(pipeweave_database_url: str) -> DatabaseConfig:
    """A DatabaseConfig for this process's test database."""
    return DatabaseConfig(connection_string=pipeweave_database_url)


@pytest.fixture
def pipeweave_database(
    request: pytest.FixtureRequest, _pipeweave_worker_database: WorkerDatabase
) -> Iterator[Database]:
    """A Database whose every change is rolled back after the test.

    In a test that also asks for ``pipeweave_database_committed`` (or ``pipeweave_env``), or
    that is marked ``@pytest.mark.pipeweave(committed=True)``, it is that committed Database,
    so factories and seeds write where the test reads.
    """
    if _committed_mode(request):
        yield request.getfixturevalue("pipeweave_database_committed")
        return
    try:
        with _pipeweave_worker_database.rolled_back() as db:
            yield db
            return
    except ServerGone as exc:
        error = exc
    pytest.fail(f"pipeweave: {error}", pytrace=False)


def _committed_mode(request: pytest.FixtureRequest) -> bool:
    if any(name in request.fixturenames for name in COMMITTED_FIXTURES):
        return True
    marker = request.node.get_closest_marker("pipeweave")
    if marker is None:
        return False
    if marker.args or set(marker.kwargs) - {"committed"}:
        pytest.fail(
            f"pipeweave: @pytest.mark.pipeweave takes committed=True or committed=False, "
            f"not {', '.join([*map(repr, marker.args), *marker.kwargs])}",
            pytrace=False,
        )
    return bool(marker.kwargs.get("committed", False))


@pytest.fixture
def pipeweave_database_committed(
    _pipeweave_worker_database: WorkerDatabase,
) -> Iterator[Database]:
    """A Database whose changes commit, visible to other connections, threads and processes.

    After the test the database is put back to its template state.
    """
    db = _fail_if_gone(_pipeweave_worker_database.committed)
    yield db
    db.close()
    _fail_if_gone(_pipeweave_worker_database.reset)


@pytest.fixture
def pipeweave_env(
    pipeweave_database_committed: Database,
    pipeweave_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """``DATABASE_URL`` set to the test database and ``DB_*`` cleared; returns the environment.

    Writes through it commit, so this fixture brings committed mode with it.
    """
    for name in list(os.environ):
        if name.startswith("DB_") or name in _CLEARED_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", pipeweave_database_url)
    return dict(os.environ)


@pytest.fixture
def pipeweave_factory(pipeweave_database: Database) -> PipeweaveFactory:
    """Builds valid rows for every PipeWeave table, creating the rows they refer to."""
    from pytest_pipeweave.factories import PipeweaveFactory

    return PipeweaveFactory(pipeweave_database)


@pytest.fixture
def pipeweave_seed(pipeweave_database: Database, pipeweave_factory: PipeweaveFactory) -> SeedData:
    """The standard dataset, written through ``pipeweave_database``."""
    from pytest_pipeweave.seed import seed_database

    return seed_database(pipeweave_database, pipeweave_factory)
