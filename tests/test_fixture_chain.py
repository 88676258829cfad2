"""Every link of the fixture chain overridden in a conftest, serial and under pytest-xdist.

The "user's own server" in these inner runs is one the test starts (``start_local_server``),
reached through ``ServerInfo.from_url``: the inner plugin must start nothing of its own, and
must leave that server's databases as it found them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from pytest_pipeweave import LocalServer, ServerInfo

pytestmark = pytest.mark.usefixtures("pipeweave_inner_env")

WORKERS = pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["serial", "xdist"])
OUTER = "OUTER_SERVER_URL"
StartServer = Callable[..., tuple[LocalServer, ServerInfo]]


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", *args, timeout=120)


def databases(server: ServerInfo) -> set[str]:
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}


@pytest.fixture
def users_server(start_local_server: StartServer, monkeypatch: pytest.MonkeyPatch) -> ServerInfo:
    """A server of the test's own (the outer run's is shared with tests that make databases
    on it meanwhile), its URL handed to the inner runs as a user would write it down."""
    _, server = start_local_server()
    monkeypatch.setenv(OUTER, server.url())
    return server


@pytest.fixture
def servers_folder(
    pipeweave_inner_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The inner runs' PIPEWEAVE_TMPDIR: empty afterwards if the plugin started nothing."""
    folder = tmp_path / "servers"
    folder.mkdir()
    monkeypatch.setenv("PIPEWEAVE_TMPDIR", str(folder))
    return folder


# Each inner test checks, while it runs, that the plugin made no folder of its own.
NOTHING_OF_THE_PLUGINS = """
import os
from pathlib import Path

def nothing_of_the_plugins():
    return not any(Path(os.environ["PIPEWEAVE_TMPDIR"]).iterdir())
"""


def run_with_nothing_of_the_plugins(
    pytester: pytest.Pytester,
    workers: tuple[str, ...],
    users_server: ServerInfo,
    servers_folder: Path,
    passed: int,
) -> None:
    """Run the inner tests: no server or run folder of the plugin's, the user's server's
    databases as before."""
    before = databases(users_server)
    result = run(pytester, *workers)
    result.assert_outcomes(passed=passed)
    assert "started in" not in result.stdout.str()
    assert list(servers_folder.iterdir()) == [], "no server, no run folder of the plugin's"
    assert databases(users_server) == before


@WORKERS
def test_a_server_of_the_users_own(
    pytester: pytest.Pytester,
    users_server: ServerInfo,
    servers_folder: Path,
    workers: tuple[str, ...],
) -> None:
    pytester.makeconftest(
        f"""
        import os
        import pytest
        from pytest_pipeweave import LocalServer, ServerInfo

        @pytest.fixture(scope="session")
        def pipeweave_server():
            return ServerInfo.from_url(os.environ[{OUTER!r}])
        """
    )
    pytester.makepyfile(
        NOTHING_OF_THE_PLUGINS
        + """
import pytest

COUNT = "SELECT count(*) AS n FROM services"

@pytest.mark.parametrize("i", range(6))
def test_rolled_back(i, pipeweave_server, pipeweave_database, pipeweave_factory):
    assert pipeweave_server.backend == "url" and not pipeweave_server.ephemeral
    where = pipeweave_database.one(
        "SELECT current_setting('unix_socket_directories') AS socket, current_database() AS db")
    assert where["socket"] == pipeweave_server.socket_dir
    assert where["db"].startswith("pytest_pipeweave_")
    pipeweave_factory.task_run()
    assert pipeweave_database.one(COUNT)["n"] == 1
    assert nothing_of_the_plugins()

def test_committed(pipeweave_database_committed, pipeweave_database_url):
    pipeweave_database_committed.none(
        "INSERT INTO services (id, version, base_url) VALUES ('c', '1', 'u')")
    assert nothing_of_the_plugins()

def test_committed_rows_are_gone(pipeweave_database_committed):
    assert pipeweave_database_committed.one(COUNT)["n"] == 0
"""
    )
    run_with_nothing_of_the_plugins(pytester, workers, users_server, servers_folder, 8)


