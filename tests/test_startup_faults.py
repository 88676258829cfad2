"""Faults at start-up: each is one line naming the cause and what to do, no traceback, a
non-zero exit, and nothing left behind (no server process, no run folder).

The servers' folder (PIPEWEAVE_TMPDIR) is a small tmpfs each test mounts (as root) and
unmounts, whatever happens; a server that cannot start is postgres asked for far more shared
memory than the machine has; a url points where no server listens; Ctrl-C reaches a ``-n 2``
run's whole process group, as it does in a terminal, at each step of its start-up.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import leftovers, pg_bin

from pytest_pipeweave import LocalServer, ServerUnavailable, ephemeral_server
from pytest_pipeweave.processes import wait_until
from pytest_pipeweave.runs import base_dir
from pytest_pipeweave.servers.binaries import find_pg_bin, server_user, usable_bin_dir
from pytest_pipeweave.servers.local import free_port

pytestmark = pytest.mark.usefixtures("pipeweave_inner_env")

DB_TEST = """
def test_db(pipeweave_database):
    pass
"""
SHM = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
needs_binaries = pytest.mark.skipif(find_pg_bin() is None, reason="no PostgreSQL binaries")


def servers_parent() -> Path:
    """A folder of the test's own that the server user can reach (pytest's are 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="pwf-", dir=SHM))
    folder.chmod(0o755)
    return folder


@pytest.fixture
def own_folder() -> Iterator[Path]:
    folder = servers_parent()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def mount_tmpfs() -> Iterator[Callable[..., Path]]:
    """Mount small tmpfs file systems on folders of the test's own; unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted: list[Path] = []

    def mount(size: str = "1m", *, read_only: bool = False) -> Path:
        folder = servers_parent()
        options = f"size={size},mode=0755" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            folder.rmdir()
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=True)
        folder.rmdir()


def fill(folder: Path, leave: int = 0) -> None:
    """Fill ``folder``'s file system, leaving about ``leave`` bytes free."""
    stats = os.statvfs(folder)
    size = max(stats.f_bavail * stats.f_frsize - leave, 0)
    with open(folder / "filler", "wb") as filler:
        try:
            for _ in range(0, size, 2**20):
                filler.write(b"\0" * min(2**20, size))
                size -= 2**20
        except OSError:
            pass


def run(
    pytester: pytest.Pytester, tmpdir: Path | None, *args: str, **env: str
) -> tuple[pytest.RunResult, float]:
    """An inner run of DB_TEST with PIPEWEAVE_TMPDIR=tmpdir; its result, and its time."""
    pytester.makepyfile(DB_TEST)
    if tmpdir is not None:
        env["PIPEWEAVE_TMPDIR"] = str(tmpdir)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        started = time.monotonic()
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)
        return result, time.monotonic() - started


def assert_one_line(result: pytest.RunResult, *parts: str) -> str:
    """The run failed with one ``pipeweave:`` line holding every one of ``parts``, and
    printed no traceback."""
    output = result.outlines + result.errlines
    text = "\n".join(output)
    assert result.ret not in (0, pytest.ExitCode.INTERNAL_ERROR), text
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    lines = [line for line in output if line.startswith("pipeweave: ") and parts[0] in line]
    assert lines, text
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def assert_nothing_left(tmpdir: Path) -> None:
    assert wait_until(lambda: leftovers(tmpdir) == ([], []), 10), leftovers(tmpdir)


# -- the servers' folder ---------------------------------------------------------------------


def assert_no_space_said_and_nothing_left(pytester: pytest.Pytester, tmpdir: Path) -> None:
    result, _ = run(pytester, tmpdir, "--pipeweave-backend=local")
    assert_one_line(
        result, "no space left on the file system", f"mounted at {tmpdir}", "PIPEWEAVE_TMPDIR"
    )
    assert_nothing_left(tmpdir)


@needs_binaries
def test_a_full_servers_folder_stops_initdb_in_one_line(
    pytester: pytest.Pytester, mount_tmpfs: Callable[..., Path]
) -> None:
    tmpdir = mount_tmpfs("1m")  # no cached cluster: initdb runs, and runs out of room
    assert_no_space_said_and_nothing_left(pytester, tmpdir)


