"""--pipeweave-keep-failed: a failed test's data kept in a database of its own."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest

pytestmark = pytest.mark.usefixtures("pipeweave_inner_env")

SUITE = """
import pytest

INSERT = "INSERT INTO services (id, version, base_url) VALUES (%s, '1', 'u')"


def test_fails_in_rollback_mode(pipeweave_database, pipeweave_factory):
    pipeweave_database.none(INSERT, ["uncommitted"])
    pipeweave_factory.task_run()
    assert False, "boom"


@pytest.mark.pipeweave(committed=True)
def test_fails_in_committed_mode(pipeweave_database):
    pipeweave_database.none(INSERT, ["committed"])
    assert False, "boom"


def test_passes(pipeweave_database):
    pipeweave_database.none(INSERT, ["passing"])


def test_next_starts_clean(pipeweave_database):
    assert pipeweave_database.one("SELECT count(*) AS n FROM services")["n"] == 0
"""


def kept(stdout: str) -> dict[str, str]:
    """Mode of the failed test ("rollb", "commi": names are cut at 63) -> the kept database."""
    return {
        name.split("test_fails_in_")[1][:5]: name
        for name in re.findall(r"kept in database (pytest_pipeweave_failed_\w+)", stdout)
    }


def rows(folder: Path, name: str, query: str) -> list[tuple]:
    info = json.loads((folder / "run.json").read_text())["info"]
    url = f"postgresql://{info['user']}:{info['password'] or ''}@127.0.0.1:{info['port']}/{name}"
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute(query).fetchall()


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "n2"])
def test_a_failed_tests_data_is_kept_and_dropped_by_the_next_run(
    pytester: pytest.Pytester, reuse_folder: Path, workers: list[str]
) -> None:
    pytester.makepyfile(test_kept_suite=SUITE)
    args = ["-p", "no:cacheprovider", "-p", "no:asyncio", "--pipeweave-keep-failed", *workers]
    result = pytester.runpytest_subprocess(*args, timeout=180)
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["*pipeweave: the failed test's data*", "*drop it: DROP DATABASE*"])
    names = kept(out)
    assert set(names) == {"rollb", "commi"}, out
    assert "passing" not in out
    rollback = names["rollb"]
    assert rows(reuse_folder, rollback, "SELECT id FROM services ORDER BY id")[-1] == (
        "uncommitted",
    )
    assert rows(reuse_folder, rollback, "SELECT count(*) FROM task_runs") == [(1,)]
    committed = names["commi"]
    assert rows(reuse_folder, committed, "SELECT id FROM services") == [("committed",)]

    again = pytester.runpytest_subprocess(*args, "-k", "passes", timeout=180)
    again.assert_outcomes(passed=1)
    left = rows(
        reuse_folder,
        "postgres",
        "SELECT datname FROM pg_database WHERE datname LIKE 'pytest_pipeweave_failed%'",
    )
    assert left == []
