"""The fixtures: a chain in which each link receives what it needs as fixture arguments.

::

    pipeweave_server              session   the running server (ServerInfo)
    pipeweave_template_setup      session   None, or a function that adds to the template once
    pipeweave_template_key        session   None, or what the setup depends on (with reuse)
    pipeweave_template            session   the database every test database is copied from
    pipeweave_database_url        session   this process's test database, copied from it
    pipeweave_config              session   a DatabaseConfig for it
    pipeweave_database            function  rolled back after the test (committed if asked)
    pipeweave_database_committed  function  real commits; the database is restored after
    pipeweave_env                 function  DATABASE_URL for create_database_from_env and the CLI
    pipeweave_connection          function  the psycopg connection of the test's transaction
    pipeweave_factory             function  rows for every table
    pipeweave_seed                function  the standard dataset
    pipeweave_queries             function  the statements the test ran through them
    pipeweave_assert_num_queries  function  with pipeweave_assert_num_queries(3): ... (and _max_)
    pipeweave_module_database     module    data for a module's tests, rolled back at its end
    pipeweave_class_database      class     the same for a class, inside the module's

and for async tests, over the same pipeweave_database_url::

    pipeweave_async_database            function  an AsyncDatabase, rolled back (or committed)
    pipeweave_async_database_committed  function  real commits; the database is restored after
    pipeweave_async_factory             function  rows for every table, awaited
    pipeweave_async_seed                function  the standard dataset
    pipeweave_async_module_database     module    data for a module's async tests
    pipeweave_async_class_database      class     the same for a class, inside the module's

Override any link in a conftest.py (keeping its scope) and everything below it follows, as
with pytest-django's ``django_db_setup``: a ``pipeweave_server`` of your own means the plugin
starts no server; a ``pipeweave_database_url`` of your own means it needs none.

Each fixture imports the database code it needs (psycopg with it) when it first runs: this
module is loaded into every pytest process, most of which never use a database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pipeweave_db.config import DatabaseConfig
from pytest_pipeweave.errors import PluginError, first_line
from pytest_pipeweave.servers import ServerInfo
from pytest_pipeweave.session import PipeweaveSession

if TYPE_CHECKING:
    import psycopg

    from pipeweave_db import AsyncDatabase, Database
    from pytest_pipeweave.databases import DatabaseJanitor, TemplateSetup
    from pytest_pipeweave.factories import AsyncPipeweaveFactory, PipeweaveFactory
    from pytest_pipeweave.isolation import WorkerDatabase
    from pytest_pipeweave.queries import CapturedQueries
    from pytest_pipeweave.seed import SeedData

COMMITTED_FIXTURES = frozenset(
    ("pipeweave_database_committed", "pipeweave_async_database_committed", "pipeweave_env")
)
# pytest's names for the plugins that run async tests.
ASYNC_RUNNERS = ("asyncio", "anyio")
# Variables that would send create_database_from_env() somewhere else than the test database.
_CLEARED_VARIABLES = ("AUTO_INIT_DB", "NODE_ENV", "PIPEWEAVE_ENV")


@dataclasses.dataclass(frozen=True)
class _CopiedDatabase:
    """A test database the plugin copied from its template: how to open it (so that one whose
    schema a committed test changed is copied again), and what made it (for keep-failed)."""

    open: Callable[[], WorkerDatabase]
    janitor: DatabaseJanitor
    template: str
    server: ServerInfo


# The test databases the plugin copied, by URL. A URL from an overridden
# pipeweave_database_url is not in it.
_WORKER_DATABASES = pytest.StashKey[dict[str, _CopiedDatabase]]()
# The worker database that holds module or class data open, for the check in
# ``data_fixture_outlives_class``.
HOLDING = pytest.StashKey["WorkerDatabase"]()
# This process's worker database while it is open (``_worker``), and the fixtures through
# which a test reaches it (the two per-test databases through the stash, not as an argument).
_OPEN_WORKER = pytest.StashKey["WorkerDatabase"]()
REACHES_WORKER_DATABASE = frozenset(
    ("pipeweave_database", "pipeweave_async_database", "_pipeweave_worker_database")
)


def _session(request: pytest.FixtureRequest) -> PipeweaveSession:
    """For the function fixtures. The session fixtures take pytestconfig, not request: pytest
    makes a new fixture definition for each "request" it meets while checking a test's fixture
    chain, test after test."""
    return PipeweaveSession.of(request.config)


@contextlib.contextmanager
def _one_line_failures() -> Iterator[None]:
    """The plugin's own errors (no server, a server gone) as one line in the report."""
    try:
        yield
    except PluginError as exc:
        # Raised from a with block's exit: without "from None" the report would show the
        # PluginError too, as the exception being handled.
        raise pytest.fail.Exception(f"pipeweave: {exc}", pytrace=False) from None


