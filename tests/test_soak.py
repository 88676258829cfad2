"""A 10,000-test run (rollback, committed and factory tests, ``-n 2``): what a long run holds
stays flat from its first thousand tests to its last, and the run leaves nothing behind.

Marked ``soak``; it runs where ``CI`` (``.ci/run`` sets it) or ``PWT_SOAK`` is set. Each worker
samples every 500th test: its open file descriptors, its resident memory, the server's client
backends and the time per test since the last sample. The floor runs first: as many tests
with a bare fixture, sampled alike, since pytest's workers keep every test's reports and so
grow on their own. The figures are printed (``-rA`` shows them).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(
        not (os.environ.get("CI") or os.environ.get("PWT_SOAK")),
        reason="the soak runs in CI (or with PWT_SOAK=1)",
    ),
]

TESTS = 10_000
EVERY = 500
# What the plugin may add to a worker's memory over the run, beyond pytest's own growth.
GROWTH = 0.10
Sample = dict[str, Any]

CONFTEST = f'''
import json, os, time
import pytest

_count = 0


def pytest_collection_modifyitems(items):
    """The kinds of test spread evenly, so that every stretch of the run has its share."""
    kinds = {{}}
    for item in items:
        kinds.setdefault(item.originalname, []).append(item)
    spread = [
        (i / len(group), k, item)
        for k, group in enumerate(kinds.values()) for i, item in enumerate(group)
    ]
    items[:] = [item for _, _, item in sorted(spread, key=lambda entry: entry[:2])]


@pytest.fixture(autouse=True)
def _sample(request):
    global _count
    yield
    _count += 1
    if _count % {EVERY}:
        return
    sample = dict(
        worker=os.environ.get("PYTEST_XDIST_WORKER", "main"), tests=_count,
        at=time.perf_counter(), fds=len(os.listdir("/proc/self/fd")),
        rss_kb=next(
            int(line.split()[1]) for line in open("/proc/self/status")
            if line.startswith("VmRSS:")
        ),
    )
    if os.environ["SOAK_KIND"] == "ours":
        import psycopg

        server = request.getfixturevalue("pipeweave_server")
        # Not counting the samplers' own connections (the other worker's may be open too).
        with psycopg.connect(
            server.admin_url, autocommit=True, application_name="soak-sample"
        ) as conn:
            sample["backends"] = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND application_name <> 'soak-sample'"
            ).fetchone()[0]
    with open(os.environ["SOAK_SAMPLES"], "a") as out:
        out.write(json.dumps(sample) + "\\n")
'''

# Six rollback tests, two factory tests and two committed tests in every ten.
SUITE = f"""
import pytest

INSERT = "INSERT INTO services (id, version, base_url) VALUES (%s, '1', 'http://s')"
COUNT = "SELECT count(*) AS c FROM services"


