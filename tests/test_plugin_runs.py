"""Whole runs: options, report lines, xdist, the url backend, keep, leftovers, a dying server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import KILL_THE_SERVER, pg_bin

import pytest_pipeweave.servers as servers
from pytest_pipeweave import LocalServer, ServerInfo
from pytest_pipeweave.processes import process_alive, wait_until
from pytest_pipeweave.runs import base_dir

pytestmark = pytest.mark.usefixtures("pipeweave_inner_env")

DB_TEST = """
def test_db(pipeweave_database):
    assert pipeweave_database.one("SELECT count(*) AS n FROM services")["n"] == 0
"""


def run(pytester: pytest.Pytester, *args: str, timeout: float = 120) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=timeout)


def postmaster_pid(info: ServerInfo | dict[str, str]) -> int:
    socket_dir = info.socket_dir if isinstance(info, ServerInfo) else info["socket_dir"]
    assert socket_dir is not None
    text = (Path(socket_dir).parent / "data" / "postmaster.pid").read_text()
    return int(text.split("\n", 1)[0])


# -- options and report lines ----------------------------------------------------------------


def test_help_lists_the_options(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--help")
    for option in ("backend", "url", "image", "pg-bin", "keep"):
        result.stdout.fnmatch_lines([f"*--pipeweave-{option}*"])
    result.stdout.fnmatch_lines(["*PIPEWEAVE_TEST_DATABASE_URL*", "*pipeweave_backend*"])


def test_header_says_backend_version_and_startup_time(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(DB_TEST)
    result = run(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["pipeweave: backend local (auto), PostgreSQL *"])
    # Started once the tests are collected, before the first of them.
    result.stdout.fnmatch_lines(
        ["collected 1 item", "pipeweave: local server PostgreSQL * started in *.* s *"],
        consecutive=True,
    )


def test_the_template_is_made_in_the_cached_cluster_for_the_next_runs(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that built its template leaves the cached cluster with one made; the next runs
    start with it, unless their template has a setup of its own."""
    folder = Path(
        tempfile.mkdtemp(prefix="pwc-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    )
    folder.chmod(0o755)
    monkeypatch.setenv("PIPEWEAVE_TMPDIR", str(folder))
    pytester.makepyfile(
        DB_TEST
        + textwrap.dedent(
            """
            def test_the_template_is_whole(pipeweave_database, pipeweave_server):
                notices = "SELECT count(*) AS n FROM pg_namespace WHERE nspname = %s"
                assert pipeweave_database.one(notices, ["pytest_pipeweave_notices"])["n"] == 1
                assert pipeweave_database.one("SELECT count(*) AS n FROM tasks")["n"] == 0
                names = "SELECT count(*) AS n FROM pg_database WHERE datname LIKE %s"
                assert pipeweave_database.one(names, ["%cached_template%"])["n"] == 0

            def test_committed(pipeweave_database_committed):
                pipeweave_database_committed.none(
                    "INSERT INTO services (id, version, base_url) VALUES ('s', '1', 'u')"
                )

            def test_committed_is_undone(pipeweave_database_committed):
                query = "SELECT count(*) AS n FROM services"
                assert pipeweave_database_committed.one(query)["n"] == 0
            """
        )
    )
    try:
        first = run(pytester, "-p", "no:randomly")
        first.assert_outcomes(passed=4)
        assert "made in the cached cluster" not in first.stdout.str()
        second = run(pytester, "-p", "no:randomly")
        second.assert_outcomes(passed=4)
        second.stdout.fnmatch_lines(["pipeweave: *template in *; template made in the cached *"])
        pytester.makeconftest(
            "import pytest\n\n@pytest.fixture(scope='session')\n"
            "def pipeweave_template_setup():\n    return lambda db: None\n"
        )
        with_setup = run(pytester, "-p", "no:randomly")
        with_setup.assert_outcomes(passed=4)
        assert "made in the cached cluster" not in with_setup.stdout.str()
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def test_no_server_is_started_when_no_test_needs_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain(): pass")
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert "started in" not in result.stdout.str()


# Each pytest process records which database drivers it imported, as it ends.
RECORD_DRIVERS = """
import sys
from pathlib import Path

def pytest_unconfigure(config):
    process = getattr(config, "workerinput", {}).get("workerid", "main")
    drivers = sorted({name.split(".")[0] for name in sys.modules} & {"psycopg", "psycopg_pool"})
    Path(f"drivers-{process}").write_text(" ".join(drivers))
"""


def test_a_run_without_database_tests_does_not_import_psycopg(pytester: pytest.Pytester) -> None:
    """The plugin loads into every pytest process of a project; most never connect."""
    pytester.makeconftest(RECORD_DRIVERS)
    pytester.makepyfile("def test_plain(): pass")
    run(pytester).assert_outcomes(passed=1)
    assert (pytester.path / "drivers-main").read_text() == ""


def test_xdist_controller_does_not_import_psycopg(pytester: pytest.Pytester) -> None:
    """The controller only owns the run; the workers connect (its imports delay them all)."""
    pytester.makeconftest(RECORD_DRIVERS)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_db(i, pipeweave_database):
            assert pipeweave_database.one("SELECT count(*) AS n FROM services")["n"] == 0
        """
    )
    run(pytester, "-n", "2").assert_outcomes(passed=4)
    assert (pytester.path / "drivers-main").read_text() == ""
    workers = {(pytester.path / f"drivers-gw{n}").read_text() for n in range(2)}
    assert "psycopg psycopg_pool" in workers


def test_unknown_backend_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(DB_TEST)
    result = run(pytester, "--pipeweave-backend=oracle")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown backend 'oracle'*auto, local, docker, url*"])


def test_command_line_beats_environment_beats_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\npipeweave_backend = url\n")
    pytester.makepyfile(DB_TEST)
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*the url backend needs --pipeweave-url*"])
    monkeypatch.setenv("PIPEWEAVE_BACKEND", "local")
    run(pytester).assert_outcomes(passed=1)
    result = run(pytester, "--pipeweave-backend=url")
    result.assert_outcomes(errors=1)


def test_bad_pg_bin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(DB_TEST)
    result = run(pytester, "--pipeweave-backend=local", "--pipeweave-pg-bin=/nonexistent")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*no initdb and postgres binaries in --pipeweave-pg-bin /nonexistent*"]
    )


def test_clear_error_when_no_backend_is_available(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process run, so that binary and Docker discovery can be made to find nothing.
    for backend in ("local", "docker"):
        monkeypatch.setattr(
            servers.BACKENDS[backend], "available", classmethod(lambda cls, settings: False)
        )
    pytester.makepyfile(DB_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*no PostgreSQL server available*--pipeweave-url*PostgreSQL binaries*Docker engine*"]
    )


# -- pytest-xdist --------------------------------------------------------------------------------


def test_xdist_workers_share_one_server(pytester: pytest.Pytester, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    pytester.makepyfile(
        f"""
        import pathlib, pytest

        @pytest.mark.parametrize("i", range(12))
        def test_worker(i, worker_id, pipeweave_server, pipeweave_database_url, pipeweave_database):
            pipeweave_database.none(
                "INSERT INTO services (id, version, base_url) VALUES (%s, '1', 'u')", [str(i)])
            assert pipeweave_database.one("SELECT count(*) AS n FROM services")["n"] == 1
            pathlib.Path({str(seen)!r}, f"{{worker_id}}-{{i}}").write_text(
                f"{{pipeweave_server.port}} {{pipeweave_database_url}}")
        """
    )
    result = run(pytester, "-n", "2")
    result.assert_outcomes(passed=12)
    records = {p.name.split("-")[0]: p.read_text().split() for p in seen.iterdir()}
    assert set(records) == {"gw0", "gw1"}
    assert len({port for port, _ in records.values()}) == 1, "one server for both workers"
    assert len({url for _, url in records.values()}) == 2, "one database per worker"
    port = int(next(iter(records.values()))[0])
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=port, user="postgres", connect_timeout=3)


# -- the url backend -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def existing_server() -> Iterator[ServerInfo]:
    """A server started outside any pytest run, standing for a CI service container."""
    bin_dir = pg_bin()
    server = LocalServer(
        bin_dir,
        base_dir() / f"test-existing-{uuid.uuid4().hex[:8]}",
        cache_dir=base_dir() / "cache",
    )
    info = server.start()
    with psycopg.connect(info.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE bystander")
    with psycopg.connect(info.url("bystander"), autocommit=True) as conn:
        conn.execute("CREATE TABLE precious (v text); INSERT INTO precious VALUES ('untouched')")
    yield info
    server.stop()


def databases(info: ServerInfo) -> set[str]:
    with psycopg.connect(info.url(), autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}


def test_url_backend_creates_and_drops_only_its_own_databases(
    pytester: pytest.Pytester, existing_server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = databases(existing_server)
    pytester.makepyfile(
        """
        def test_on_existing_server(pipeweave_server, pipeweave_database, pipeweave_database_url):
            assert pipeweave_server.backend == "url"
            assert "pytest_pipeweave_" in pipeweave_database_url
            pipeweave_database.none(
                "INSERT INTO services (id, version, base_url) VALUES ('a', '1', 'u')")

        def test_committed(pipeweave_database_committed):
            pipeweave_database_committed.none(
                "INSERT INTO services (id, version, base_url) VALUES ('b', '1', 'u')")
        """
    )
    url = existing_server.tcp_url("postgres")
    run(pytester, f"--pipeweave-url={url}").assert_outcomes(passed=2)
    # The environment variable alone selects the url backend under auto.
    monkeypatch.setenv("PIPEWEAVE_TEST_DATABASE_URL", url)
    result = run(pytester, "-n", "2")
    result.assert_outcomes(passed=2)
    assert databases(existing_server) == before
    with psycopg.connect(existing_server.url("bystander")) as conn:
        assert conn.execute("SELECT v FROM precious").fetchall() == [("untouched",)]


def new_role(server: ServerInfo, options: str) -> tuple[str, str]:
    """A fresh login role on ``server`` (with ``options``) and a URL that connects as it."""
    role = f"role_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN {options}")
    return role, f"postgresql://{role}@127.0.0.1:{server.port}/postgres"


def test_url_backend_as_a_role_that_may_only_create_databases(
    pytester: pytest.Pytester, existing_server: ServerInfo
) -> None:
    """A shared server seldom hands out a superuser: CREATEDB must be enough."""
    _, url = new_role(existing_server, "CREATEDB NOSUPERUSER")
    before = databases(existing_server)
    pytester.makepyfile(
        """
        COUNT = "SELECT count(*) AS n FROM services"

        def test_rolled_back(pipeweave_database, pipeweave_seed):
            assert pipeweave_database.one(COUNT)["n"] > 0

        def test_committed(pipeweave_database_committed, pipeweave_factory):
            pipeweave_factory.task_run()
            assert pipeweave_database_committed.one(COUNT)["n"] == 1

        def test_committed_rows_are_gone(pipeweave_database_committed):
            assert pipeweave_database_committed.one(COUNT)["n"] == 0

        def test_not_a_superuser(pipeweave_database):
            assert pipeweave_database.one("SHOW is_superuser")["is_superuser"] == "off"
        """
    )
    run(pytester, f"--pipeweave-url={url}").assert_outcomes(passed=4)
    assert databases(existing_server) == before


def test_url_backend_refuses_a_role_that_may_not_create_databases(
    pytester: pytest.Pytester, existing_server: ServerInfo
) -> None:
    role, url = new_role(existing_server, "NOCREATEDB")
    pytester.makepyfile(DB_TEST)
    result = run(pytester, f"--pipeweave-url={url}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"*pipeweave: role '{role}' may not create databases: the url backend needs CREATEDB*"]
    )


# -- keep, leftovers, a dying server --------------------------------------------------------------


WAITING_TEST = """
import json, pathlib, time

def test_wait(pipeweave_server, pipeweave_database_url):
    info = {{"socket_dir": pipeweave_server.socket_dir, "url": pipeweave_database_url,
            "backend": pipeweave_server.backend, "port": pipeweave_server.port}}
    pathlib.Path({marker!r}).write_text(json.dumps(info))
    deadline = time.monotonic() + 120
    while not pathlib.Path({release!r}).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
"""


class WaitingRun:
    """An inner pytest run that holds its server until released (or killed)."""

    def __init__(self, pytester: pytest.Pytester, tmp_path: Path, *args: str) -> None:
        name = f"waiting_{uuid.uuid4().hex[:6]}"
        self.marker = tmp_path / f"{name}.json"
        self.release = tmp_path / f"{name}.release"
        test_file = pytester.makepyfile(
            **{
                f"test_{name}": WAITING_TEST.format(
                    marker=str(self.marker), release=str(self.release)
                )
            }
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(test_file), *args],
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if not wait_until(self.marker.exists, 60):
            self.process.kill()
            raise AssertionError(f"the inner run never reached its test: {self.process.stdout}")
        self.info: dict[str, str] = json.loads(self.marker.read_text())

    def finish(self) -> str:
        self.release.write_text("")
        out, _ = self.process.communicate(timeout=60)
        return out


def test_sigkilled_run_leaves_nothing_that_breaks_the_next(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    killed = WaitingRun(pytester, tmp_path)
    pid = postmaster_pid(killed.info)
    run_dir = Path(killed.info["socket_dir"]).parents[1]
    os.kill(killed.process.pid, signal.SIGKILL)
    killed.process.wait()
    assert process_alive(pid), "a SIGKILLed run cannot stop its server"
    assert run_dir.exists()

    live = WaitingRun(pytester, tmp_path)  # the next run, still going: its server is not a leftover
    assert wait_until(lambda: not process_alive(pid), 10), (
        "the next run stopped the dead run's server"
    )
    assert not run_dir.exists()

    db_test = pytester.makepyfile(test_db=DB_TEST)
    run(pytester, str(db_test)).assert_outcomes(passed=1)
    assert process_alive(postmaster_pid(live.info)), "a live run's server is never taken"
    assert "1 passed" in live.finish()


def test_url_backend_drops_databases_of_killed_runs(
    pytester: pytest.Pytester, tmp_path: Path, existing_server: ServerInfo
) -> None:
    before = databases(existing_server)
    url = existing_server.tcp_url("postgres")
    killed = WaitingRun(pytester, tmp_path, f"--pipeweave-url={url}")
    leftovers = databases(existing_server) - before
    assert len(leftovers) == 2  # the template and the clone
    os.kill(killed.process.pid, signal.SIGKILL)
    killed.process.wait()
    db_test = pytester.makepyfile(test_db=DB_TEST)
    run(pytester, str(db_test), f"--pipeweave-url={url}").assert_outcomes(passed=1)
    assert databases(existing_server) == before


def test_keep_leaves_the_server_running(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_write(pipeweave_database_committed):
            pipeweave_database_committed.none(
                "INSERT INTO services (id, version, base_url) VALUES ('kept', '1', 'u')")
        """
    )
    result = run(pytester, "--pipeweave-keep")
    result.assert_outcomes(passed=1)
    output = result.stdout.str()
    url = re.search(r"server kept running: psql '([^']+)'", output)
    stop = re.search(r"to stop it: (.+)", output)
    assert url and stop, output
    try:
        with psycopg.connect(url.group(1)) as conn:
            assert conn.execute("SELECT count(*) FROM services").fetchone() == (0,)
        db_test = pytester.makepyfile(test_db=DB_TEST)
        run(pytester, str(db_test)).assert_outcomes(passed=1)
        with psycopg.connect(url.group(1)) as conn:  # another run did not take it
            conn.execute("SELECT 1")
    finally:
        subprocess.run(stop.group(1), shell=True, check=True)
    assert wait_until(lambda: not _answers(url.group(1)), 10)


def _answers(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def test_server_dying_mid_session_fails_tests_fast_and_clearly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        KILL_THE_SERVER
        + textwrap.dedent(
            """
            def test_kill_the_server(pipeweave_server, pipeweave_database):
                kill_the_server(pipeweave_server)

            def test_rollback_after(pipeweave_database):
                pass

            def test_committed_after(pipeweave_database_committed):
                pass
            """
        )
    )
    result = run(pytester, timeout=60)
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*pipeweave: the local test server stopped answering*"])
    assert result.duration < 30


def test_works_without_pytest_xdist(pytester: pytest.Pytester) -> None:
    """xdist is optional: without it, its hooks are unknown to pytest and must not break runs."""
    pytester.makepyfile(DB_TEST)
    run(pytester, "-p", "no:xdist").assert_outcomes(passed=1)