def _pipeweave_marker(committed: bool = False) -> bool:
    """The signature of ``@pytest.mark.pipeweave(...)``: Python checks the arguments."""
    return committed


@pytest.fixture(scope="session")
def pipeweave_server(pytestconfig: pytest.Config) -> ServerInfo:
    """The PostgreSQL server of this test run, shared by all pytest-xdist workers.

    Override it to use a server you run: return ``ServerInfo.from_url(...)`` (the role needs
    CREATEDB); the plugin then starts no server of its own.
    """
    with _one_line_failures():
        server = PipeweaveSession.of(pytestconfig).server()
    return server


@pytest.fixture(scope="session")
def _pipeweave_janitor(
    pytestconfig: pytest.Config, pipeweave_server: ServerInfo
) -> Iterator[DatabaseJanitor]:
    from pytest_pipeweave.databases import DatabaseJanitor

    session = PipeweaveSession.of(pytestconfig)
    with _one_line_failures():
        janitor = DatabaseJanitor(pipeweave_server, session.run_key, keep=session.settings.keep)
        if session.settings.keep_failed:
            janitor.drop_failed_copies()
        if session.settings.reap_after is not None and not pipeweave_server.ephemeral:
            session.reaped = janitor.drop_older_than(session.settings.reap_after)
    yield janitor
    janitor.close()


@pytest.fixture(scope="session")
def pipeweave_template_setup() -> TemplateSetup | None:
    """Override to add your own tables or rows to the template database, once per run.

    Return a function taking a ``pipeweave_db.Database`` on the template (schema already
    created); every test database is copied from the result.
    """
    return None


@pytest.fixture(scope="session")
def pipeweave_template_key() -> str | None:
    """With reuse, what ``pipeweave_template_setup`` depends on, as text: the template is
    built again when it changes. None (the default) keys it by the setup function's code.

    Override it when the setup reads files or calls code of its own (a migrations folder,
    say): return a hash of them, as pgtestdb keys templates by their migrations.
    """
    return None


@pytest.fixture(scope="session")
def pipeweave_template(
    pytestconfig: pytest.Config,
    pipeweave_server: ServerInfo,
    _pipeweave_janitor: DatabaseJanitor,
    pipeweave_template_setup: TemplateSetup | None,
    pipeweave_template_key: str | None,
) -> str:
    """The name of the database on ``pipeweave_server`` that every test database is copied
    from: the PipeWeave schema and ``pipeweave_template_setup``, built once per run (with
    reuse, once for as long as the migrations, PostgreSQL and the setup stay the same).

    Override it to return a template database of your own on that server.
    """
    from pytest_pipeweave.databases import TemplateKey

    session = PipeweaveSession.of(pytestconfig)
    settings = session.settings
    key = None
    if settings.reuse:
        key = TemplateKey.of(pipeweave_server, pipeweave_template_setup, pipeweave_template_key)
    with _one_line_failures():
        template = _pipeweave_janitor.template(
            pipeweave_template_setup, reuse=key, recreate=settings.recreate
        )
    if template.build_seconds is not None:
        session.template_seconds = template.build_seconds
    if template.cached and key is None:
        session.template_note = "template made in the cached cluster"
    if key is not None:
        if template.build_seconds is None:
            session.template_note = "template reused"
        elif template.rebuilt is None:
            session.template_note = "template built for reuse"
        else:
            session.template_note = f"template rebuilt: {template.rebuilt}"
    return template.name


