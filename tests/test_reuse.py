"""--pipeweave-reuse: runs that leave their server and template to the next, through real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
from helpers import kill_server, pg_bin

from pytest_pipeweave import LocalServer
from pytest_pipeweave.databases import SPARE_PREFIX
from pytest_pipeweave.processes import process_alive, wait_until
from pytest_pipeweave.runs import base_dir
from pytest_pipeweave.servers.binaries import server_user, usable_bin_dir

pytestmark = pytest.mark.usefixtures("pipeweave_inner_env")

TEST_FILE = """
def test_one(pipeweave_database):
    assert pipeweave_database.one("SELECT count(*) AS n FROM services")["n"] == 0

def test_two(pipeweave_factory):
    pipeweave_factory.task_run()
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--pipeweave-reuse", *args, timeout=120
    )


def state_of(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


def postmaster_pid(folder: Path) -> int:
    return int((folder / "local" / "data" / "postmaster.pid").read_text().split()[0])


def databases(folder: Path) -> list[str]:
    """Ours on the reused server, once the spares the last run left are copied."""
    info = state_of(folder)["info"]
    url = f"postgresql://{info['user']}:{info['password'] or ''}@127.0.0.1:{info['port']}/postgres"
    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:

        def copied() -> bool:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE query LIKE 'CREATE DATABASE%%' AND pid <> pg_backend_pid()"
            ).fetchone()
            return row is not None and row[0] == 0

        assert wait_until(copied, 30), "a spare was still being copied after 30 s"
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'pytest_pipeweave%' ORDER BY 1"
        ).fetchall()
    return [row[0] for row in rows]


def spares(names: list[str]) -> list[str]:
    return [name.rsplit("_", 1)[1] for name in names if name.startswith(SPARE_PREFIX)]


def test_the_next_run_attaches_to_the_server_and_template(
    pytester: pytest.Pytester, reuse_folder: Path
) -> None:
    pytester.makepyfile(TEST_FILE)
    first = run(pytester)
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines(
        [
            "pipeweave: local server * started in *; template built for reuse",
            "pipeweave: server kept for the next run with reuse; "
            "to stop it: pytest --pipeweave-stop-reused",
        ]
    )
    pid = postmaster_pid(reuse_folder)
    # Each run drops its own test databases: the template stays, and a spare for each slot.
    *left, template = databases(reuse_folder)
    assert template.startswith("pytest_pipeweave_template_")
    assert spares(left) == ["main"]

    for workers, slots in (((), ["main"]), (("-n", "2"), ["gw0", "gw1", "main"])):
        again = run(pytester, *workers)
        again.assert_outcomes(passed=2)
        again.stdout.fnmatch_lines(
            [
                "pipeweave: local server * reused (kept by an earlier run with reuse); template reused"
            ]
        )
        assert "started in" not in again.stdout.str()
        assert postmaster_pid(reuse_folder) == pid
        *left, last = databases(reuse_folder)
        assert (spares(left), last) == (slots, template)

    without = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    without.assert_outcomes(passed=2)
    assert "reused" not in without.stdout.str()
    assert postmaster_pid(reuse_folder) == pid  # a run without reuse leaves it alone


WHERE = """
from pathlib import Path

def test_where(pipeweave_database):
    row = pipeweave_database.one(
        "SELECT oid::int AS oid FROM pg_database WHERE datname = current_database()"
    )
    Path("oid.txt").write_text(str(row["oid"]))
    assert pipeweave_database.one("SELECT count(*) AS n FROM services")["n"] == 0
    pipeweave_database.none("INSERT INTO services (id, version, base_url) VALUES ('s', '1', 'http://s')")
"""


def test_a_run_takes_the_copy_the_run_before_left_for_it(
    pytester: pytest.Pytester, reuse_folder: Path
) -> None:
    pytester.makepyfile(test_where=WHERE)
    run(pytester).assert_outcomes(passed=1)
    first = int((pytester.path / "oid.txt").read_text())
    info = state_of(reuse_folder)["info"]
    url = f"postgresql://{info['user']}:@127.0.0.1:{info['port']}/postgres"
    (spare, _) = databases(reuse_folder)
    with psycopg.connect(url, autocommit=True) as conn:
        (left,) = conn.execute("SELECT oid::int FROM pg_database WHERE datname = %s", [spare])
    assert left[0] != first  # a new copy of the template, not the database the run used

    run(pytester).assert_outcomes(passed=1)
    assert int((pytester.path / "oid.txt").read_text()) == left[0]  # taken, not copied
    (spare_after, _) = databases(reuse_folder)
    assert spare_after == spare


