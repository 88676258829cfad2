"""The docker backend end to end: inner pytest runs against a real engine and image.

Skipped when no Docker engine answers (or it lacks the image), unless
``PIPEWEAVE_REQUIRE_DOCKER=1`` (as in CI), where that is a failure: a CI that silently skipped
these would prove nothing. ``.ci/provision-docker`` gives a machine the engine and the image.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from helpers import EphemeralScript, script_env

from pytest_pipeweave.errors import ServerUnavailable
from pytest_pipeweave.processes import wait_until
from pytest_pipeweave.servers.docker import (
    HOST_LABEL,
    RUN_LABEL,
    docker_client,
    labelled_containers,
    remove_leftover_containers,
)
from pytest_pipeweave.settings import DEFAULT_IMAGE

IMAGE = os.environ.get("PIPEWEAVE_IMAGE") or DEFAULT_IMAGE
# Settings of the outer run that would send the inner runs elsewhere.
_OUTER_SETTINGS = ("PIPEWEAVE_BACKEND", "PIPEWEAVE_TEST_DATABASE_URL", "PIPEWEAVE_KEEP")


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("PIPEWEAVE_REQUIRE_DOCKER") == "1":
        pytest.fail(
            f"PIPEWEAVE_REQUIRE_DOCKER=1 but {reason} "
            f"(DOCKER_HOST={os.environ.get('DOCKER_HOST', '')!r}); "
            "as root, .ci/provision-docker starts an engine and builds the image",
            pytrace=False,
        )
    pytest.skip(reason)


@pytest.fixture(scope="module")
def engine() -> Any:
    """A docker SDK client for an engine that has the image (else skip, or fail in CI)."""
    problem = None
    try:
        client = docker_client(timeout=5)
        client.images.get(IMAGE)
    except ServerUnavailable as exc:
        problem = str(exc)
    except Exception as exc:
        problem = f"the engine has no image {IMAGE} ({exc}); nothing can be pulled here"
    if problem:
        _unavailable(problem)
    return client


def _containers_of(client: Any, tmpdir: Path) -> set[str]:
    """Containers of the runs whose folders are under ``tmpdir``: this test's, no one else's
    (under pytest-xdist, or beside other runs on the machine, other containers come and go)."""
    prefix = f"{tmpdir}{os.sep}"
    return {
        summary["Id"]
        for summary in labelled_containers(client, RUN_LABEL)
        if (summary.get("Labels") or {}).get(RUN_LABEL, "").startswith(prefix)
    }


def _exists(client: Any, container_id: str) -> bool:
    return bool(client.api.containers(all=True, filters={"id": container_id}))


@pytest.fixture
def inner(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, engine: Any
) -> Iterator[Path]:
    """Inner runs of our own: their run folders under the test's folder, no outer settings.

    Ryuk is off: the plugin's own label-based cleanup is what is under test (and the reaper's
    image cannot be pulled where there is no registry). Containers the inner runs leave
    behind are removed afterwards, so a failing test leaves nothing running.
    """
    for name in list(os.environ):
        if name in _OUTER_SETTINGS or name.startswith(("PYTEST_XDIST", "PYTEST_ADDOPTS")):
            monkeypatch.delenv(name)
    tmpdir = pytester.path / "pipeweave-tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("PIPEWEAVE_TMPDIR", str(tmpdir))
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    yield tmpdir
    for container_id in _containers_of(engine, tmpdir):
        with contextlib.suppress(Exception):
            engine.containers.get(container_id).remove(force=True, v=True)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-v", "--pipeweave-backend=docker", *args, timeout=180
    )


INNER_SUITE = """
import ipaddress
from pathlib import Path

import docker
import psycopg

from pytest_pipeweave.servers.docker import RUN_LABEL, labelled_containers

COUNT = "SELECT count(*) AS n FROM services"


def test_server_is_a_container_on_loopback(pipeweave_server, pipeweave_database_url):
    assert pipeweave_server.backend == "docker"
    assert ipaddress.ip_address(pipeweave_server.host).is_loopback
    with psycopg.connect(pipeweave_database_url) as conn:
        assert ipaddress.ip_address(conn.info.hostaddr).is_loopback
    port = str(pipeweave_server.port)
    ours = [
        summary["Id"]
        for summary in labelled_containers(docker.from_env(), RUN_LABEL)
        if any(str(p.get("PublicPort")) == port for p in summary.get("Ports") or [])
    ]
    assert len(ours) == 1
    Path("container-id").write_text(ours[0])


def test_rolled_back_write(pipeweave_database):
    pipeweave_database.none("INSERT INTO services (id, version, base_url) VALUES ('a', '1', 'u')")
    assert pipeweave_database.one(COUNT)["n"] == 1