@pytest.fixture(scope="session")
def pipeweave_database_url(
    pytestconfig: pytest.Config,
    pipeweave_server: ServerInfo,
    _pipeweave_janitor: DatabaseJanitor,
    pipeweave_template: str,
) -> Iterator[str]:
    """The URL of this process's test database, a copy of ``pipeweave_template``.

    Override it to return the URL of a database of your own (with the schema); the fixtures
    below use it, and no server is started unless your fixture asks for one.
    """
    from pytest_pipeweave.isolation import WorkerDatabase

    session = PipeweaveSession.of(pytestconfig)
    with _one_line_failures():
        url = _pipeweave_janitor.clone(pipeweave_template, session.worker)
    name = _pipeweave_janitor.name(session.worker)
    session.databases.append(name)
    opened = pytestconfig.stash.setdefault(_WORKER_DATABASES, {})
    opened[url] = _CopiedDatabase(
        functools.partial(
            WorkerDatabase,
            url,
            recreate=functools.partial(_pipeweave_janitor.recreate, pipeweave_template, name),
            server=f"{pipeweave_server.backend} test server",
        ),
        _pipeweave_janitor,
        pipeweave_template,
        pipeweave_server,
    )
    yield url
    del opened[url]


@pytest.fixture(scope="session")
def _pipeweave_worker_database(request: pytest.FixtureRequest) -> Iterator[WorkerDatabase]:
    """The connections to ``pipeweave_database_url``, asked for when first needed rather than
    taken as an argument: before every test pytest checks each argument of each fixture in the
    test's chain again, and the chain behind the URL cost as much as BEGIN and ROLLBACK."""
    from pytest_pipeweave.isolation import WorkerDatabase

    url: str = request.getfixturevalue("pipeweave_database_url")
    copied = request.config.stash.get(_WORKER_DATABASES, {}).get(url)
    database = copied.open() if copied is not None else WorkerDatabase(url)
    request.config.stash[_OPEN_WORKER] = database
    yield database
    del request.config.stash[_OPEN_WORKER]
    database.close()


def _worker(request: pytest.FixtureRequest) -> WorkerDatabase:
    """``_pipeweave_worker_database`` for ``pipeweave_database`` and the async one, from the
    stash once open: as an argument it cost two fixture definitions a test (pytest 9 makes
    one for each "request" it meets in a test's chain, behind a cached session fixture too)."""
    worker = request.config.stash.get(_OPEN_WORKER, None)
    if worker is None:
        worker = request.getfixturevalue("_pipeweave_worker_database")
    return worker


@pytest.fixture(scope="session")
def pipeweave_config(pipeweave_database_url: str) -> DatabaseConfig:
    """A DatabaseConfig for this process's test database."""
    return DatabaseConfig(connection_string=pipeweave_database_url)


@pytest.fixture
def pipeweave_database(request: pytest.FixtureRequest) -> Iterator[Database]:
    """A Database whose every change is rolled back after the test.

    In a test that also asks for ``pipeweave_database_committed`` (or ``pipeweave_env``), or
    that is marked ``@pytest.mark.pipeweave(committed=True)``, it is that committed Database,
    so factories and seeds write where the test reads.
    """
    if _committed_mode(request):
        yield request.getfixturevalue("pipeweave_database_committed")
        return
    worker = _worker(request)
    with _one_line_failures(), worker.rolled_back() as db:
        yield db
    _report_leaked_commits(request, worker, "the test")