@needs_binaries
def test_a_servers_folder_too_full_for_the_run_state_is_one_line(
    pytester: pytest.Pytester, mount_tmpfs: Callable[..., Path]
) -> None:
    tmpdir = mount_tmpfs("1m")
    base_dir(str(tmpdir))
    fill(tmpdir)
    assert_no_space_said_and_nothing_left(pytester, tmpdir)


@needs_binaries
def test_no_room_to_copy_the_cached_cluster_is_one_line(
    pytester: pytest.Pytester, mount_tmpfs: Callable[..., Path]
) -> None:
    tmpdir = mount_tmpfs("192m")  # room for a copied installation (41 MB) and the cluster
    base = base_dir(str(tmpdir))
    warm = LocalServer(pg_bin(), base / "warm-up", cache_dir=base / "cache")
    warm.start()
    warm.stop()
    assert any((base / "cache").glob("cluster-*")), "the next start copies the cached cluster"
    fill(tmpdir, leave=2 * 2**20)
    assert_no_space_said_and_nothing_left(pytester, tmpdir)


@needs_binaries
def test_a_read_only_servers_folder_is_one_line(
    pytester: pytest.Pytester, mount_tmpfs: Callable[..., Path]
) -> None:
    tmpdir = mount_tmpfs(read_only=True)
    result, _ = run(pytester, tmpdir, "--pipeweave-backend=local")
    assert_one_line(result, "is on a read-only file system", "PIPEWEAVE_TMPDIR")


def test_a_servers_folder_that_does_not_exist_is_one_line(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    missing = tmp_path / "not-made"
    result, _ = run(pytester, missing, "--pipeweave-backend=local")
    assert_one_line(result, f"{missing} does not exist: create it", "PIPEWEAVE_TMPDIR")
    assert not missing.exists()


@needs_binaries
def test_a_servers_folder_turned_read_only_is_one_line(
    pytester: pytest.Pytester, mount_tmpfs: Callable[..., Path]
) -> None:
    # Our base folder exists (an earlier run made it), then the file system goes read-only.
    tmpdir = mount_tmpfs()
    base_dir(str(tmpdir))
    subprocess.run(["mount", "-o", "remount,ro", str(tmpdir)], check=True)
    result, _ = run(pytester, tmpdir, "--pipeweave-backend=local")
    assert_one_line(result, "is on a read-only file system", "PIPEWEAVE_TMPDIR")


@needs_binaries
@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as another user only as root")
def test_a_servers_folder_the_server_user_cannot_enter_is_one_line(
    pytester: pytest.Pytester, own_folder: Path
) -> None:
    own_folder.chmod(0o700)  # ours (root's), closed to the postgres user
    result, _ = run(pytester, own_folder, "--pipeweave-backend=local")
    assert_one_line(
        result, "cannot reach", f"{own_folder} does not let it through", f"chmod o+x {own_folder}"
    )
    assert_nothing_left(own_folder)


# -- a server that does not start ------------------------------------------------------------


def too_much_memory() -> str:
    """A shared_buffers this machine cannot map: four times its memory and swap."""
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1":
        pytest.skip("the kernel overcommits any amount: no shared_buffers is too large")
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kilobytes = sum(int(meminfo[key].split()[0]) for key in ("MemTotal", "SwapTotal"))
    return f"{4 * kilobytes // 2**20 + 1}GB"


@needs_binaries
def test_a_server_that_does_not_start_shows_the_end_of_its_log(
    pytester: pytest.Pytester, own_folder: Path
) -> None:
    # The plugin takes no server settings: a postgres of the test's own adds one to each start,
    # wrapping binaries the server user can run (not those of a virtualenv in a 0700 folder).
    bin_dir = usable_bin_dir(pg_bin(), server_user(), base_dir() / "cache")
    wrapped = own_folder / "bin"
    wrapped.mkdir(mode=0o755)
    (wrapped / "initdb").symlink_to(bin_dir / "initdb")
    (wrapped / "postgres").write_text(
        f'#!/bin/sh\nexec {bin_dir}/postgres "$@" -c shared_buffers={too_much_memory()}\n'
    )
    (wrapped / "postgres").chmod(0o755)
    result, _ = run(
        pytester, own_folder, "--pipeweave-backend=local", f"--pipeweave-pg-bin={wrapped}"
    )
    line = assert_one_line(
        result,
        "postgres did not start: FATAL: could not map anonymous shared memory",
        "HINT:",
        "shared_buffers",  # quoted from PostgreSQL 16 on
        "(the end of its log)",
    )
    assert "[" not in line.split("FATAL", 1)[1], "no timestamps or pids from the log"
    assert_nothing_left(own_folder)


# -- a url where no server runs --------------------------------------------------------------


@pytest.mark.parametrize("where", ["tcp", "socket"])
def test_a_url_where_no_server_runs_fails_fast_in_one_line(
    pytester: pytest.Pytester, tmp_path: Path, where: str
) -> None:
    if where == "tcp":
        url, reason = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/postgres", "refused"
    else:
        url, reason = f"postgresql://postgres:hunter2@/postgres?host={tmp_path}", "No such file"
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match=reason), ephemeral_server(backend="url", url=url):
        pass
    seconds = time.monotonic() - started
    assert seconds < 3, f"{seconds:.1f} s to say the server is down"

    result, _ = run(pytester, None, PIPEWEAVE_BACKEND="url", PIPEWEAVE_TEST_DATABASE_URL=url)
    line = assert_one_line(
        result,
        "cannot reach the server at postgresql://postgres:***@",
        reason,
        "is a server running there? Start it, or fix PIPEWEAVE_TEST_DATABASE_URL",
    )
    assert "hunter2" not in "\n".join(result.outlines + result.errlines), line
    # The whole inner run, pytest's own start included, on a busy machine: no long wait.
    assert re_seconds(result) < 5, result.outlines[-1]