def test_rolled_back_write_is_gone(pipeweave_database):
    assert pipeweave_database.one(COUNT)["n"] == 0


def test_committed_write_seen_from_another_connection(
    pipeweave_database_committed, pipeweave_database_url
):
    pipeweave_database_committed.none(
        "INSERT INTO services (id, version, base_url) VALUES ('b', '1', 'u')"
    )
    with psycopg.connect(pipeweave_database_url) as other:
        assert other.execute("SELECT id FROM services").fetchall() == [("b",)]


def test_committed_write_is_gone(pipeweave_database):
    assert pipeweave_database.one(COUNT)["n"] == 0
"""


def test_inner_suite_on_docker_leaves_no_container(
    pytester: pytest.Pytester, inner: Path, engine: Any
) -> None:
    pytester.makepyfile(INNER_SUITE)
    result = run(pytester)
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["pipeweave: backend docker, image *", "*docker server*"])
    assert not _exists(engine, (pytester.path / "container-id").read_text())
    assert _containers_of(engine, inner) == set()


HOLD = """
import time
from pathlib import Path


def test_hold(pipeweave_database):
    Path("ready").write_text("")
    # Killed from outside long before this ends; bounded so that nothing can hang forever.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
"""


def test_next_run_removes_container_of_killed_run(
    pytester: pytest.Pytester, inner: Path, engine: Any
) -> None:
    pytester.makepyfile(test_hold=HOLD)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_hold.py"]
    command += ["--pipeweave-backend=docker", f"--basetemp={pytester.path / 'basetemp-killed'}"]
    with (pytester.path / "killed.log").open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=pytester.path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        started = wait_until(
            lambda: (
                process.poll() is not None
                or (bool(_containers_of(engine, inner)) and (pytester.path / "ready").exists())
            ),
            timeout=120,
            interval=0.05,
        )
        assert process.poll() is None, (pytester.path / "killed.log").read_text()
        assert started, "the inner run had no container after 120 s"
        leftovers = _containers_of(engine, inner)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert len(leftovers) == 1
    (leftover,) = leftovers
    assert engine.containers.get(leftover).status == "running", "SIGKILL should leave it behind"

    pytester.makepyfile(test_next="def test_next(pipeweave_server):\n    pass\n")
    result = run(pytester, "test_next.py")
    result.assert_outcomes(passed=1)
    assert not _exists(engine, leftover)
    assert _containers_of(engine, inner) == set()
    assert [p for p in inner.glob("pytest-pipeweave-*/run-*") if p.is_dir()] == []


@pytest.mark.parametrize("moment", ["start-up", "test"])
def test_ctrl_c_removes_the_container(
    pytester: pytest.Pytester, inner: Path, engine: Any, moment: str
) -> None:
    pytester.makepyfile(test_hold=HOLD)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "test_hold.py",
            "--pipeweave-backend=docker",
        ],
        cwd=pytester.path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if moment == "start-up":  # the container exists, the server does not answer yet
        reached = lambda: bool(_containers_of(engine, inner))  # noqa: E731
    else:
        reached = (pytester.path / "ready").exists
    assert wait_until(lambda: reached() or process.poll() is not None, 120, interval=0.01)
    assert process.poll() is None, process.communicate()[0]
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=120)
    assert process.returncode != 0, out
    assert _containers_of(engine, inner) == set(), out
    assert not [p for p in inner.glob("pytest-pipeweave-*/run-*") if p.is_dir()], out


def test_cleanup_while_another_run_removes_its_containers(engine: Any, tmp_path: Path) -> None:
    """Runs on one engine start and clean up at the same time: containers vanishing while this
    run lists them (docker-py's ``containers.list()`` inspects each, and raised NotFound here)
    must not fail its start."""
    labels = {RUN_LABEL: f"{tmp_path}{os.sep}run-live", HOST_LABEL: socket.gethostname()}
    ids = [engine.containers.create(IMAGE, command="true", labels=labels).id for _ in range(20)]

    def other_run_stops() -> None:
        for container_id in ids:
            engine.api.remove_container(container_id, force=True)

    other_run = threading.Thread(target=other_run_stops)
    other_run.start()
    passes = 0
    try:
        while other_run.is_alive():
            assert remove_leftover_containers(engine, lambda key: False) == []
            passes += 1
    finally:
        other_run.join()
    assert passes > 0
    assert _containers_of(engine, tmp_path) == set()


@pytest.mark.parametrize("ending", ["block-ends", "ctrl-c"])
def test_ephemeral_server_on_docker_leaves_no_container(
    inner: Path, engine: Any, ending: str
) -> None:
    """ephemeral_server(backend="docker") from a script: no container after it, whatever ends it."""
    env = script_env(PIPEWEAVE_TMPDIR=str(inner), TESTCONTAINERS_RYUK_DISABLED="true")
    script = EphemeralScript({"backend": "docker", "image": IMAGE}, ending, env)
    assert script.server.backend == "docker"
    assert len(_containers_of(engine, inner)) == 1
    code, _, err = script.end(ending)
    assert (code == 0) is (ending == "block-ends"), err
    assert _containers_of(engine, inner) == set()
    assert not Path(script.report["folder"]).exists()


def test_reuse_keeps_the_container_for_the_next_run_until_stopped(
    pytester: pytest.Pytester, inner: Path, engine: Any
) -> None:
    pytester.makepyfile(
        "def test_one(pipeweave_database):\n"
        "    assert pipeweave_database.one('SELECT 1 AS x')['x'] == 1\n"
    )
    run(pytester, "--pipeweave-reuse").assert_outcomes(passed=1)
    (container,) = _containers_of(engine, inner)
    again = run(pytester, "--pipeweave-reuse")
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(["*docker server * reused (kept by an earlier run with reuse)*"])
    assert _containers_of(engine, inner) == {container}
    stop = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pipeweave-stop-reused")
    assert stop.ret == 0
    assert not _exists(engine, container)
    assert not any(inner.glob("*/run-*/"))


def test_an_image_the_engine_lacks_is_one_line_saying_what_to_do(
    pytester: pytest.Pytester, inner: Path, engine: Any
) -> None:
    pytester.makepyfile(test_one="def test_one(pipeweave_database):\n    pass\n")
    result = run(pytester, "--pipeweave-image=pipeweave-missing:never")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    lines = [line for line in out.splitlines() if line.startswith("pipeweave: the Docker engine")]
    assert len(lines) == 1, out
    assert lines[0].startswith(
        "pipeweave: the Docker engine has no image pipeweave-missing:never and could not pull it"
    ), out
    assert lines[0].endswith(
        "pull or build it there, or choose one it has with --pipeweave-image (PIPEWEAVE_IMAGE)"
    ), out
    assert "Traceback" not in out
    assert _containers_of(engine, inner) == set()
    assert [p for p in inner.glob("pytest-pipeweave-*/run-*") if p.is_dir()] == []


class EngineThatStops:
    """A socket in front of the engine's that passes everything on until the request that
    starts a container; then it goes, as a stopped engine does: that request unanswered, its
    connections closed, the socket gone."""

    def __init__(self, engine_socket: str, path: Path) -> None:
        self.engine_socket = engine_socket
        self.path = path
        self.stopped = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(16)
        self._open: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.engine_socket)
            self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if requests and b"/start HTTP/1.1" in chunk.split(b"\r\n", 1)[0]:
                    self.stop()
                    return
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        self.stopped.set()
        self.path.unlink(missing_ok=True)
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_an_engine_that_stops_mid_start_is_one_line_and_the_next_run_clears_up(
    pytester: pytest.Pytester, inner: Path, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not real.startswith("unix://"):
        pytest.skip("the stopping engine is simulated in front of a unix socket")
    folder = Path(tempfile.mkdtemp(prefix="pwe-"))  # a socket path must be short
    proxy = EngineThatStops(real.removeprefix("unix://"), folder / "engine.sock")
    try:
        pytester.makepyfile(test_one="def test_one(pipeweave_database):\n    pass\n")
        monkeypatch.setenv("DOCKER_HOST", f"unix://{proxy.path}")
        result = run(pytester)
    finally:
        proxy.stop()
        folder.rmdir()
    assert proxy.stopped.is_set(), "the run never started a container"
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    lines = [line for line in out.splitlines() if line.startswith("pipeweave: the Docker engine")]
    assert len(lines) == 1, out
    assert lines[0].startswith(
        f"pipeweave: the Docker engine stopped answering while the {IMAGE} container started ("
    ), out
    assert lines[0].endswith("): start the engine again and rerun"), out
    assert "Traceback" not in out
    assert [p for p in inner.glob("pytest-pipeweave-*/run-*") if p.is_dir()] == []
    # The engine could not be asked to remove what it had made: once it is back, the next
    # run does, as it does a killed run's.
    monkeypatch.setenv("DOCKER_HOST", real)
    pytester.makepyfile(test_next="def test_next(pipeweave_server):\n    pass\n")
    run(pytester, "test_next.py").assert_outcomes(passed=1)
    assert _containers_of(engine, inner) == set()