def _report_leaked_commits(
    request: pytest.FixtureRequest, worker: WorkerDatabase, who: str
) -> None:
    """Warn of (or with ``--pipeweave-strict``, fail on) writes that other connections
    committed while a rollback-mode transaction was open, then put the database back."""
    if not worker.written:
        return
    from pytest_pipeweave.leaks import LeakedCommitWarning, leak_message

    tables = set(worker.written)
    worker.written.clear()
    with _one_line_failures():
        put_back = worker.put_back(tables)
    message = leak_message(tables, who) + (
        "; the database was put back to its template state for the next tests"
        if put_back
        else "; they stay for the next tests"
    )
    if _session(request).settings.strict:
        pytest.fail(f"pipeweave: {message}", pytrace=False)
    location = getattr(request.node, "location", None)
    warnings.warn_explicit(
        LeakedCommitWarning(message),
        LeakedCommitWarning,
        str(request.node.path),
        location[1] + 1 if location and location[1] is not None else 1,
    )


def _committed_mode(request: pytest.FixtureRequest) -> bool:
    if not COMMITTED_FIXTURES.isdisjoint(request.fixturenames):  # a list, built at each read
        return True
    marker = request.node.get_closest_marker("pipeweave")
    if marker is None:
        return False
    try:
        arguments = inspect.signature(_pipeweave_marker).bind(*marker.args, **marker.kwargs)
    except TypeError:
        given = [*map(repr, marker.args), *(k for k in marker.kwargs if k != "committed")]
        pytest.fail(
            "pipeweave: @pytest.mark.pipeweave takes committed=True or committed=False, "
            f"not {', '.join(given)}",
            pytrace=False,
        )
    return bool(_pipeweave_marker(*arguments.args, **arguments.kwargs))


@pytest.fixture
def pipeweave_database_committed(
    _pipeweave_worker_database: WorkerDatabase,
) -> Iterator[Database]:
    """A Database whose changes commit, visible to other connections, threads and processes.

    After the test the database is put back to its template state.
    """
    with _one_line_failures():
        db = _pipeweave_worker_database.committed()
    yield db
    db.close()
    with _one_line_failures():
        _pipeweave_worker_database.reset()


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
def pipeweave_connection(
    request: pytest.FixtureRequest,
    pipeweave_database: Database,
    _pipeweave_worker_database: WorkerDatabase,
) -> Iterator[psycopg.Connection[Any]]:
    """The psycopg connection of the test's transaction, for clients that take a connection.

    In rollback mode what it runs is undone with the test; its ``commit()`` and ``rollback()``
    raise (psycopg's guard of a transaction block), so code under test cannot end the test's
    transaction. In committed mode it is a connection of the pool, autocommit.
    """
    if _committed_mode(request):
        with _one_line_failures(), _pipeweave_worker_database.committed_connection() as conn:
            yield conn
        return
    conn = _pipeweave_worker_database.connection()
    with _one_line_failures():
        conn.settle()  # so that code under test finds the transaction begun, as it reads it
    yield conn


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


# -- the data of a failed test ------------------------------------------------------------------


def keep_failed_test_data(item: pytest.Item) -> str | None:
    """With ``--pipeweave-keep-failed``: the data a failed test saw, copied into a database of
    its own while the test's fixtures are still up; what the report says of it."""
    if not PipeweaveSession.of(item.config).settings.keep_failed:
        return None
    worker = item.config.stash.get(_OPEN_WORKER, None)
    if worker is None or REACHES_WORKER_DATABASE.isdisjoint(getattr(item, "fixturenames", ())):
        return None
    copied = item.config.stash.get(_WORKER_DATABASES, {}).get(worker.url)
    if copied is None:
        return "not kept: the test database is one of your own (pipeweave_database_url)"
    janitor, template, server = copied.janitor, copied.template, copied.server
    import psycopg

    from pipeweave_db import mask_url

    session = PipeweaveSession.of(item.config)
    session.kept += 1
    label = f"{session.worker}_{session.kept}_{item.name}"
    try:
        name = janitor.keep_failed(template, label)
        missing = worker.copy_view(server.url(name))
    except (PluginError, psycopg.Error) as exc:
        return f"not kept: {first_line(exc)}"
    lines = [
        f"the data the test saw is kept in database {name}",
        f"    psql '{mask_url(server.url(name))}'",
        f"    drop it: DROP DATABASE {name};  (the next run with --pipeweave-keep-failed drops "
        "what runs before it kept)",
    ]
    if missing:
        lines.insert(1, f"    ({missing})")
    return "\n".join(lines)


