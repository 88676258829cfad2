"""Helpers shared by the project's tests, built on the project's own plugin."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import PG_BIN_VARIABLE, pg_bin
from hypothesis import settings
from psycopg import sql

from pytest_pipeweave import LocalServer, ServerInfo, drop_database
from pytest_pipeweave.runs import REUSE_KEY, base_dir, base_path

settings.register_profile("ci", max_examples=10_000, deadline=None)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)


@pytest.fixture
def empty_database_url(pipeweave_server: ServerInfo) -> Iterator[str]:
    """A new, empty database (no PipeWeave schema), dropped after the test."""
    name = f"pw_empty_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pipeweave_server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    yield pipeweave_server.url(name)
    drop_database(pipeweave_server, name)


@pytest.fixture
def pipeweave_inner_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """For inner pytest runs: no plugin settings inherited from the outer run but the binaries
    (PIPEWEAVE_PG_BIN), and misleading DB_* variables that ``pipeweave_env`` must clear (a
    socket folder that does not exist)."""
    for name in list(os.environ):
        if name == PG_BIN_VARIABLE:
            continue
        if name.startswith(("PIPEWEAVE_", "PYTEST_XDIST", "PYTEST_ADDOPTS")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DB_HOST", "/nonexistent-pipeweave-socket-dir")
    monkeypatch.setenv("DB_NAME", "wrong")
    monkeypatch.setenv("DB_USER", "wrong")


@pytest.fixture
def start_local_server() -> Iterator[Callable[..., tuple[LocalServer, ServerInfo]]]:
    """Start servers of the test's own (TLS, password auth, a socket folder...), stopped after.

    Keywords go to LocalServer (settings, hba, password, socket_dir, port).
    """
    started: list[LocalServer] = []

    def start(**options: Any) -> tuple[LocalServer, ServerInfo]:
        workdir = base_dir() / f"test-server-{uuid.uuid4().hex[:8]}"
        server = LocalServer(pg_bin(), workdir, cache_dir=base_dir() / "cache", **options)
        started.append(server)
        return server, server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server_folder() -> Iterator[Callable[[str], Path]]:
    """Folders the server user can read (certificates, socket folders), removed after."""
    made: list[Path] = []

    def make(name: str) -> Path:
        folder = base_dir() / f"test-{name}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(mode=0o755)
        made.append(folder)
        return folder

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def reuse_folder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """PIPEWEAVE_TMPDIR of the test's own, so its reused server is nobody else's; whatever is
    kept there is stopped with the one documented command afterwards."""
    parent = Path(
        tempfile.mkdtemp(prefix="pwr-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    )
    parent.chmod(0o755)
    monkeypatch.setenv("PIPEWEAVE_TMPDIR", str(parent))
    yield base_path(str(parent)) / f"run-{REUSE_KEY}"
    stop = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--pipeweave-stop-reused"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    subprocess.run(["rm", "-rf", str(parent)], check=False)
    assert stop.returncode == 0, stop.stdout + stop.stderr
