"""ephemeral_server() and ephemeral_database() without pytest: a script, a unittest suite.

Each case runs in a process of its own (``python -c``, ``python -m unittest``) and ends in one
of the ways a user's would: the block ends, an exception, Ctrl-C. Whatever way, nothing may be
left: no server process, no run folder or lock, no database on a server that outlives it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
from helpers import EphemeralScript, read_line, script_env

from pipeweave_db import ConfigError
from pytest_pipeweave import BinariesNotFound, ServerInfo, ephemeral_database, ephemeral_server
from pytest_pipeweave.processes import process_alive, wait_until


def postmaster_pid(folder: str) -> int:
    return int((Path(folder) / "local" / "data" / "postmaster.pid").read_text().split()[0])


def assert_no_run_left(folder: str, pid: int | None) -> None:
    assert not Path(folder).exists(), "the run folder is removed"
    assert not Path(f"{folder}.lock").exists(), "so is its lock"
    if pid is not None:
        assert wait_until(lambda: not process_alive(pid), 10), "the server is stopped"


ENDINGS = pytest.mark.parametrize("ending", ["block-ends", "exception", "ctrl-c"])


@ENDINGS
def test_a_local_server_and_database_leave_nothing(ending: str) -> None:
    script = EphemeralScript({}, ending, script_env())
    assert script.server.backend == "local" and script.server.ephemeral
    pid = postmaster_pid(script.report["folder"])
    assert process_alive(pid)
    code, out, err = script.end(ending)
    if ending == "block-ends":
        assert (code, out.strip()) == (0, "left the blocks"), err
    else:
        assert code != 0
        assert ("RuntimeError" if ending == "exception" else "KeyboardInterrupt") in err
    assert_no_run_left(script.report["folder"], pid)


@ENDINGS
def test_a_database_on_a_users_server_is_dropped(ending: str, pipeweave_server: ServerInfo) -> None:
    """The url backend: the server outlives the script, the script's database must not."""
    url = pipeweave_server.tcp_url()
    script = EphemeralScript({"backend": "url", "url": url}, ending, script_env())
    name = psycopg.conninfo.conninfo_to_dict(script.report["url"])["dbname"]
    assert name in databases(pipeweave_server)
    code, _, err = script.end(ending)
    assert (code == 0) is (ending == "block-ends"), err
    assert name not in databases(pipeweave_server)
    assert_no_run_left(script.report["folder"], None)


def databases(server: ServerInfo) -> set[str]:
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}


def test_the_environment_fills_what_the_arguments_leave_out(
    pipeweave_server: ServerInfo,
) -> None:
    """As the plugin's options: PIPEWEAVE_TEST_DATABASE_URL makes auto choose the url backend."""
    env = script_env(PIPEWEAVE_TEST_DATABASE_URL=pipeweave_server.tcp_url())
    script = EphemeralScript({}, "block-ends", env)
    assert script.server.backend == "url"
    assert script.end("block-ends")[0] == 0


SUITE = """
import contextlib, json, os, sys, unittest
from pipeweave_db import create_database, is_database_initialized
from pytest_pipeweave import ephemeral_database, ephemeral_server


class TestWithAServer(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        stack = contextlib.ExitStack()
        cls.addClassCleanup(stack.close)
        cls.server = stack.enter_context(ephemeral_server())
        cls.url = stack.enter_context(ephemeral_database(cls.server))
        with open(os.environ["SUITE_REPORT"], "w") as report:
            json.dump({"folder": cls.server.folder}, report)

    def setUp(self):
        self.db = create_database(connection_string=self.url, max=1)
        self.addCleanup(self.db.close)

    def test_schema(self):
        self.assertTrue(is_database_initialized(self.db))

    def test_write(self):
        self.db.none("INSERT INTO services (id, version, base_url) VALUES ('s', '1', 'u')")
        self.assertEqual(self.db.one("SELECT count(*) AS n FROM services")["n"], 1)

    def test_wait(self):
        if os.environ.get("SUITE_WAIT"):
            print("waiting", flush=True)
            sys.stdin.readline()
"""


@pytest.mark.parametrize("ending", ["suite-ends", "ctrl-c"])
def test_a_unittest_suite(tmp_path: Path, ending: str) -> None:
    """Ctrl-C stops unittest without its class cleanups: what stops the server then is the
    interpreter's exit."""
    (tmp_path / "test_suite.py").write_text(textwrap.dedent(SUITE))
    report = tmp_path / "report.json"
    env = script_env(SUITE_REPORT=str(report))
    if ending == "ctrl-c":
        env["SUITE_WAIT"] = "1"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, unittest; signal.signal(signal.SIGINT, signal.default_int_handler);"
            " unittest.main(module=None, argv=['unittest', '-v', 'test_suite'])",
        ],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if ending == "ctrl-c":
        assert read_line(process, 120).strip() == "waiting"
        folder = json.loads(report.read_text())["folder"]
        pid = postmaster_pid(folder)
        process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    if ending == "suite-ends":
        assert process.returncode == 0, err
        assert "Ran 3 tests" in err and "OK" in err
        folder, pid = json.loads(report.read_text())["folder"], None
    else:
        assert process.returncode != 0 and "KeyboardInterrupt" in err, err
    assert_no_run_left(folder, pid)


def test_bad_arguments_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"^unknown backend 'oracle' \(argument backend\): "):
        ephemeral_server("oracle").__enter__()
    with pytest.raises(
        BinariesNotFound, match=r"^no initdb and postgres binaries in argument pg_bin /nonexistent$"
    ):
        ephemeral_server("local", pg_bin="/nonexistent").__enter__()


def test_ephemeral_database_in_process(pipeweave_server: ServerInfo) -> None:
    """Beside the plugin's own server: a setup function, and the database gone afterwards."""
    with ephemeral_database(
        pipeweave_server, setup=lambda db: db.none("CREATE TABLE extra (id int)")
    ) as url:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM extra").fetchone() == (0,)
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        assert name in databases(pipeweave_server)
    assert name not in databases(pipeweave_server)