# -- statements and their number ----------------------------------------------------------------


@pytest.fixture
def pipeweave_queries(_pipeweave_worker_database: WorkerDatabase) -> Iterator[CapturedQueries]:
    """Every statement the test runs through the plugin's Databases (rollback, committed,
    factory, seed, sync and async), in order, each with its SQL, parameter count and duration."""
    with _pipeweave_worker_database.capture() as captured:
        yield captured


CountAssertion = Callable[[int], contextlib.AbstractContextManager["CapturedQueries"]]


def _count_assertion(worker: WorkerDatabase, *, exact: bool) -> CountAssertion:
    @contextlib.contextmanager
    def assert_count(count: int) -> Iterator[CapturedQueries]:
        from pytest_pipeweave.queries import count_mismatch

        with worker.capture() as captured:
            yield captured
        mismatch = count_mismatch(captured, count, exact=exact)
        if mismatch is not None:
            pytest.fail(mismatch)

    return assert_count


@pytest.fixture
def pipeweave_assert_num_queries(_pipeweave_worker_database: WorkerDatabase) -> CountAssertion:
    """``with pipeweave_assert_num_queries(3): ...`` fails unless the block ran 3 statements,
    listing those it ran, numbered (pytest-django's ``django_assert_num_queries``)."""
    return _count_assertion(_pipeweave_worker_database, exact=True)


@pytest.fixture
def pipeweave_assert_max_num_queries(
    _pipeweave_worker_database: WorkerDatabase,
) -> CountAssertion:
    """``with pipeweave_assert_max_num_queries(3): ...``: at most 3 statements."""
    return _count_assertion(_pipeweave_worker_database, exact=False)


# -- data for a module or a class ---------------------------------------------------------------
#
# Transactions held open for the scope on the test connection: each test inside is a savepoint.
# The class's depends on the module's, so that they always end in the order they began.


@pytest.fixture(scope="module")
def pipeweave_module_database(
    request: pytest.FixtureRequest, _pipeweave_worker_database: WorkerDatabase
) -> Iterator[Database]:
    """A Database in a transaction held open for the module, rolled back at its end.

    What a module-scoped fixture writes through it, every test of the module sees; each
    test's own writes (``pipeweave_database``, factory, seed) are undone before the next.
    """
    request.config.stash[HOLDING] = _pipeweave_worker_database
    with _one_line_failures(), _pipeweave_worker_database.rolled_back(holder="module") as db:
        yield db
    _report_leaked_commits(request, _pipeweave_worker_database, "a test of this module")


@pytest.fixture(scope="class")
def pipeweave_class_database(
    pipeweave_module_database: Database, _pipeweave_worker_database: WorkerDatabase
) -> Iterator[Database]:
    """``pipeweave_module_database`` for a class: its data is rolled back at the class's end."""
    with _one_line_failures(), _pipeweave_worker_database.rolled_back(holder="class") as db:
        yield db


def data_fixture_outlives_class(fixturedef: pytest.FixtureDef[Any], config: pytest.Config) -> None:
    """Refuse a module-scoped fixture that writes module data, first needed inside a class
    that holds data of its own.

    It would write into the class's transaction: its data would go at the class's end, while
    pytest keeps the fixture for the rest of the module.
    """
    if fixturedef.scope != "module":
        return
    holding = config.stash.get(HOLDING, None)
    if holding is None:
        return
    for argname, held in (
        ("pipeweave_module_database", holding.held),
        ("pipeweave_async_module_database", holding.async_held),
    ):
        if argname in fixturedef.argnames and "class" in held:
            pytest.fail(
                f"pipeweave: the module fixture {fixturedef.argname} is first needed inside a "
                "class that holds data of its own, whose end would undo what it writes: add "
                f"@pytest.mark.usefixtures({fixturedef.argname!r}) to the class",
                pytrace=False,
            )