def re_seconds(result: pytest.RunResult) -> float:
    """The time pytest's last line reports (``1 error in 0.95s``)."""
    last = result.outlines[-1]
    return float(last.rsplit(" in ", 1)[1].split("s", 1)[0])


# -- Ctrl-C in a -n 2 run's start-up ---------------------------------------------------------

# Each moment: a file the inner run creates when it gets there (or a path that appears).
CTRL_C_CONFTEST = """
import os, pathlib, time
import pytest

MARKS = pathlib.Path(os.environ["PWF_MARKS"])

def pytest_configure(config):
    if hasattr(config, "workerinput"):
        (MARKS / f"worker-{config.workerinput['workerid']}").write_text("")

@pytest.fixture(scope="session")
def pipeweave_template_setup():
    def setup(db):
        (MARKS / "template").write_text("")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)
    return setup if os.environ.get("PWF_SLOW_TEMPLATE") else None
"""
CTRL_C_TESTS = """
import os, pathlib, time

def test_wait(pipeweave_database):
    (pathlib.Path(os.environ["PWF_MARKS"]) / "test").write_text("")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)

def test_other(pipeweave_database):
    test_wait(pipeweave_database)
"""


@needs_binaries
@pytest.mark.parametrize("moment", ["workers", "initdb", "server", "template", "test"])
def test_ctrl_c_in_a_two_worker_start_up_leaves_nothing_behind(
    pytester: pytest.Pytester, own_folder: Path, tmp_path: Path, moment: str
) -> None:
    pytest.importorskip("xdist")
    marks = tmp_path / "marks"
    marks.mkdir()
    pytester.makeconftest(CTRL_C_CONFTEST)
    pytester.makepyfile(CTRL_C_TESTS)
    base = own_folder / f"pytest-pipeweave-{os.getuid()}"
    reached: dict[str, Callable[[], bool]] = {
        # Both workers configured: nothing started yet.
        "workers": lambda: len(list(marks.glob("worker-*"))) == 2,
        # A fresh folder has no cached cluster: initdb runs.
        "initdb": lambda: any(base.glob("run-*/local/data")),
        "server": lambda: any(base.glob("run-*/local/socket/.s.PGSQL.*")),
        "template": (marks / "template").exists,
        "test": (marks / "test").exists,
    }
    env = {
        **os.environ,
        "PIPEWEAVE_TMPDIR": str(own_folder),
        "PWF_MARKS": str(marks),
        **({"PWF_SLOW_TEMPLATE": "1"} if moment == "template" else {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2"],
        cwd=pytester.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: Ctrl-C goes to all of it
    )
    try:
        assert wait_until(reached[moment], 60, interval=0.002), moment
    except AssertionError:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(process.communicate(timeout=30)[0]) from None
    os.killpg(process.pid, signal.SIGINT)
    out, _ = process.communicate(timeout=60)
    assert process.returncode != 0, out
    assert_nothing_left(own_folder)
