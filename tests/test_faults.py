"""Faults: a server killed under a busy pool, an interrupted cleanup, Ctrl-C in a test run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import INSERT_CACHE_ROWS, kill_server, leftovers

from pipeweave_db import Database, DatabaseConfig, cleanup, create_database
from pytest_pipeweave import LocalServer, ServerInfo
from pytest_pipeweave.processes import wait_until

StartServer = Callable[..., tuple[LocalServer, ServerInfo]]
CONNECT_TIMEOUT = 2


@pytest.mark.parametrize("allow_exit_on_idle", [False, True])
def test_a_killed_server_fails_queries_fast_and_the_same_database_recovers(
    start_local_server: StartServer, allow_exit_on_idle: bool
) -> None:
    server, info = start_local_server()
    db = create_database(
        connection_string=info.url(),
        max=4,
        connect_timeout=CONNECT_TIMEOUT,
        allow_exit_on_idle=allow_exit_on_idle,
    )
    done: list[float] = []
    failures: list[tuple[float, str]] = []
    stop = threading.Event()

    def keep_querying() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                db.one("SELECT pg_sleep(0.005) AS slept")
                done.append(time.monotonic() - started)
            except Exception as exc:
                failures.append((time.monotonic() - started, f"{type(exc).__name__}: {exc}"))

    threads = [threading.Thread(target=keep_querying) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: len(done) > 20, 10)
        kill_server(server)
        assert wait_until(lambda: len(failures) >= 8, 30), "queries keep failing, none hang"
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=CONNECT_TIMEOUT + 10)
    assert not any(thread.is_alive() for thread in threads), "a query hung"
    # The connect timeout, plus slack for a loaded machine: failing, not hanging.
    assert max(seconds for seconds, _ in failures) < CONNECT_TIMEOUT + 5
    for _, message in failures:
        assert "OperationalError" in message or "AdminShutdown" in message, message

    server.restart()
    assert db.one("SELECT 1 AS back") == {"back": 1}, "the same Database works again"
    db.close()


def test_an_interrupted_cleanup_leaves_consistent_tables_and_a_rerun_finishes(
    pipeweave_database_committed: Database, pipeweave_config: DatabaseConfig
) -> None:
    db = pipeweave_database_committed
    now = datetime.now(timezone.utc)
    db.none(INSERT_CACHE_ROWS, ["old-", now - timedelta(hours=1), 200_000])
    db.none(INSERT_CACHE_ROWS, ["live-", now + timedelta(hours=1), 1_000])
    batch = 2_000
    errors: list[BaseException] = []
    victim = create_database(pipeweave_config, application_name="cleanup-victim", max=1)
    # A batch takes a millisecond or two: rather than race it, hold the victim before the batch
    # after its third that deleted rows, lock the table so that batch waits inside its DELETE,
    # and kill it there.
    paused, resume = threading.Event(), threading.Event()
    deleted: list[int] = []  # what each batch that finished deleted
    run_query = victim.query

    def query(query: Any, params: Any = None, kind: Any = "many_or_none") -> Any:
        if kind == "result" and len([n for n in deleted if n]) == 3 and not paused.is_set():
            paused.set()
            resume.wait(30)
        result = run_query(query, params, kind)
        if kind == "result":
            deleted.append(result)
        return result

    victim.query = query  # type: ignore[method-assign]

    def run_cleanup() -> None:
        try:
            cleanup(victim, batch_size=batch)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run_cleanup)
    worker.start()
    remaining = lambda: db.one("SELECT count(*) AS n FROM idempotency_cache")["n"]  # noqa: E731
    assert paused.wait(30), "cleanup made progress"
    with psycopg.connect(pipeweave_config.conninfo()) as blocker:
        blocker.execute("LOCK TABLE idempotency_cache IN ACCESS EXCLUSIVE MODE")
        resume.set()
        waiting = (
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE application_name = 'cleanup-victim' AND wait_event_type = 'Lock'"
        )
        assert wait_until(lambda: db.one(waiting)["n"] == 1, 30), "the batch waits for the lock"
        killed = db.one(
            "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity"
            " WHERE application_name = 'cleanup-victim'"
        )
        assert killed == {"killed": True}
        blocker.rollback()
    worker.join(timeout=30)
    assert errors and isinstance(errors[0], psycopg.OperationalError), errors
    del victim.query  # the rerun below runs every batch

    expired_left = db.one("SELECT count(*) AS n FROM idempotency_cache WHERE expires_at < now()")[
        "n"
    ]
    assert 0 < expired_left < 200_000
    assert 200_000 - expired_left == sum(deleted), "only whole batches were deleted"
    assert max(deleted) <= batch
    assert (
        db.one("SELECT count(*) AS n FROM idempotency_cache WHERE idempotency_key LIKE 'live-%%'")[
            "n"
        ]
        == 1_000
    )

    result = cleanup(victim, batch_size=batch)  # the same Database, after its connection died
    assert result.expired_cache_deleted == expired_left
    assert remaining() == 1_000
    victim.close()


# -- Ctrl-C in a test run ------------------------------------------------------------------


@pytest.mark.parametrize("moment", ["start-up", "test"])
def test_ctrl_c_leaves_nothing_behind(
    pytester: pytest.Pytester, pipeweave_inner_env: None, tmp_path: Path, moment: str
) -> None:
    # A base folder of its own, with no cached cluster: start-up runs initdb, long enough to
    # be interrupted in the middle.
    tmpdir = Path(
        tempfile.mkdtemp(prefix="pwc-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
    )
    tmpdir.chmod(0o755)
    reached = tmp_path / "reached"
    pytester.makepyfile(
        f"""
        import pathlib, time

        def test_wait(pipeweave_database):
            pathlib.Path({str(reached)!r}).write_text("")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(0.05)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"],
        cwd=pytester.path,
        env={**os.environ, "PIPEWEAVE_TMPDIR": str(tmpdir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if moment == "start-up":
        started = lambda: any(tmpdir.glob("pytest-pipeweave-*/run-*/local"))  # noqa: E731
    else:
        started = reached.exists
    assert wait_until(started, 60), process.communicate(timeout=5)[0]
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=60)
    assert process.returncode != 0, out
    assert wait_until(lambda: leftovers(tmpdir) == ([], []), 10), (leftovers(tmpdir), out)
    shutil.rmtree(tmpdir)
