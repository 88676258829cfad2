"""Many runs from many hosts on one shared server (the url backend), as sharded CI does.

Hosts are simulated with UTS namespaces (``unshare --uts``, as root): each run sees a host
name of its own, on one server that this module starts (``ephemeral_server``), so that the
age limit of the runs here never reaches the outer run's databases.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pytest_pipeweave import ServerInfo, ephemeral_server
from pytest_pipeweave.processes import wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="simulating hosts takes unshare --uts, as root",
)

HOSTS = ("ci-host-1", "ci-host-2", "ci-host-3", "ci-host-4")
SUITE = """
import os, pathlib, time

def test_rollback(pipeweave_database, pipeweave_factory):
    pipeweave_factory.task_run()
    assert pipeweave_database.one("SELECT count(*) AS n FROM task_runs")["n"] == 1

def test_committed(pipeweave_database_committed):
    pipeweave_database_committed.none(
        "INSERT INTO services (id, version, base_url) VALUES ('s', '1', 'http://s')")

def test_hold(pipeweave_database):
    '''Tells it got here, then waits for the go file (a held run waits until it is killed).'''
    folder = pathlib.Path(os.environ["HOLD_DIR"])
    (folder / ("reached-" + os.environ["HOST"])).write_text("")
    deadline = time.monotonic() + 120
    while not (folder / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (folder / "go").exists()
"""


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ServerInfo]:
    with ephemeral_server() as server:
        yield ServerInfo.from_url(server.admin_url)


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "hold").mkdir()
    return tmp_path


def start_run(
    suite: Path, server: ServerInfo, host: str, *args: str, **env: str
) -> subprocess.Popen[str]:
    """A pytest run of ``suite`` (``-n 2``) from host ``host``, in a process group of its own."""
    variables = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PIPEWEAVE_", "PYTEST_", "DB_", "PG"))
    }
    variables.update(
        PIPEWEAVE_TEST_DATABASE_URL=server.admin_url,
        HOLD_DIR=str(suite / "hold"),
        HOST=host,
        **env,
    )
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", *args]
    return subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host, *command],
        cwd=suite,
        env=variables,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(run: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = run.communicate(timeout=300)
    return run.returncode, out


def ours(server: ServerInfo) -> dict[str, str]:
    """The plugin's databases on ``server``: name -> comment."""
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname, coalesce(shobj_description(oid, 'pg_database'), '')"
            " FROM pg_database WHERE starts_with(datname, 'pytest_pipeweave_')"
        ).fetchall()
    return {name: comment for name, comment in rows}


def reached(suite: Path, *hosts: str) -> bool:
    return all((suite / "hold" / f"reached-{host}").exists() for host in hosts)


def label(host: str) -> str:
    return host.replace("-", "")


def test_four_hosts_share_one_server_and_a_killed_runs_leftovers_go_with_its_next_run(
    shared_server: ServerInfo, suite: Path
) -> None:
    # One run id for all four shards, as a CI pipeline may hand each of them: the names still
    # differ by host and run.
    runs = {
        host: start_run(suite, shared_server, host, "--testrunuid=pipeline-42") for host in HOSTS
    }
    killed = runs[HOSTS[-1]]
    try:
        assert wait_until(lambda: reached(suite, *HOSTS), 120), {
            host: run.poll() for host, run in runs.items()
        }

        def of(host: str) -> list[str]:
            return [name for name in ours(shared_server) if f"_{label(host)}_" in name]

        # The template and each worker's database, the comment naming the host.
        assert wait_until(lambda: all(len(of(host)) == 3 for host in HOSTS), 30), sorted(
            ours(shared_server)
        )
        during = ours(shared_server)
        assert all(f"host={host} created=" in during[name] for host in HOSTS for name in of(host))
        run_keys = {name.split("_")[2] for name in during}
        assert len(run_keys) == 4, sorted(during)
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
        (suite / "hold" / "go").write_text("")
        for host in HOSTS[:-1]:
            status, out = finish(runs[host])
            assert status == 0, out
            assert "3 passed" in out, out
    finally:
        (suite / "hold" / "go").write_text("")
        for run in runs.values():
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(timeout=30)
    left = ours(shared_server)
    assert left and all(f"_{label(HOSTS[-1])}_" in name for name in left), sorted(left)
    status, out = finish(start_run(suite, shared_server, HOSTS[-1]))
    assert status == 0, out
    assert ours(shared_server) == {}


def test_a_frozen_hosts_databases_stay_unless_older_than_the_age_limit(
    shared_server: ServerInfo, suite: Path
) -> None:
    frozen = start_run(suite, shared_server, "frozen-host")
    try:
        assert wait_until(lambda: reached(suite, "frozen-host"), 120), frozen.poll()
        # The template and each worker's database.
        assert wait_until(lambda: len(ours(shared_server)) == 3, 30), sorted(ours(shared_server))
        # A host that went away holding its connections open: the server cannot tell.
        os.killpg(frozen.pid, signal.SIGSTOP)
        held = set(ours(shared_server))
        (suite / "hold" / "go").write_text("")

        status, out = finish(start_run(suite, shared_server, "other-host"))
        assert status == 0, out
        assert set(ours(shared_server)) == held, "without an age limit, nothing is reaped"

        def older_than_a_second() -> bool:
            with psycopg.connect(shared_server.admin_url, autocommit=True) as conn:
                row = conn.execute("SELECT extract(epoch FROM now())::float8").fetchone()
            made = [int(c.split("created=")[1].split()[0]) for c in ours(shared_server).values()]
            return row is not None and all(row[0] - when > 1 for when in made)

        assert wait_until(older_than_a_second, 10)
        status, out = finish(
            start_run(suite, shared_server, "other-host", PIPEWEAVE_REAP_AFTER="1s")
        )
        assert status == 0, out
        assert "dropped 3 databases of other runs made more than 1 s ago" in out, out
        assert all(name in out for name in held), out
        assert ours(shared_server) == {}
    finally:
        os.killpg(frozen.pid, signal.SIGKILL)
        frozen.wait(timeout=30)


@pytest.mark.parametrize(
    ("where", "value"),
    [("--pipeweave-reap-after=six", "six"), ("PIPEWEAVE_REAP_AFTER", "6 hours")],
)
def test_an_age_limit_that_is_not_a_duration_is_refused_in_one_line(
    shared_server: ServerInfo, suite: Path, where: str, value: str
) -> None:
    before = ours(shared_server)
    if where.startswith("--"):
        run = start_run(suite, shared_server, "bad-host", where)
    else:
        run = start_run(suite, shared_server, "bad-host", **{where: value})
    status, out = finish(run)
    assert status == 4, out
    source = where.split("=")[0]
    errors = [line for line in out.splitlines() if "not a duration" in line]
    assert errors == [
        f"ERROR: pipeweave: not a duration: {value!r} ({source}): give a number and a unit, "
        "e.g. 90s, 30m, 6h or 2d"
    ], out
    assert "Traceback" not in out
    assert ours(shared_server) == before