# -- async tests ---------------------------------------------------------------------------------
#
# Plain (sync) fixtures: the transaction around a test is begun and ended on the worker
# database's own loop, so they serve any async test runner, and tests on any loop scope.


def _require_async_runner(request: pytest.FixtureRequest) -> None:
    """An async test with nothing to run it: say what to install, in one line."""
    plugins = request.config.pluginmanager
    if inspect.iscoroutinefunction(getattr(request, "function", None)) and not any(
        plugins.hasplugin(name) for name in ASYNC_RUNNERS
    ):
        pytest.fail(
            "pipeweave: async tests need an async test runner: pip install pytest-asyncio "
            "(or use anyio's pytest plugin, @pytest.mark.anyio)",
            pytrace=False,
        )


@pytest.fixture
def pipeweave_async_database(request: pytest.FixtureRequest) -> Iterator[AsyncDatabase]:
    """An AsyncDatabase whose every change is rolled back after the test.

    As ``pipeweave_database``: ``tx()`` in code under test is a savepoint, a failing statement
    does not poison the test's transaction, and committed mode (``pipeweave_env``, the
    committed fixtures, ``@pytest.mark.pipeweave(committed=True)``) makes it commit.
    """
    _require_async_runner(request)
    if _committed_mode(request):
        yield request.getfixturevalue("pipeweave_async_database_committed")
        return
    worker = _worker(request)
    with _one_line_failures(), worker.async_rolled_back() as db:
        yield db
    _report_leaked_commits(request, worker, "the test")


@pytest.fixture
def pipeweave_async_database_committed(
    request: pytest.FixtureRequest, _pipeweave_worker_database: WorkerDatabase
) -> Iterator[AsyncDatabase]:
    """An AsyncDatabase whose changes commit, visible to other connections and processes.

    After the test the database is put back to its template state.
    """
    _require_async_runner(request)
    with _one_line_failures():
        db = _pipeweave_worker_database.async_committed()
    yield db
    with _one_line_failures():
        _pipeweave_worker_database.reset()


@pytest.fixture
def pipeweave_async_factory(pipeweave_async_database: AsyncDatabase) -> AsyncPipeweaveFactory:
    """``pipeweave_factory`` through the test's AsyncDatabase: ``await factory.task_run()``."""
    from pytest_pipeweave.factories import AsyncPipeweaveFactory

    return AsyncPipeweaveFactory(pipeweave_async_database)


@pytest.fixture
def pipeweave_async_seed(
    _pipeweave_worker_database: WorkerDatabase,
    pipeweave_async_database: AsyncDatabase,
    pipeweave_async_factory: AsyncPipeweaveFactory,
) -> SeedData:
    """The standard dataset, written through ``pipeweave_async_database`` before the test."""
    from pytest_pipeweave.seed import seed_database_async

    return _pipeweave_worker_database.call(
        seed_database_async(pipeweave_async_database, pipeweave_async_factory)
    )


@pytest.fixture(scope="module")
def pipeweave_async_module_database(
    request: pytest.FixtureRequest, _pipeweave_worker_database: WorkerDatabase
) -> Iterator[AsyncDatabase]:
    """``pipeweave_module_database`` for async tests (their connection is another one):
    what a module-scoped async fixture writes through it, every async test of the module sees.
    """
    request.config.stash[HOLDING] = _pipeweave_worker_database
    with _one_line_failures(), _pipeweave_worker_database.async_rolled_back("module") as db:
        yield db
    _report_leaked_commits(request, _pipeweave_worker_database, "a test of this module")


@pytest.fixture(scope="class")
def pipeweave_async_class_database(
    pipeweave_async_module_database: AsyncDatabase, _pipeweave_worker_database: WorkerDatabase
) -> Iterator[AsyncDatabase]:
    """``pipeweave_async_module_database`` for a class, rolled back at the class's end."""
    with _one_line_failures(), _pipeweave_worker_database.async_rolled_back("class") as db:
        yield db