@pytest.mark.parametrize("n", range({TESTS * 6 // 10}))
def test_rollback(n, pipeweave_database):
    pipeweave_database.none(INSERT, [f"s{{n}}"])
    assert pipeweave_database.one(COUNT)["c"] == 1


@pytest.mark.parametrize("n", range({TESTS * 2 // 10}))
def test_factory(n, pipeweave_factory):
    assert pipeweave_factory.task_run()["status"]


@pytest.mark.parametrize("n", range({TESTS * 2 // 10}))
def test_committed(n, pipeweave_database_committed):
    pipeweave_database_committed.none(INSERT, [f"s{{n}}"])
    assert pipeweave_database_committed.one(COUNT)["c"] == 1
"""

FLOOR = f"""
import pytest


@pytest.fixture
def bare():
    return 1


@pytest.mark.parametrize("n", range({TESTS}))
def test_bare(n, bare):
    assert bare == 1
"""


def run_suite(folder: Path, kind: str, source: str, tmpdir: Path) -> dict[str, list[Sample]]:
    """Run ``source`` with ``-n 2``; each worker's samples, in order."""
    folder.mkdir()
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / f"test_{kind}.py").write_text(source)
    samples = folder / "samples.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2"],
        cwd=folder,
        env={
            **os.environ,
            "PIPEWEAVE_TMPDIR": str(tmpdir),
            "SOAK_SAMPLES": str(samples),
            "SOAK_KIND": kind,
        },
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    assert f"{TESTS} passed" in run.stdout, run.stdout[-2000:]
    by_worker: dict[str, list[Sample]] = {}
    for line in samples.read_text().splitlines():
        sample = json.loads(line)
        by_worker.setdefault(sample["worker"], []).append(sample)
    for series in by_worker.values():
        assert series[-1]["tests"] >= 4000, "each worker ran thousands of tests"
        for before, sample in itertools.pairwise(series):
            elapsed = sample["at"] - before["at"]
            sample["ms"] = elapsed / (sample["tests"] - before["tests"]) * 1e3
    return by_worker


def first_and_last(series: list[Sample], figure: str) -> tuple[float, float]:
    """``figure`` over the first thousand tests (after the first) and over the last thousand."""
    first = [s[figure] for s in series if 1000 < s["tests"] <= 2000]
    last = [s[figure] for s in series[-2:]]
    return statistics.median(first), statistics.median(last)


def test_ten_thousand_tests_hold_flat_and_leave_nothing(
    pipeweave_inner_env: None, tmp_path: Path
) -> None:
    tmpdir = Path(
        tempfile.mkdtemp(prefix="pws-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
    )
    tmpdir.chmod(0o755)
    try:
        floor = run_suite(tmp_path / "floor", "floor", FLOOR, tmpdir)
        ours = run_suite(tmp_path / "ours", "ours", SUITE, tmpdir)
        # (A run's empty lock file stays a minute for late waiters; the next run removes it.)
        folders = [path for path in tmpdir.glob("pytest-pipeweave-*/run-*") if path.is_dir()]
        assert folders == [], "no run folder left"
        alive = subprocess.run(["pgrep", "-f", str(tmpdir)], capture_output=True, text=True)
        assert alive.stdout == "", "no server process left"
    finally:
        subprocess.run(["rm", "-rf", str(tmpdir)], check=False)

    print("worker  tests  ms/test (floor)  backends  fds  RSS MB (floor)")
    for worker, series in sorted(ours.items()):
        for sample, bare in zip(series[1:], floor[worker][1:], strict=False):
            print(
                f"{worker:>6} {sample['tests']:>6} {sample['ms']:8.2f} ({bare['ms']:5.2f})"
                f" {sample['backends']:>9} {sample['fds']:>4} {sample['rss_kb'] / 1024:7.1f}"
                f" ({bare['rss_kb'] / 1024:5.1f})"
            )
    grown: list[tuple[float, float]] = []  # each worker's RSS at the start, what we added
    for worker, series in sorted(ours.items()):
        ms, floor_ms = first_and_last(series, "ms"), first_and_last(floor[worker], "ms")
        rss, floor_rss = first_and_last(series, "rss_kb"), first_and_last(floor[worker], "rss_kb")
        fds = first_and_last(series, "fds")
        added = (rss[1] - rss[0]) - (floor_rss[1] - floor_rss[0])
        print(
            f"{worker}: ms/test first thousand {ms[0]:.2f}, last {ms[1]:.2f}"
            f" (floor {floor_ms[0]:.2f}, {floor_ms[1]:.2f}); RSS growth"
            f" {(rss[1] - rss[0]) / 1024:.1f} MB, pytest's own (the floor's)"
            f" {(floor_rss[1] - floor_rss[0]) / 1024:.1f} MB, the plugin's {added / 1024:.1f} MB"
            f" of {rss[0] / 1024:.1f} MB; open fds {fds[0]:.0f} -> {fds[1]:.0f}"
        )
        assert fds[1] <= fds[0], (worker, "open file descriptors", fds)
        grown.append((rss[0], added))
    # Summed over the workers: one worker's RSS moves by a few MB either way on its own.
    start, added = (sum(figures) for figures in zip(*grown, strict=True))
    assert added <= start * GROWTH, ("resident memory the plugin added", grown)
    # A leak raises every late sample; a worker's passing connection (its janitor's, once it
    # is done) raises one: the median of the last three against the most of the first three.
    first_backends = max(s["backends"] for series in ours.values() for s in series[:3])
    last_backends = statistics.median(
        s["backends"] for series in ours.values() for s in series[-3:]
    )
    print(f"server client backends: first thousand {first_backends}, last {last_backends:g}")
    assert last_backends <= first_backends, (first_backends, last_backends)