SETUP = """
import pytest

@pytest.fixture(scope="session")
def pipeweave_template_setup():
    def setup(db):
        db.none("CREATE TABLE reference_{version} (id int)")
    return setup
{key}
"""
KEY = """
@pytest.fixture(scope="session")
def pipeweave_template_key():
    return "{key}"
"""
SEES = """
def test_sees_the_setup(pipeweave_database):
    tables = pipeweave_database.many(
        "SELECT tablename FROM pg_tables WHERE tablename LIKE 'reference_%%'"
    )
    assert [t["tablename"] for t in tables] == ["reference_{version}"]
"""


def test_the_template_is_rebuilt_when_what_made_it_changes(
    pytester: pytest.Pytester, reuse_folder: Path
) -> None:
    def project(version: int, key: str | None = None) -> None:
        pytester.makeconftest(SETUP.format(version=version, key=KEY.format(key=key) if key else ""))
        pytester.makepyfile(test_sees=SEES.format(version=version))

    def summary(result: pytest.RunResult) -> str:
        result.assert_outcomes(passed=1)
        # The spare this run left is there before the next starts, which must not take it
        # when the template changed.
        *left, _ = databases(reuse_folder)
        assert spares(left) == ["main"]
        # The summary's line: the one printed once the tests are collected has no template yet.
        *_, line = [ln for ln in result.stdout.lines if ln.startswith("pipeweave: local server")]
        return line.split("; ", 1)[1]

    project(1)
    assert summary(run(pytester)) == "template built for reuse"
    assert summary(run(pytester)) == "template reused"
    project(2)  # the setup's code changed
    assert summary(run(pytester)).startswith("template rebuilt: the template setup")
    assert summary(run(pytester, "--pipeweave-recreate")) == (
        "template rebuilt: --pipeweave-recreate"
    )
    assert summary(run(pytester)) == "template reused"
    project(3, key="v1")  # a key of the user's: the code no longer counts, the key does
    assert summary(run(pytester)).startswith("template rebuilt: the template setup")
    pytester.makeconftest(SETUP.format(version=3, key=KEY.format(key="v1")) + "\n# edited\n")
    assert summary(run(pytester)) == "template reused"
    project(4, key="v2")
    assert summary(run(pytester)).startswith("template rebuilt")
    # Templates no run uses any more are dropped, and their spares with them.
    spare, template = databases(reuse_folder)
    assert spare.startswith(SPARE_PREFIX + template.rsplit("_", 1)[1])


def kill_postmaster(pid: int) -> None:
    server = LocalServer(Path(), Path())
    server.pid = pid
    kill_server(server)


@pytest.mark.parametrize("fault", ["killed", "data folder removed"])
def test_a_reused_server_that_is_gone_is_replaced(
    pytester: pytest.Pytester, reuse_folder: Path, fault: str
) -> None:
    pytester.makepyfile(TEST_FILE)
    run(pytester).assert_outcomes(passed=2)
    pid = postmaster_pid(reuse_folder)
    if fault == "killed":
        kill_postmaster(pid)
    else:
        subprocess.run(["rm", "-rf", str(reuse_folder / "local" / "data")], check=True)
    result = run(pytester)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["pipeweave: local server * started in *, replacing the reused one: it was not running*"]
    )
    assert postmaster_pid(reuse_folder) != pid
    run(pytester).stdout.fnmatch_lines(["*reused (kept by an earlier run with reuse)*"])
    if process_alive(pid):  # the one whose folder went: stopped when it was replaced
        kill_postmaster(pid)
        pytest.fail(f"the replaced server {pid} was left running")


MEET = """
import os, time
from pathlib import Path

def test_meet(pipeweave_database):
    pipeweave_database.none("CREATE TABLE mine (id int)")
    here = Path(os.environ["MEET_DIR"])
    (here / os.environ["MEET_NAME"]).touch()
    deadline = time.monotonic() + 60
    while len(list(here.iterdir())) < 2:
        assert time.monotonic() < deadline, "the other run never came"
        time.sleep(0.05)
"""


