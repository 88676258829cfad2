"""``pipeweave-db dev``: a throw-away server with the schema, until SIGINT or SIGTERM."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from pipeweave_db import create_database, schema_status
from pytest_pipeweave.processes import process_alive, wait_until
from pytest_pipeweave.servers.binaries import find_pg_bin

PIPEWEAVE_DB = shutil.which("pipeweave-db", path=str(Path(sys.executable).parent))
START_TIMEOUT = 60.0

pytestmark = [
    pytest.mark.skipif(PIPEWEAVE_DB is None, reason="pipeweave-db is not installed"),
    pytest.mark.skipif(
        find_pg_bin(os.environ.get("PIPEWEAVE_PG_BIN")) is None,
        reason="no PostgreSQL binaries for a local server",
    ),
]


class DevProcess:
    """A running ``pipeweave-db dev``, its output read line by line as it comes."""

    def __init__(self, *args: str) -> None:
        assert PIPEWEAVE_DB is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PG"))}
        env.pop("DATABASE_URL", None)
        env["PYTHONIOENCODING"] = "utf-8"
        self.process = subprocess.Popen(
            [PIPEWEAVE_DB, "dev", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line_starting(self, prefix: str, timeout: float = START_TIMEOUT) -> str:
        """The next output line that starts with ``prefix`` (after stripping indentation)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(remaining, 0))
            except queue.Empty:
                pytest.fail(f"no line starting with {prefix!r} in {timeout} s: {self.seen}")
            if line is None:
                stderr = self.process.stderr.read() if self.process.stderr else ""
                pytest.fail(f"dev exited before printing {prefix!r}: {self.seen} {stderr}")
            self.seen.append(line)
            if line.strip().startswith(prefix):
                return line.strip()

    def stop(self, signum: int) -> tuple[int, str, str]:
        """Send ``signum``; the exit code, the rest of stdout, and stderr."""
        self.process.send_signal(signum)
        code = self.process.wait(timeout=60)
        rest = []
        while (line := self.lines.get(timeout=10)) is not None:
            rest.append(line)
        stderr = self.process.stderr.read() if self.process.stderr else ""
        return code, "\n".join(rest), stderr

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def dev() -> Iterator[DevProcess]:
    process = DevProcess()
    yield process
    process.kill()


def postmaster_pid(data_folder: Path) -> int:
    pid_file = next(data_folder.glob("*/data/postmaster.pid"))
    return int(pid_file.read_text().split("\n", 1)[0])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_dev_serves_the_schema_until_a_signal_then_removes_everything(
    dev: DevProcess, signum: int
) -> None:
    first = dev.line_starting("✓ PostgreSQL")
    assert first.endswith('is running, with the PipeWeave schema in database "pipeweave"')
    url = dev.line_starting("export DATABASE_URL=").removeprefix("export DATABASE_URL=")
    params = conninfo_to_dict(url)
    assert (params["host"], params["user"], params["dbname"]) == (
        "127.0.0.1",
        "postgres",
        "pipeweave",
    )
    assert "password" not in params
    folder_line = dev.line_starting("Data folder: ")
    folder = Path(
        folder_line.removeprefix("Data folder: ").removesuffix(" (removed when it stops)")
    )
    assert folder.is_dir()
    dev.line_starting("Press Ctrl-C")

    with create_database(connection_string=url, max=1) as db:
        assert schema_status(db).up_to_date
        db.none("INSERT INTO services (id, version, base_url) VALUES ('svc', '1', 'http://x')")
        assert db.one("SELECT count(*) AS n FROM services")["n"] == 1
    server_pid = postmaster_pid(folder)

    code, rest, stderr = dev.stop(signum)
    assert (code, stderr) == (0, "")
    assert rest.splitlines() == ["Stopping...", f"✓ Server stopped and {folder} removed"]
    assert not folder.exists()
    assert not folder.with_name(f"{folder.name}.lock").exists()
    assert wait_until(lambda: not process_alive(server_pid), 10)


def test_two_dev_servers_run_side_by_side(dev: DevProcess) -> None:
    other = DevProcess()
    try:
        urls = {process.line_starting("export DATABASE_URL=") for process in (dev, other)}
        assert len(urls) == 2
        for process in (dev, other):
            assert process.stop(signal.SIGINT)[0] == 0
    finally:
        other.kill()


def test_dev_with_a_folder_without_binaries_is_a_usage_error(tmp_path: Path) -> None:
    assert PIPEWEAVE_DB is not None
    result = subprocess.run(
        [PIPEWEAVE_DB, "dev", "--pg-bin", str(tmp_path)],
        capture_output=True,
        encoding="utf-8",
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"Invalid value for '--pg-bin': {tmp_path} holds no initdb and postgres" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_killed_dev_server_is_removed_by_the_next_one(dev: DevProcess) -> None:
    folder_line = dev.line_starting("Data folder: ")
    folder = Path(
        folder_line.removeprefix("Data folder: ").removesuffix(" (removed when it stops)")
    )
    server_pid = postmaster_pid(folder)
    dev.kill()
    assert folder.is_dir(), "SIGKILL leaves the folder behind"
    assert process_alive(server_pid)

    following = DevProcess()
    try:
        following.line_starting("Press Ctrl-C")
        assert not folder.exists()
        assert wait_until(lambda: not process_alive(server_pid), 10)
        assert following.stop(signal.SIGINT)[0] == 0
    finally:
        following.kill()