@WORKERS
def test_template_setup_of_the_users_own(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def pipeweave_template_setup():
            def setup(db):
                db.none("CREATE TABLE deployments (id text PRIMARY KEY,"
                        " service_id text REFERENCES services(id))")
                db.none("INSERT INTO services (id, version, base_url) VALUES ('billing', '1', 'u')")
                db.none("INSERT INTO deployments VALUES ('d1', 'billing')")
            return setup
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_sees_the_setup(i, pipeweave_database):
            assert pipeweave_database.one("SELECT service_id FROM deployments") == {
                "service_id": "billing"}

        def test_committed_test_removes_template_rows(pipeweave_database_committed):
            pipeweave_database_committed.none("DELETE FROM deployments; DELETE FROM services")
            assert pipeweave_database_committed.one("SELECT count(*) AS n FROM deployments")["n"] == 0

        def test_template_rows_are_back(pipeweave_database_committed):
            assert pipeweave_database_committed.one("SELECT count(*) AS n FROM deployments")["n"] == 1
            assert pipeweave_database_committed.one("SELECT id FROM services") == {"id": "billing"}
        """
    )
    run(pytester, *workers).assert_outcomes(passed=6)


@WORKERS
def test_a_template_of_the_users_own(pytester: pytest.Pytester, workers: tuple[str, ...]) -> None:
    pytester.makeconftest(
        """
        import pytest
        from pytest_pipeweave import create_template, drop_database

        @pytest.fixture(scope="session")
        def pipeweave_template(pipeweave_server, worker_id):
            name = f"users_template_{worker_id}"

            def setup(db):
                db.none("CREATE TABLE deployments (id text PRIMARY KEY)")
                db.none("INSERT INTO deployments VALUES ('d1')")

            create_template(pipeweave_server, name, setup)
            yield name
            drop_database(pipeweave_server, name)
        """
    )
    pytester.makepyfile(
        """
        import pytest

        PLUGINS_TEMPLATES = (
            "SELECT count(*) AS n FROM pg_database"
            " WHERE starts_with(datname, 'pytest_pipeweave_') AND datname LIKE '%template'")

        @pytest.mark.parametrize("i", range(4))
        def test_copied_from_it(i, pipeweave_database, pipeweave_template):
            assert pipeweave_template.startswith("users_template_")
            assert pipeweave_database.one("SELECT id FROM deployments") == {"id": "d1"}
            assert pipeweave_database.one(PLUGINS_TEMPLATES)["n"] == 0

        def test_committed_changes_the_schema(pipeweave_database_committed):
            pipeweave_database_committed.none("DROP TABLE deployments")

        def test_copied_again_after_a_schema_change(pipeweave_database_committed):
            assert pipeweave_database_committed.one("SELECT id FROM deployments") == {"id": "d1"}
        """
    )
    run(pytester, *workers).assert_outcomes(passed=6)


@WORKERS
def test_a_database_url_of_the_users_own(
    pytester: pytest.Pytester,
    users_server: ServerInfo,
    servers_folder: Path,
    workers: tuple[str, ...],
) -> None:
    pytester.makeconftest(
        f"""
        import os
        import pytest
        from pytest_pipeweave import ServerInfo, ephemeral_database

        @pytest.fixture(scope="session")
        def pipeweave_database_url():
            with ephemeral_database(ServerInfo.from_url(os.environ[{OUTER!r}])) as url:
                yield url
        """
    )
    pytester.makepyfile(
        NOTHING_OF_THE_PLUGINS
        + """
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

COUNT = "SELECT count(*) AS n FROM task_runs"

@pytest.mark.parametrize("i", range(4))
def test_rolled_back(i, pipeweave_database, pipeweave_database_url, pipeweave_factory):
    database = pipeweave_database.one("SELECT current_database() AS db")["db"]
    assert database == conninfo_to_dict(pipeweave_database_url)["dbname"]
    pipeweave_factory.task_run()
    assert pipeweave_database.one(COUNT)["n"] == 1
    assert nothing_of_the_plugins()

def test_committed(pipeweave_database_committed, pipeweave_database_url, pipeweave_factory):
    pipeweave_factory.task_run()
    with psycopg.connect(pipeweave_database_url) as other:
        assert other.execute("SELECT count(*) FROM task_runs").fetchone() == (1,)

def test_committed_rows_are_gone(pipeweave_database_committed):
    assert pipeweave_database_committed.one(COUNT)["n"] == 0
"""
    )
    run_with_nothing_of_the_plugins(pytester, workers, users_server, servers_folder, 6)


@WORKERS
def test_a_database_of_the_users_own(pytester: pytest.Pytester, workers: tuple[str, ...]) -> None:
    """The factory and the seed write through the user's Database, with its own isolation."""
    pytester.makeconftest(
        """
        import pytest
        from pipeweave_db import PIPEWEAVE_TABLES, create_database

        @pytest.fixture
        def pipeweave_database(pipeweave_database_url):
            with create_database(connection_string=pipeweave_database_url,
                                 application_name="my-app", max=1) as db:
                yield db
                db.none(f"TRUNCATE {', '.join(PIPEWEAVE_TABLES)} CASCADE")
        """
    )
    pytester.makepyfile(
        """
        import psycopg
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_factory_writes_through_it(i, pipeweave_database, pipeweave_factory,
                                           pipeweave_database_url):
            assert pipeweave_factory.db is pipeweave_database
            assert pipeweave_factory.db.one(
                "SELECT current_setting('application_name') AS name")["name"] == "my-app"
            pipeweave_factory.task_run()
            with psycopg.connect(pipeweave_database_url) as other:  # the user's commits
                assert other.execute("SELECT count(*) FROM task_runs").fetchone() == (1,)

        def test_seed_writes_through_it(pipeweave_seed, pipeweave_database):
            assert pipeweave_database.one("SELECT count(*) AS n FROM services")["n"] == 3
        """
    )
    run(pytester, *workers).assert_outcomes(passed=5)