def test_two_runs_at_once_on_one_reused_server(
    pytester: pytest.Pytester, reuse_folder: Path, tmp_path: Path
) -> None:
    pytester.makepyfile(TEST_FILE)
    run(pytester).assert_outcomes(passed=2)
    pid = postmaster_pid(reuse_folder)
    pytester.makepyfile(test_meet=MEET)
    meet = tmp_path / "meet"
    meet.mkdir()
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--pipeweave-reuse"]
    runs = [
        subprocess.Popen(
            [*command, "test_meet.py"],
            cwd=pytester.path,
            env={**os.environ, "MEET_DIR": str(meet), "MEET_NAME": name},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("a", "b")
    ]
    outputs = [process.communicate(timeout=120)[0] for process in runs]
    for process, output in zip(runs, outputs, strict=True):
        assert process.returncode == 0, output
        assert "reused (kept by an earlier run with reuse)" in output
    assert postmaster_pid(reuse_folder) == pid
    # Both ran in slot "main": one took the spare, and the one left after is the only one.
    *left, _ = databases(reuse_folder)
    assert spares(left) == ["main"]


def test_the_stop_command_leaves_no_process_or_folder(
    pytester: pytest.Pytester, reuse_folder: Path
) -> None:
    pytester.makepyfile(TEST_FILE)
    run(pytester).assert_outcomes(passed=2)
    pid = postmaster_pid(reuse_folder)
    stop = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pipeweave-stop-reused")
    assert stop.ret == 0
    stop.stdout.fnmatch_lines(["pipeweave: stopped the server kept for reuse and removed *"])
    assert not process_alive(pid)
    assert not reuse_folder.exists()
    again = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pipeweave-stop-reused")
    assert again.ret == 0
    again.stdout.fnmatch_lines(["pipeweave: no server is kept for reuse in *"])


def test_the_stop_command_leaves_a_server_in_use(
    pytester: pytest.Pytester, reuse_folder: Path
) -> None:
    pytester.makepyfile(
        test_stop=textwrap.dedent(
            """
            import subprocess, sys

            def test_stop_while_running(pipeweave_database):
                stop = subprocess.run(
                    [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                     "--pipeweave-stop-reused"], capture_output=True, text=True)
                assert stop.returncode == 1, stop.stdout
                assert "is in use (pid" in stop.stdout
            """
        )
    )
    run(pytester).assert_outcomes(passed=1)
    assert process_alive(postmaster_pid(reuse_folder))


HOLD = """
import os, time
from pathlib import Path

def test_hold(pipeweave_database):
    here = Path(os.environ["HOLD_DIR"])
    (here / "ready").touch()
    deadline = time.monotonic() + 60
    while not (here / "release").exists():
        assert time.monotonic() < deadline, "never released"
        time.sleep(0.05)
"""


def test_a_reused_server_with_other_binaries_is_replaced_unless_in_use(
    pytester: pytest.Pytester, reuse_folder: Path, tmp_path: Path
) -> None:
    # The same build under another folder: other binaries. Links to binaries the server user
    # can run (not those of a virtualenv in a 0700 folder, as CI's), in a folder it can reach.
    bin_dir = usable_bin_dir(
        pg_bin(), server_user(), base_dir(str(reuse_folder.parents[1])) / "cache"
    )
    other = reuse_folder.parents[1] / "other-bin"
    other.mkdir()
    for binary in bin_dir.iterdir():
        (other / binary.name).symlink_to(binary)
    pytester.makepyfile(TEST_FILE)
    pytester.makepyfile(test_hold=HOLD)
    run(pytester, "-k", "test_one or test_two").assert_outcomes(passed=2)
    first = postmaster_pid(reuse_folder)

    # In use by a run: left alone, and the run with other binaries gets a server of its own.
    hold = tmp_path / "hold"
    hold.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--pipeweave-reuse",
            "test_hold.py",
        ],
        cwd=pytester.path,
        env={**os.environ, "HOLD_DIR": str(hold)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_until(lambda: (hold / "ready").exists(), 60)
        own = run(pytester, f"--pipeweave-pg-bin={other}", "-k", "test_one or test_two")
        own.assert_outcomes(passed=2)
        own.stdout.fnmatch_lines(
            ["*started in *, not the reused one: it runs other binaries and another run uses it*"]
        )
    finally:
        (hold / "release").touch()
        output = holder.communicate(timeout=60)[0]
    assert holder.returncode == 0, output
    assert postmaster_pid(reuse_folder) == first

    # Not in use: replaced.
    replaced = run(pytester, f"--pipeweave-pg-bin={other}", "-k", "test_one or test_two")
    replaced.assert_outcomes(passed=2)
    replaced.stdout.fnmatch_lines(["*started in *, replacing the reused one: it ran *"])
    assert postmaster_pid(reuse_folder) != first
    assert not process_alive(first)
