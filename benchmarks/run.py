#!/usr/bin/env python3
"""PipeWeave's test fixtures against pytest-postgresql and testcontainers, side by side.

    python3 benchmarks/run.py              # everything, 3 repetitions (about 10 minutes)
    python3 benchmarks/run.py --quick      # 2 repetitions, smaller cleanup: a smoke run
    python3 benchmarks/run.py --only isolation,start

The first run builds a virtualenv (``--work``, default /tmp/pipeweave-bench/venv, outside the
repository) with this project, pytest-postgresql, testcontainers, pytest-xdist and matplotlib,
then re-runs itself inside it. Each measurement runs an inner pytest suite (``suite/``) as a
user would, several times; figures are medians and every ratio compares runs made in the same
invocation, next to each other. As root, the inner suites run as the unprivileged ``postgres``
user (PostgreSQL refuses root; pytest-postgresql runs pg_ctl as the current user), ours too,
so both sides start their servers the same way. Docker figures need a Docker engine (set
DOCKER_HOST, e.g. after ``bash .ci/provision-docker``) and the ``postgres:15`` image.

Writes ``results/<date>-<host>.json``, ``results/latest.md`` and ``results/per-test-overhead.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import hashlib
import json
import os
import platform
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SUITE = HERE / "suite"
RESULTS = HERE / "results"
REQUIREMENTS = [
    "pytest-postgresql[async]>=10",
    "pytest-asyncio>=1.4",
    "testcontainers>=4.8",
    "pytest-xdist>=3.5",
    "matplotlib>=3.7",
]
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MEASUREMENTS = (
    "isolation",
    "reset",
    "start",
    "xdist",
    "cleanup",
    "seed",
    "async",
    "scoped",
    "reuse",
)
IMAGE = os.environ.get("PIPEWEAVE_IMAGE", "postgres:15")
# pytest-postgresql's process fixture tuned as the local backend is (data on tmpfs, no fsync).
TUNED_PG_OPTIONS = "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the virtualenv ---------------------------------------------------------------------------


def ensure_venv(work: Path, python: str, project: Path = REPO) -> Path:
    """``work/venv`` with ``project`` (editable) and the peers; rebuilt when the recipe changes."""
    venv = work / "venv"
    recipe = hashlib.sha256(
        "\n".join([python, *REQUIREMENTS, (project / "pyproject.toml").read_text()]).encode()
    ).hexdigest()[:16]
    stamp = venv / "pipeweave-bench.recipe"
    if stamp.is_file() and stamp.read_text() == recipe:
        return venv
    say(f"building the virtualenv {venv} (once)")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", str(project), *REQUIREMENTS], check=True)
    stamp.write_text(recipe)
    return venv


def prepare_venv(work: Path, python: str, project: Path = REPO) -> Path:
    """The virtualenv of ``project``, compiled and readable by the inner user."""
    venv = ensure_venv(work, python, project)
    # The project is installed editable: compile it now, or an inner user who cannot write
    # its __pycache__ would compile it again in every run (the peers' wheels come compiled).
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "compileall",
            "-q",
            "pipeweave_db",
            "pytest_pipeweave",
        ],
        cwd=project,
        check=True,
    )
    if os.geteuid() == 0:
        subprocess.run(["chmod", "-R", "a+rX", str(work)], check=True)
    return venv


def baseline_venv(work: Path, python: str, revision: str) -> tuple[str, Path]:
    """The short commit of ``revision`` and a virtualenv with this project as it was there.

    The commit's files come from ``git archive``, so the checkout is left alone."""
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", f"{revision}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"--baseline: {revision!r} is not a commit of this repository")
    commit = done.stdout.strip()
    place = work / f"baseline-{commit}"
    source = place / "src"
    if not (source / "pyproject.toml").is_file():
        shutil.rmtree(source, ignore_errors=True)
        source.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    return commit, prepare_venv(place, python, source)


# -- running the inner suites -----------------------------------------------------------------


class Runner:
    """Runs one inner pytest suite file and returns what it measured."""

    def __init__(self, work: Path, venv: Path, docker_host: str | None) -> None:
        self.work = work
        self.venv = venv
        self.docker_host = docker_host
        self.user = inner_user()
        self.suite = work / "suite"
        self.out = work / "out"
        self.logs = work / "logs"
        self.home = work / "home"
        shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path("/tmp")
        self.shm = shm
        self.tmpdir = shm / "pipeweave-bench"  # PIPEWEAVE_TMPDIR of the warm runs
        for path in (self.out, self.logs, self.home, self.tmpdir):
            path.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.suite, ignore_errors=True)
        shutil.copytree(SUITE, self.suite, ignore=shutil.ignore_patterns("__pycache__"))
        for path in (self.suite, self.out, self.home):
            self.give(path)
        # Not recursive: root's own runs (docker) keep their pytest-pipeweave-0 in there.
        self.give(self.tmpdir, recursive=False)
        self.bin_dir = pg_bin_dir()
        self.count = 0

    def give(self, path: Path, recursive: bool = True) -> None:
        """Hand ``path`` to the inner user; readable by everyone."""
        path.chmod(0o755)
        if self.user is not None:
            flags = ["-R"] if recursive else []
            subprocess.run(["chown", *flags, f"{self.user}:", str(path)], check=True)

    def fresh_dir(self, prefix: str) -> Path:
        path = self.shm / f"{prefix}-{uuid.uuid4().hex[:8]}"
        path.mkdir(mode=0o755)
        self.give(path)
        return path

    def pytest(
        self,
        test_file: str,
        *args: str,
        peer: str = "",
        docker: bool = False,
        env: dict[str, str] | None = None,
        venv: Path | None = None,
    ) -> dict[str, Any]:
        """Run ``suite/test_file``: its timing, its extra figures, and its wall-clock time.

        Docker runs stay with the invoking user (the engine's socket is theirs); the others
        run as the inner user when we are root. ``venv`` runs another build of the project.
        """
        venv = venv or self.venv
        self.count += 1
        tag = f"{self.count:03d}-{Path(test_file).stem}-{peer or 'ours'}"
        out, extra = self.out / f"{tag}.json", self.out / f"{tag}.extra.json"
        variables = {
            "PATH": f"{venv / 'bin'}:{SYSTEM_PATH}",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(self.suite),
            "PWB_OUT": str(out),
            "PWB_EXTRA": str(extra),
            "PWB_PEER": peer,
            "PWB_IMAGE": IMAGE,
            "PIPEWEAVE_TMPDIR": str(self.tmpdir),
        }
        if docker:
            assert self.docker_host is not None
            variables.update(
                DOCKER_HOST=self.docker_host,
                TESTCONTAINERS_RYUK_DISABLED="true",
                TESTCONTAINERS_CONNECTION_MODE="docker_host",
            )
        variables.update(env or {})
        command = [str(venv / "bin" / "python"), "-m", "pytest", test_file]
        if peer == "none":  # pytest alone: pytest-postgresql's plugin imports psycopg and more
            command += ["-p", "no:pipeweave", "-p", "no:pytest_postgresql"]
        elif peer:
            command += ["-p", "no:pipeweave"]
        else:
            command += ["-p", "no:pytest_postgresql", f"--pipeweave-pg-bin={self.bin_dir}"]
        if peer == "pytest-postgresql":
            command += [f"--postgresql-exec={self.bin_dir / 'pg_ctl'}"]
        command += list(args)
        prefix = ["env", "-i", *(f"{k}={v}" for k, v in variables.items())]
        if self.user is not None and not docker:
            prefix = ["runuser", "-u", self.user, "--", *prefix]
        log = self.logs / f"{tag}.log"
        started = time.perf_counter()
        with log.open("w") as handle:
            done = subprocess.run(
                prefix + command, cwd=self.suite, stdout=handle, stderr=subprocess.STDOUT
            )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"inner run failed (exit {done.returncode}); see {log}")
        timing = json.loads(out.read_text()) if out.exists() else {}  # no test ran
        extras = json.loads(extra.read_text()) if extra.exists() else {}
        return {"wall": wall, "timing": timing, "extra": extras}


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used since boot (/proc/stat), 0 where unknown."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def venv_base_python() -> str:
    """This interpreter, unless the inner user cannot run it (a pyenv under /root, say)."""
    user = inner_user()
    candidates = [sys.executable, "/usr/bin/python3"] if user else [sys.executable]
    for python in candidates:
        probe = ["runuser", "-u", user, "--"] if user else []
        if (
            subprocess.run([*probe, python, "-c", "import venv"], capture_output=True).returncode
            == 0
        ):
            return python
    raise SystemExit(f"no Python that user {user} can run: give one with --python")


def inner_user() -> str | None:
    if os.geteuid() != 0:
        return None
    name = os.environ.get("PWB_USER", "postgres")
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise SystemExit(
            f"running as root needs an unprivileged user {name!r} (PWB_USER)"
        ) from None
    return name


def pg_bin_dir() -> Path:
    """The newest PostgreSQL binaries here; both sides use the same ones."""
    explicit = os.environ.get("PIPEWEAVE_PG_BIN")
    candidates = [explicit] if explicit else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True
    )
    if on_path := shutil.which("pg_ctl"):
        candidates.append(str(Path(on_path).resolve().parent))
    for candidate in candidates:
        path = Path(candidate)
        if all((path / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return path
    raise SystemExit("no PostgreSQL binaries (initdb, pg_ctl, postgres) found")


def docker_host() -> str | None:
    """The Docker engine to use when one answers and has the image, else None."""
    host = os.environ.get("DOCKER_HOST")
    if not host and os.path.exists("/var/run/docker.sock"):
        host = "unix:///var/run/docker.sock"
    if not host or not shutil.which("docker"):
        return None
    done = subprocess.run(
        ["docker", "--host", host, "image", "inspect", IMAGE], capture_output=True, timeout=30
    )
    return host if done.returncode == 0 else None


# -- statistics -------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def phases(timing: dict[str, Any], *names: str) -> list[float]:
    """Per test, the sum of the given phases (seconds), passed tests only."""
    return [
        sum(test.get(name, 0.0) for name in names)
        for test in timing["tests"].values()
        if test["outcome"] == "passed"
    ]


def only(timing: dict[str, Any], fragment: str) -> dict[str, Any]:
    tests = {k: v for k, v in timing["tests"].items() if fragment in k}
    return {**timing, "tests": tests}


class Figures:
    """Figures (each a list of per-repetition values) and ratios between them."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.meta: dict[str, dict[str, str]] = {}
        self.ratios: dict[str, list[float]] = {}

    def add(self, key: str, value: float, label: str, unit: str) -> None:
        self.values.setdefault(key, []).append(value)
        self.meta[key] = {"label": label, "unit": unit}
        say(f"  {label}: {show(value, unit)}")

    def ratio(self, key: str, value: float, label: str) -> None:
        self.ratios.setdefault(key, []).append(value)
        self.meta[key] = {"label": label, "unit": "x"}
        say(f"  {label}: {show(value, 'x')}")

    def median(self, key: str) -> float | None:
        values = self.values.get(key) or self.ratios.get(key)
        return median(values) if values else None


def show(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ms":
        return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "rows/s":
        return f"{value:,.0f} rows/s"
    if unit == "x":
        return f"{value:.2f}x" if value < 2 else f"{value:.1f}x"
    if unit == "cores":
        return f"{value:.2f} cores"
    return f"{value:g} {unit}"


# -- the measurements -------------------------------------------------------------------------

MS = 1000.0


def isolation(run: Runner, figs: Figures, repeat: int, docker: bool) -> None:
    """(1) Per-test cost of the same 200 tests: rolled back (ours) vs a clone per test."""
    tools = [
        ("ours", "test_isolation_ours.py", {}),
        ("pgpg", "test_isolation_pgpg.py", {"peer": "pytest-postgresql"}),
        ("pgpg_tuned", "test_isolation_pgpg.py", {"peer": "pytest-postgresql", "tuned": True}),
    ]
    if docker:
        tools.append(("tc", "test_isolation_tc.py", {"peer": "testcontainers", "docker": True}))
    labels = {
        "ours": "PipeWeave pipeweave_database (rollback)",
        "pgpg": "pytest-postgresql postgresql (clone per test, defaults)",
        "pgpg_tuned": "pytest-postgresql postgresql (clone per test, fsync off, tmpfs)",
        "tc": "testcontainers PostgresContainer + TRUNCATE per test",
    }
    for rep in range(repeat):
        say(f"isolation, repetition {rep + 1}/{repeat}")
        overhead: dict[str, float] = {}
        total: dict[str, float] = {}
        # A different order each time, so that a slow stretch of the machine hits everyone.
        for name, test_file, options in tools[rep % len(tools) :] + tools[: rep % len(tools)]:
            result = run_tool(run, test_file, options)
            timing = result["timing"]
            overhead[name] = median(phases(timing, "setup", "teardown")) * MS
            total[name] = median(phases(timing, "setup", "call", "teardown")) * MS
            figs.add(
                f"isolation.{name}.overhead_ms",
                overhead[name],
                f"{labels[name]}: setup+teardown",
                "ms",
            )
            figs.add(
                f"isolation.{name}.per_test_ms",
                total[name],
                f"{labels[name]}: setup+call+teardown",
                "ms",
            )
        floors(run, figs, overhead["ours"])
        for peer, _, _ in tools[1:]:
            figs.ratio(
                f"isolation.{peer}.overhead_ratio",
                overhead[peer] / overhead["ours"],
                f"{peer} / ours, setup+teardown",
            )
            figs.ratio(
                f"isolation.{peer}.per_test_ratio",
                total[peer] / total["ours"],
                f"{peer} / ours, setup+call+teardown",
            )


def against_baseline(run: Runner, figs: Figures, repeat: int, commit: str, venv: Path) -> None:
    """The 200 tests of (1) with ``pipeweave_database``, this checkout against ``commit``.

    The two take turns, the order changing each repetition; the commit's runs have servers'
    folder of their own, so that neither reuses what the other built."""
    folder = run.fresh_dir(f"pipeweave-bench-{commit}")
    sides = [("now", None, {}), (commit, venv, {"PIPEWEAVE_TMPDIR": str(folder)})]
    try:
        for rep in range(repeat):
            say(f"against {commit}, repetition {rep + 1}/{repeat}")
            overhead: dict[str, float] = {}
            total: dict[str, float] = {}
            for name, side_venv, env in sides[rep % 2 :] + sides[: rep % 2]:
                timing = run.pytest("test_isolation_ours.py", env=env, venv=side_venv)["timing"]
                overhead[name] = median(phases(timing, "setup", "teardown")) * MS
                total[name] = median(phases(timing, "setup", "call", "teardown")) * MS
            label = f"pipeweave_database at {commit}"
            figs.add(
                f"baseline.{commit}.overhead_ms", overhead[commit], f"{label}: setup+teardown", "ms"
            )
            figs.add(
                f"baseline.{commit}.per_test_ms",
                total[commit],
                f"{label}: setup+call+teardown",
                "ms",
            )
            figs.add(
                "baseline.now.overhead_ms",
                overhead["now"],
                "pipeweave_database now: setup+teardown",
                "ms",
            )
            figs.add(
                "baseline.now.per_test_ms",
                total["now"],
                "pipeweave_database now: setup+call+teardown",
                "ms",
            )
            figs.ratio(
                f"baseline.{commit}.overhead_ratio",
                overhead["now"] / overhead[commit],
                f"setup+teardown: now / {commit}",
            )
            figs.ratio(
                f"baseline.{commit}.per_test_ratio",
                total["now"] / total[commit],
                f"setup+call+teardown: now / {commit}",
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def floors(run: Runner, figs: Figures, ours_overhead_ms: float) -> None:
    """The physical floors, in the same run: pytest's own cost per test (a fixture doing
    nothing), a BEGIN + ROLLBACK pair and one autocommit statement on a raw connection; and
    against them, what pipeweave_database adds to a test and to each statement."""
    timing = run_tool(run, "test_floor.py", {"peer": "none"})["timing"]
    fixture_ms = median(phases(only(timing, "::test_sync["), "setup", "teardown")) * MS
    extra = run.pytest("test_floor_sql.py")["extra"]
    pair_ms = extra["floor_begin_rollback_seconds"] * MS
    statement_ms = extra["floor_statement_seconds"] * MS
    ours_statement_ms = extra["ours_statement_seconds"] * MS
    above_ms = ours_overhead_ms - fixture_ms
    figs.add("floor.fixture_ms", fixture_ms, "floor: a pytest fixture doing nothing", "ms")
    figs.add("floor.begin_rollback_ms", pair_ms, "floor: BEGIN + ROLLBACK, raw connection", "ms")
    figs.add("floor.statement_ms", statement_ms, "floor: one statement, autocommit", "ms")
    figs.add("isolation.ours.above_floor_ms", above_ms, "PipeWeave isolation above pytest's", "ms")
    figs.add("statement.ours_ms", ours_statement_ms, "one statement via pipeweave_database", "ms")
    figs.ratio("isolation.floor_ratio", above_ms / pair_ms, "ours above pytest / BEGIN+ROLLBACK")
    figs.ratio(
        "statement.floor_ratio", ours_statement_ms / statement_ms, "statement: ours / autocommit"
    )


def async_isolation(run: Runner, figs: Figures, repeat: int) -> None:
    """(7) The same 200 tests, async: pipeweave_async_database against pipeweave_database,
    pytest-postgresql's postgresql_async (a clone per test), and each runner's floor (a fixture
    that does nothing: pytest's cost per test, and pytest-asyncio's with a loop per test)."""
    tools = [
        ("sync", "test_isolation_ours.py", {}),
        ("async", "test_isolation_async.py", {}),
        ("async_session", "test_isolation_async_session.py", {}),
        ("pgpg_async", "test_isolation_pgpg_async.py", {"peer": "pytest-postgresql"}),
        ("floor", "test_floor.py", {"peer": "none"}),
    ]
    labels = {
        "sync": "PipeWeave pipeweave_database (sync, same run)",
        "async": "PipeWeave pipeweave_async_database",
        "async_session": "PipeWeave pipeweave_async_database, one loop for the session",
        "pgpg_async": "pytest-postgresql postgresql_async (clone per test, defaults)",
        "floor_sync": "floor: a sync test with a fixture doing nothing",
        "floor_async": "floor: an async test (pytest-asyncio) with a fixture doing nothing",
        "floor_async_session": "floor: the same, one loop for the session",
    }
    for rep in range(repeat):
        say(f"async isolation, repetition {rep + 1}/{repeat}")
        cost: dict[str, float] = {}
        for name, test_file, options in tools[rep % len(tools) :] + tools[: rep % len(tools)]:
            timing = run_tool(run, test_file, options)["timing"]
            parts = (
                {
                    f"floor_{k}": only(timing, f"::test_{k}[")
                    for k in ("sync", "async", "async_session")
                }
                if name == "floor"
                else {name: timing}
            )
            for key, part in parts.items():
                cost[key] = median(phases(part, "setup", "teardown")) * MS
                figs.add(
                    f"async.{key}.overhead_ms", cost[key], f"{labels[key]}: setup+teardown", "ms"
                )
        figs.ratio("async.sync_ratio", cost["async"] / cost["sync"], "async / sync, setup+teardown")
        figs.ratio(
            "async.sync_above_floor_ratio",
            (cost["async"] - cost["floor_async"]) / (cost["sync"] - cost["floor_sync"]),
            "async / sync, each above its runner's floor",
        )
        figs.ratio(
            "async.session_sync_ratio",
            cost["async_session"] / cost["sync"],
            "async with one loop for the session / sync, setup+teardown",
        )
        figs.ratio(
            "async.pgpg_ratio",
            cost["pgpg_async"] / cost["async"],
            "pgpg_async / async, setup+teardown",
        )


def scoped(run: Runner, figs: Figures, repeat: int) -> None:
    """(8) The same 200 tests inside a module whose fixture wrote 500 task runs for all of
    them (each test a savepoint in the module's transaction) against plain pipeweave_database
    tests (each a transaction)."""
    tools = [
        ("plain", "test_isolation_ours.py"),
        ("module", "test_isolation_module.py"),
    ]
    labels = {
        "plain": "PipeWeave pipeweave_database (same run)",
        "module": "PipeWeave pipeweave_database inside module data",
    }
    for rep in range(repeat):
        say(f"module data, repetition {rep + 1}/{repeat}")
        cost: dict[str, float] = {}
        for name, test_file in tools[rep % 2 :] + tools[: rep % 2]:
            timing = run_tool(run, test_file, {})["timing"]
            # The first test also sets up the module's data: that is the module's, not a test's.
            cost[name] = median(phases(timing, "setup", "teardown")[1:]) * MS
            figs.add(
                f"scoped.{name}.overhead_ms", cost[name], f"{labels[name]}: setup+teardown", "ms"
            )
        figs.ratio("scoped.module_ratio", cost["module"] / cost["plain"], "module data / plain")


def run_tool(run: Runner, test_file: str, options: dict[str, Any]) -> dict[str, Any]:
    peer = options.get("peer", "")
    args: list[str] = []
    if options.get("tuned"):
        basetemp = run.fresh_dir("pipeweave-bench-pgpg")
        args = [f"--basetemp={basetemp}", f"--postgresql-postgres-options={TUNED_PG_OPTIONS}"]
    try:
        return run.pytest(test_file, *args, peer=peer, docker=options.get("docker", False))
    finally:
        if options.get("tuned"):
            shutil.rmtree(basetemp, ignore_errors=True)


def reset(run: Runner, figs: Figures, repeat: int) -> None:
    """(2) Committed mode's reset vs TRUNCATE of the eight tables vs a template clone."""
    for rep in range(repeat):
        say(f"committed reset, repetition {rep + 1}/{repeat}")
        result = run.pytest("test_committed.py")
        committed = only(result["timing"], "test_committed[")
        extra = result["extra"]
        reset_ms = median(phases(committed, "teardown")) * MS
        truncate_ms = median(extra["truncate_seconds"]) * MS
        file_copy_ms = median(extra["clone_file_copy_seconds"]) * MS
        wal_log_ms = median(extra["clone_wal_log_seconds"]) * MS
        drop_ms = median(extra["drop_seconds"]) * MS
        figs.add("reset.ours_ms", reset_ms, "PipeWeave committed reset (teardown)", "ms")
        figs.add("reset.truncate_ms", truncate_ms, "TRUNCATE of the eight tables", "ms")
        figs.add("reset.clone_file_copy_ms", file_copy_ms, "clone + connect, FILE_COPY", "ms")
        figs.add("reset.clone_wal_log_ms", wal_log_ms, "clone + connect, WAL_LOG", "ms")
        figs.add("reset.drop_ms", drop_ms, "DROP DATABASE of a clone just used", "ms")
        figs.ratio("reset.truncate_ratio", truncate_ms / reset_ms, "TRUNCATE / ours")
        figs.ratio("reset.clone_ratio", file_copy_ms / reset_ms, "clone (FILE_COPY) / ours")


def start(run: Runner, figs: Figures, repeat: int, docker: bool) -> None:
    """(3) Session start to the first test's call."""
    say("start: priming the warm cache (not measured)")
    run.pytest("test_start_ours.py")
    for rep in range(repeat):
        say(f"start, repetition {rep + 1}/{repeat}")
        cold_dir = run.fresh_dir("pipeweave-bench-cold")
        try:
            cold = run.pytest("test_start_ours.py", env={"PIPEWEAVE_TMPDIR": str(cold_dir)})
        finally:
            shutil.rmtree(cold_dir, ignore_errors=True)
        warm = run.pytest("test_start_ours.py")
        pgpg = run_tool(run, "test_start_pgpg.py", {"peer": "pytest-postgresql"})
        tuned = run_tool(run, "test_start_pgpg.py", {"peer": "pytest-postgresql", "tuned": True})
        firsts = {
            "cold": cold["timing"]["start_to_first_test"],
            "warm": warm["timing"]["start_to_first_test"],
            "pgpg": pgpg["timing"]["start_to_first_test"],
            "pgpg_tuned": tuned["timing"]["start_to_first_test"],
        }
        figs.add("start.cold_s", firsts["cold"], "PipeWeave local, cold (no cache)", "s")
        figs.add("start.warm_s", firsts["warm"], "PipeWeave local, warm (cached cluster)", "s")
        figs.add(
            "start.pgpg_s", firsts["pgpg"], "pytest-postgresql postgresql_proc (defaults)", "s"
        )
        figs.add(
            "start.pgpg_tuned_s",
            firsts["pgpg_tuned"],
            "pytest-postgresql postgresql_proc (fsync off, tmpfs)",
            "s",
        )
        figs.ratio(
            "start.pgpg_warm_ratio",
            firsts["pgpg"] / firsts["warm"],
            "pytest-postgresql / ours warm",
        )
        figs.ratio(
            "start.pgpg_cold_ratio",
            firsts["pgpg"] / firsts["cold"],
            "pytest-postgresql / ours cold",
        )
        for key, result in (("cold", cold), ("warm", warm), ("pgpg", pgpg)):
            figs.add(
                f"start.{key}_wall_s",
                result["wall"],
                f"whole one-test run, {key} (process start to exit)",
                "s",
            )
        if docker:
            ours = run.pytest("test_start_ours.py", "--pipeweave-backend=docker", docker=True)
            tc = run.pytest("test_start_tc.py", peer="testcontainers", docker=True)
            ours_s = ours["timing"]["start_to_first_test"]
            tc_s = tc["timing"]["start_to_first_test"]
            figs.add("start.docker_s", ours_s, "PipeWeave docker backend", "s")
            figs.add("start.tc_s", tc_s, "testcontainers PostgresContainer", "s")
            figs.ratio("start.tc_docker_ratio", tc_s / ours_s, "testcontainers / ours docker")


def reuse(run: Runner, figs: Figures, repeat: int) -> None:
    """(9) Session start to the first test with --pipeweave-reuse (the server and template
    an earlier run left), against today's warm start and pytest-postgresql's postgresql_proc;
    and with a template setup of 2 s, built each run against reused."""
    folder = run.fresh_dir("pipeweave-bench-reuse")
    env = {"PIPEWEAVE_TMPDIR": str(folder)}
    try:
        say("reuse: the first runs with reuse, and a warm cache (not measured)")
        run.pytest("test_start_ours.py")
        run.pytest("test_start_ours.py", "--pipeweave-reuse", env=env)
        run.pytest("test_start_slow_template.py", "--pipeweave-reuse", env=env)
        for rep in range(repeat):
            say(f"reuse, repetition {rep + 1}/{repeat}")
            reused = run.pytest("test_start_ours.py", "--pipeweave-reuse", env=env)
            warm = run.pytest("test_start_ours.py")
            pgpg = run_tool(run, "test_start_pgpg.py", {"peer": "pytest-postgresql"})
            floor = run.pytest("test_start_floor.py", peer="none")
            psycopg_floor = run.pytest("test_start_floor_psycopg.py", peer="none")
            firsts = {
                name: result["timing"]["start_to_first_test"]
                for name, result in (
                    ("reused", reused),
                    ("warm", warm),
                    ("pgpg", pgpg),
                    ("floor", floor),
                    ("psycopg_floor", psycopg_floor),
                )
            }
            figs.add("reuse.reused_s", firsts["reused"], "PipeWeave with reuse", "s")
            figs.add("reuse.floor_s", firsts["floor"], "floor: pytest alone, one test", "s")
            figs.add(
                "reuse.psycopg_floor_s",
                firsts["psycopg_floor"],
                "floor: pytest, and importing psycopg in the test's fixture",
                "s",
            )
            figs.ratio(
                "reuse.psycopg_floor_ratio",
                firsts["reused"] / firsts["psycopg_floor"],
                "reused / pytest and psycopg's import",
            )
            figs.ratio(
                "reuse.warm_above_floor_ratio",
                (firsts["warm"] - firsts["floor"]) / (firsts["reused"] - firsts["floor"]),
                "warm / reused, each above the floor",
            )
            figs.add("reuse.warm_s", firsts["warm"], "PipeWeave warm start (same run)", "s")
            figs.add("reuse.pgpg_s", firsts["pgpg"], "pytest-postgresql postgresql_proc", "s")
            figs.ratio("reuse.warm_ratio", firsts["warm"] / firsts["reused"], "warm / reused")
            figs.ratio("reuse.pgpg_ratio", firsts["pgpg"] / firsts["reused"], "pgpg / reused")
            slow = run.pytest("test_start_slow_template.py")
            slow_reused = run.pytest("test_start_slow_template.py", "--pipeweave-reuse", env=env)
            figs.add(
                "reuse.slow_template_s",
                slow["timing"]["start_to_first_test"],
                "a 2 s template setup, built (no reuse)",
                "s",
            )
            figs.add(
                "reuse.slow_template_reused_s",
                slow_reused["timing"]["start_to_first_test"],
                "a 2 s template setup, with reuse (built by the first run)",
                "s",
            )
    finally:
        run.pytest("test_start_ours.py", "--pipeweave-stop-reused", env=env)
        shutil.rmtree(folder, ignore_errors=True)


def xdist(run: Runner, figs: Figures, repeat: int) -> None:
    """(4) Wall time of a 400-test database-bound suite, -n 0 vs -n 2.

    The same file with 2 tests gives each mode's fixed cost (workers, server, clones), so the
    speed-up of the tests themselves shows apart from it.
    """
    for rep in range(repeat):
        say(f"xdist, repetition {rep + 1}/{repeat}")
        walls = {}
        # What the rest of the machine uses while we are idle, just before: shared machines.
        busy = machine_busy_seconds()
        time.sleep(1.0)
        others_cores = machine_busy_seconds() - busy
        for tests in ("2", "400"):
            for workers in ("0", "2"):
                result = run.pytest("test_xdist.py", "-n", workers, env={"PWB_XDIST_TESTS": tests})
                walls[tests, workers] = result["wall"]
                if (tests, workers) == ("400", "0"):
                    call_ms = median(phases(result["timing"], "call")) * MS

        figs.add("xdist.n0_s", walls["400", "0"], "400 tests, -n 0 (wall)", "s")
        figs.add("xdist.n2_s", walls["400", "2"], "400 tests, -n 2 (wall)", "s")
        figs.add("xdist.fixed_n0_s", walls["2", "0"], "2 tests, -n 0 (fixed cost)", "s")
        figs.add("xdist.fixed_n2_s", walls["2", "2"], "2 tests, -n 2 (fixed cost)", "s")
        for workers in ("0", "2"):
            baseline = run.pytest("test_xdist_baseline.py", "-n", workers, peer="none")
            figs.add(
                f"xdist.baseline_n{workers}_s",
                baseline["wall"],
                f"2 tests without a database, -n {workers} (pytest and xdist alone)",
                "s",
            )
        figs.add("xdist.call_ms", call_ms, "one test's body, median (-n 0)", "ms")
        figs.add(
            "xdist.others_cores",
            others_cores,
            "cores busy with other processes (1 s just before the runs)",
            "cores",
        )
        figs.ratio("xdist.speedup", walls["400", "0"] / walls["400", "2"], "-n 0 / -n 2, wall")
        steady = (walls["400", "0"] - walls["2", "0"]) / (walls["400", "2"] - walls["2", "2"])
        figs.ratio("xdist.steady_speedup", steady, "-n 0 / -n 2, fixed costs taken off")


def cleanup(run: Runner, figs: Figures, repeat: int, scale: float) -> None:
    """(5) cleanup() in batches vs one plain DELETE per table."""
    say(f"cleanup, {repeat} repetitions in one session")
    env = {
        "PWB_CLEANUP_REPEAT": str(repeat),
        "PWB_EXPIRED_CACHE": str(int(1_000_000 * scale)),
        "PWB_OLD_DLQ": str(int(200_000 * scale)),
    }
    result = run.pytest("test_cleanup.py", env=env)
    for one in result["extra"]["cleanup_runs"]:
        rows = one["rows"]
        figs.add("cleanup.rows", rows, "rows deleted", "rows")
        figs.add(
            "cleanup.rows_per_s", rows / one["cleanup_seconds"], "cleanup() in batches", "rows/s"
        )
        figs.add(
            "cleanup.longest_ms",
            max(one["batch_seconds"]) * MS,
            "cleanup(): longest statement",
            "ms",
        )
        figs.add(
            "cleanup.batch_ms",
            median(one["batch_seconds"]) * MS,
            "cleanup(): median statement",
            "ms",
        )
        plain = sum(one["plain_seconds"])
        figs.add("cleanup.plain_rows_per_s", rows / plain, "one plain DELETE per table", "rows/s")
        figs.add(
            "cleanup.plain_longest_ms",
            max(one["plain_seconds"]) * MS,
            "plain DELETE: longest statement",
            "ms",
        )
        figs.ratio(
            "cleanup.speed_ratio",
            (rows / one["cleanup_seconds"]) / (rows / plain),
            "cleanup() / plain DELETE, rows/s",
        )


def seed(run: Runner, figs: Figures, repeat: int) -> None:
    """(6) pipeweave_seed's setup, and the factory's task runs per second."""
    for rep in range(repeat):
        say(f"seed and factory, repetition {rep + 1}/{repeat}")
        result = run.pytest("test_seed.py")
        seeds = only(result["timing"], "test_seed[")
        extra = result["extra"]
        rows = extra["factory_rows"]
        figs.add("seed.setup_ms", median(phases(seeds, "setup")) * MS, "pipeweave_seed setup", "ms")
        figs.add(
            "seed.factory_rolled_back_rows_per_s",
            rows / extra["factory_rolled_back_seconds"],
            "factory.task_run(), rolled-back database",
            "rows/s",
        )
        figs.add(
            "seed.factory_committed_rows_per_s",
            rows / extra["factory_committed_seconds"],
            "factory.task_run(), committed database",
            "rows/s",
        )
        figs.add(
            "seed.factory_bulk_rows_per_s",
            rows / extra["factory_bulk_seconds"],
            "factory.task_runs(10000), rolled-back database",
            "rows/s",
        )
        figs.add(
            "seed.bulk_reference_rows_per_s",
            rows / extra["bulk_reference_seconds"],
            "reference: the same rows in one executemany",
            "rows/s",
        )


# -- machine, results, report -----------------------------------------------------------------


def machine_info(run: Runner, docker: str | None) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gb = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    postgres = subprocess.run(
        [str(run.bin_dir / "postgres"), "--version"], capture_output=True, text=True
    ).stdout.strip()
    from importlib import metadata

    versions = {}
    for name in (
        "pytest-pipeweave",
        "pytest-postgresql",
        "testcontainers",
        "pytest",
        "pytest-xdist",
        "psycopg",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": ram_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": postgres,
        "pg_bin": str(run.bin_dir),
        "docker": f"{docker}, image {IMAGE}" if docker else None,
        "inner_user": run.user or pwd.getpwuid(os.getuid()).pw_name,
        "tmpfs": str(run.shm),
        "git_commit": commit,
        "versions": versions,
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _at_least(key: str, bound: float) -> Any:
    return lambda f: f.median(key) >= bound


def _at_most(key: str, bound: float) -> Any:
    return lambda f: f.median(key) <= bound


# One line each: our figure, what it is measured against in the same run (a floor or a peer),
# the ratio, and the target as a ratio: absolute times differ 3-5x between machines of a kind.
TARGETS: list[dict[str, Any]] = [
    {
        "what": "Rollback isolation per test, above a bare fixture",
        "ours": "isolation.ours.above_floor_ms",
        "peer": "floor.begin_rollback_ms",
        "peer_name": "floor: BEGIN + ROLLBACK on a raw connection",
        "ratio": "isolation.floor_ratio",
        "target": "<= 2x the floor",
        "met": _at_most("isolation.floor_ratio", 2),
    },
    {
        "what": "Rollback isolation per test (setup+teardown)",
        "ours": "isolation.ours.overhead_ms",
        "peer": "isolation.pgpg.overhead_ms",
        "peer_name": "pytest-postgresql postgresql",
        "ratio": "isolation.pgpg.overhead_ratio",
        "target": ">= 50x cheaper than the peer",
        "met": _at_least("isolation.pgpg.overhead_ratio", 50),
    },
    {
        "what": "Bare pytest fixture (setup+teardown)",
        "ours": "floor.fixture_ms",
        "target": "",
    },
    {
        "what": "One statement through pipeweave_database",
        "ours": "statement.ours_ms",
        "peer": "floor.statement_ms",
        "peer_name": "floor: the same statement, autocommit",
        "ratio": "statement.floor_ratio",
        "target": "<= 1.3x the floor",
        "met": _at_most("statement.floor_ratio", 1.3),
    },
    {
        "what": "Whole test (setup+call+teardown), same body",
        "ours": "isolation.ours.per_test_ms",
        "peer": "isolation.pgpg.per_test_ms",
        "peer_name": "pytest-postgresql postgresql",
        "ratio": "isolation.pgpg.per_test_ratio",
        "target": "",
    },
    {
        "what": "Rollback isolation vs a tuned pytest-postgresql",
        "ours": "isolation.ours.overhead_ms",
        "peer": "isolation.pgpg_tuned.overhead_ms",
        "peer_name": "pytest-postgresql, fsync off, tmpfs",
        "ratio": "isolation.pgpg_tuned.overhead_ratio",
        "target": "",
    },
    {
        "what": "Rollback isolation vs testcontainers",
        "ours": "isolation.ours.overhead_ms",
        "peer": "isolation.tc.overhead_ms",
        "peer_name": "testcontainers + TRUNCATE",
        "ratio": "isolation.tc.overhead_ratio",
        "target": "",
    },
    {
        "what": "Async rollback isolation per test, vs the sync fixture",
        "ours": "async.async.overhead_ms",
        "peer": "async.sync.overhead_ms",
        "peer_name": "pipeweave_database, same run",
        "ratio": "async.sync_ratio",
        "target": "<= 1.5x the sync fixture",
        "met": _at_most("async.sync_ratio", 1.5),
    },
    {
        "what": "Async isolation vs sync, each above its runner's floor",
        "ours": "async.async.overhead_ms",
        "peer": "async.floor_async.overhead_ms",
        "peer_name": "floor: pytest-asyncio, a fixture doing nothing",
        "ratio": "async.sync_above_floor_ratio",
        "target": "",
    },
    {
        "what": "Async isolation, one event loop for the session, vs the sync fixture",
        "ours": "async.async_session.overhead_ms",
        "peer": "async.sync.overhead_ms",
        "peer_name": "pipeweave_database, same run",
        "ratio": "async.session_sync_ratio",
        "target": "",
    },
    {
        "what": "Async isolation vs pytest-postgresql's async fixture",
        "ours": "async.async.overhead_ms",
        "peer": "async.pgpg_async.overhead_ms",
        "peer_name": "pytest-postgresql postgresql_async",
        "ratio": "async.pgpg_ratio",
        "target": ">= 50x cheaper than the peer",
        "met": _at_least("async.pgpg_ratio", 50),
    },
    {
        "what": "Committed-mode reset per test",
        "ours": "reset.ours_ms",
        "peer": "reset.truncate_ms",
        "peer_name": "TRUNCATE of the eight tables",
        "ratio": "reset.truncate_ratio",
        "target": ">= 5x cheaper than TRUNCATE",
        "met": _at_least("reset.truncate_ratio", 5),
    },
    {
        "what": "Committed-mode reset vs a template clone",
        "ours": "reset.ours_ms",
        "peer": "reset.clone_file_copy_ms",
        "peer_name": "clone + first connection, FILE_COPY; the drop not counted",
        "ratio": "reset.clone_ratio",
        "target": ">= 10x cheaper than a clone",
        "met": _at_least("reset.clone_ratio", 10),
    },
    {
        "what": "Session start to first test, warm",
        "ours": "start.warm_s",
        "peer": "start.pgpg_s",
        "peer_name": "pytest-postgresql postgresql_proc",
        "ratio": "start.pgpg_warm_ratio",
        "target": ">= 8x faster than the peer",
        "met": _at_least("start.pgpg_warm_ratio", 8),
    },
    {
        "what": "Session start to first test, cold",
        "ours": "start.cold_s",
        "peer": "start.pgpg_s",
        "peer_name": "pytest-postgresql postgresql_proc",
        "ratio": "start.pgpg_cold_ratio",
        "target": ">= 2.5x faster than the peer",
        "met": _at_least("start.pgpg_cold_ratio", 2.5),
    },
    {
        "what": "Session start to first test, docker",
        "ours": "start.docker_s",
        "peer": "start.tc_s",
        "peer_name": "testcontainers PostgresContainer",
        "ratio": "start.tc_docker_ratio",
        "target": "",
    },
    {
        "what": "pytest-xdist, 400 database-bound tests",
        "ours": "xdist.n2_s",
        "peer": "xdist.n0_s",
        "peer_name": "the same suite with -n 0",
        "ratio": "xdist.speedup",
        "target": ">= 1.6x faster with -n 2",
        "met": _at_least("xdist.speedup", 1.6),
    },
    {
        "what": "pytest-xdist, the tests alone (fixed costs off)",
        "ours": "xdist.steady_speedup",
        "target": "",
    },
    {
        "what": "Other processes' CPU just before the xdist runs",
        "ours": "xdist.others_cores",
        "target": "",
    },
    {
        "what": "Session start to first test, with reuse",
        "ours": "reuse.reused_s",
        "peer": "reuse.warm_s",
        "peer_name": "our warm start, same run",
        "ratio": "reuse.warm_ratio",
        "target": ">= 5x faster than the warm start",
        "met": _at_least("reuse.warm_ratio", 5),
    },
    {
        "what": "Session start to first test, with reuse, above pytest's own",
        "ours": "reuse.reused_s",
        "peer": "reuse.floor_s",
        "peer_name": "floor: pytest alone, one test",
        "ratio": "reuse.warm_above_floor_ratio",
        "target": "",
    },
    {
        "what": "Session start to first test, with reuse, above importing psycopg",
        "ours": "reuse.reused_s",
        "peer": "reuse.psycopg_floor_s",
        "peer_name": "floor: pytest, and importing psycopg",
        "ratio": "reuse.psycopg_floor_ratio",
        "target": "",
    },
    {
        "what": "Session start to first test, with reuse, vs a peer",
        "ours": "reuse.reused_s",
        "peer": "reuse.pgpg_s",
        "peer_name": "pytest-postgresql postgresql_proc",
        "ratio": "reuse.pgpg_ratio",
        "target": ">= 20x faster than the peer",
        "met": _at_least("reuse.pgpg_ratio", 20),
    },
    {
        "what": "Start to first test, 2 s template setup, with reuse",
        "ours": "reuse.slow_template_reused_s",
        "peer": "reuse.slow_template_s",
        "peer_name": "the same setup, built each run",
        "ratio": None,
        "target": "",
    },
    {
        "what": "A test inside a module with shared data (setup+teardown)",
        "ours": "scoped.module.overhead_ms",
        "peer": "scoped.plain.overhead_ms",
        "peer_name": "a plain pipeweave_database test",
        "ratio": "scoped.module_ratio",
        "target": "<= 1x the plain test",
        "met": _at_most("scoped.module_ratio", 1),
    },
    {
        "what": "Cleanup throughput",
        "ours": "cleanup.rows_per_s",
        "peer": "cleanup.plain_rows_per_s",
        "peer_name": "one plain DELETE per table",
        "ratio": "cleanup.speed_ratio",
        "target": ">= 0.5x the plain DELETE's rows/s",
        "met": _at_least("cleanup.speed_ratio", 0.5),
    },
    {
        "what": "Cleanup, longest single statement",
        "ours": "cleanup.longest_ms",
        "peer": "cleanup.plain_longest_ms",
        "peer_name": "one plain DELETE per table",
        "ratio": None,
        "target": "<= 100 ms",
        "met": _at_most("cleanup.longest_ms", 100),
    },
    {
        "what": "pipeweave_seed (setup of a test using it)",
        "ours": "seed.setup_ms",
        "target": "",
    },
    {
        "what": "Factory, 10,000 task runs, rolled back",
        "ours": "seed.factory_rolled_back_rows_per_s",
        "target": "",
    },
    {
        "what": "Factory, 10,000 task runs, committed",
        "ours": "seed.factory_committed_rows_per_s",
        "target": "",
    },
    {
        "what": "Factory in bulk, factory.task_runs(10000)",
        "ours": "seed.factory_bulk_rows_per_s",
        "target": "",
    },
    {
        "what": "Reference: the same rows in one executemany",
        "ours": "seed.bulk_reference_rows_per_s",
        "target": "",
    },
]


def baseline_targets(figs: Figures) -> list[dict[str, Any]]:
    """A reference line per commit measured with ``--baseline``: how much slower (or faster)
    a test is now."""
    commits = sorted(
        {key.split(".")[1] for key in figs.meta if key.startswith("baseline.")} - {"now"}
    )
    return [
        {
            "what": f"pipeweave_database per test, now against {commit}",
            "ours": "baseline.now.per_test_ms",
            "peer": f"baseline.{commit}.per_test_ms",
            "peer_name": f"at {commit}",
            "ratio": f"baseline.{commit}.per_test_ratio",
            "target": "",
        }
        for commit in commits
    ]


def summary_rows(figs: Figures) -> list[dict[str, Any]]:
    rows = []
    for target in TARGETS + baseline_targets(figs):
        ours = figs.median(target["ours"])
        if ours is None or (target.get("peer") and figs.median(target["peer"]) is None):
            continue
        peer_key = target.get("peer")
        ratio_key = target.get("ratio")
        met = target.get("met")
        rows.append(
            {
                "what": target["what"],
                "ours": show(ours, figs.meta[target["ours"]]["unit"]),
                "peer": peer_text(figs, peer_key, target.get("peer_name", "")),
                "ratio": show(figs.median(ratio_key), "x")
                if ratio_key and figs.median(ratio_key)
                else "",
                "target": target["target"],
                "met": ("yes" if met(figs) else "NO") if met else "",
            }
        )
    return rows


def peer_text(figs: Figures, key: str | None, name: str) -> str:
    value = figs.median(key) if key else None
    if key is None or value is None:
        return ""
    return f"{show(value, figs.meta[key]['unit'])} ({name})"


def markdown(info: dict[str, Any], figs: Figures, rows: list[dict[str, Any]], repeat: int) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Measured {info['date']} on `{info['host']}` by `python3 benchmarks/run.py` "
        f"({repeat} repetitions; medians; each ratio compares runs of the same invocation).",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {info['cpu']}, {info['cores']} cores |",
        f"| RAM | {info['ram_gb']} GB |",
        f"| OS | {info['os']} |",
        f"| PostgreSQL | {info['postgresql']} |",
        f"| Python | {info['python']} |",
        f"| Docker | {info['docker'] or 'not available: docker figures skipped'} |",
        f"| load average (1, 5, 15 min), start / end | {info['load_start']} / {info['load_end']} |",
        f"| inner suites run as | `{info['inner_user']}` |",
        f"| packages | {', '.join(f'{k} {v}' for k, v in info['versions'].items())} |",
        f"| commit | {info['git_commit']} |",
        "",
        "## Figures against targets",
        "",
        "| measurement | PipeWeave | against (a floor, or a peer) | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row[k] for k in ("what", "ours", "peer", "ratio", "target", "met")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Every figure (median, then each repetition)",
        "",
        "| key | what | median | repetitions |",
        "|---|---|---|---|",
    ]
    for key in sorted(figs.meta):
        values = figs.values.get(key) or figs.ratios.get(key) or []
        unit = figs.meta[key]["unit"]
        each = ", ".join(compact(v, unit) for v in values)
        lines.append(
            f"| `{key}` | {figs.meta[key]['label']} | {show(median(values), unit)} | {each} |"
        )
    lines += ["", "![per-test isolation overhead](per-test-overhead.png)", ""]
    return "\n".join(lines)


def compact(value: float, unit: str) -> str:
    if unit in ("rows/s", "rows"):
        return f"{value:,.0f}"
    if unit == "ms" and value < 10:
        return f"{value:.3f}"
    return f"{value:.2f}"


def chart(figs: Figures, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # (label, figure, who): ours blue, the peers grey, the floors measured in the same run green.
    bars = [
        ("floor: a pytest fixture doing nothing", "floor.fixture_ms", "floor"),
        ("floor: BEGIN + ROLLBACK on a raw connection", "floor.begin_rollback_ms", "floor"),
        ("PipeWeave: pipeweave_database (rollback)", "isolation.ours.overhead_ms", True),
        ("PipeWeave: pipeweave_async_database (rollback)", "async.async.overhead_ms", True),
        ("PipeWeave: pipeweave_database_committed (reset)", "reset.ours_ms", True),
        ("pytest-postgresql postgresql_async (defaults)", "async.pgpg_async.overhead_ms", False),
        ("TRUNCATE of the eight tables (same server)", "reset.truncate_ms", False),
        ("testcontainers + TRUNCATE per test", "isolation.tc.overhead_ms", False),
        (
            "template clone, FILE_COPY (same server; drop not counted)",
            "reset.clone_file_copy_ms",
            False,
        ),
        ("pytest-postgresql (fsync off, tmpfs)", "isolation.pgpg_tuned.overhead_ms", False),
        ("pytest-postgresql postgresql (defaults)", "isolation.pgpg.overhead_ms", False),
    ]
    bars = sorted(
        ((label, figs.median(key), ours) for label, key, ours in bars if figs.median(key)),
        key=lambda bar: bar[1],
    )
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(bars) + 1.4), dpi=120)
    labels = [b[0] for b in bars]
    values = [b[1] for b in bars]
    palette = {True: "#2b7bba", False: "#b0b0b0", "floor": "#4caf50"}
    colors = [palette[b[2]] for b in bars]
    positions = range(len(bars))
    ax.barh(positions, values, color=colors)
    ax.set_yticks(list(positions), labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("per-test isolation overhead, median ms (log scale; lower is better)")
    for pos, value in zip(positions, values, strict=True):
        ax.text(
            value * 1.08,
            pos,
            f"{value:.2f} ms" if value < 10 else f"{value:.0f} ms",
            va="center",
            fontsize=9,
        )
    ax.set_xlim(min(values) / 2, max(values) * 4)
    ax.set_title("Per-test isolation overhead: PipeWeave (blue), peers (grey), floors (green)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------


def replot(path: Path) -> int:
    data = json.loads(path.read_text())
    figs = Figures()
    for key, figure in data["figures"].items():
        figs.meta[key] = {"label": figure["label"], "unit": figure["unit"]}
        target = figs.ratios if figure["unit"] == "x" else figs.values
        target[key] = figure["values"]
    (RESULTS / "latest.md").write_text(
        markdown(data["machine"], figs, summary_rows(figs), data["repeat"])
    )
    chart(figs, RESULTS / "per-test-overhead.png")
    say(f"rewrote results/latest.md and results/per-test-overhead.png from {path}")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="repetitions of each measurement (default 3)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 repetitions, a tenth of the cleanup rows"
    )
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated subset of {', '.join(MEASUREMENTS)} (default: all of them,"
        " none with --baseline)",
    )
    parser.add_argument(
        "--work",
        default=os.environ.get("PWB_WORK", "/tmp/pipeweave-bench"),
        help="virtualenv and scratch folder (default /tmp/pipeweave-bench)",
    )
    parser.add_argument(
        "--python",
        default=None,
        help="interpreter for the virtualenv (default: this one, if the inner user can run it)",
    )
    parser.add_argument("--no-docker", action="store_true", help="skip the Docker figures")
    parser.add_argument(
        "--replot", metavar="JSON", help="rewrite latest.md and the chart from a results file"
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print only; leave results/ alone (implied by --only)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        action="append",
        default=[],
        help="also measure pipeweave_database's per-test cost at this commit, alternating with"
        " this checkout's (repeatable)",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when any target measured is missed"
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="write the figures measured (any subset) and the summary to PATH as JSON",
    )
    args = parser.parse_args(argv)
    if args.only is None:
        args.only = "" if args.baseline else ",".join(MEASUREMENTS)
    unknown = set(filter(None, args.only.split(","))) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    if args.quick:
        args.repeat = 2
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.replot and os.environ.get("PWB_IN_VENV") == "1":
        return replot(Path(args.replot))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    if os.environ.get("PWB_IN_VENV") != "1":
        base_python = args.python or venv_base_python()
        venv = prepare_venv(work, base_python)
        baselines = [baseline_venv(work, base_python, rev) for rev in args.baseline]
        os.environ["PWB_BASELINES"] = json.dumps({commit: str(path) for commit, path in baselines})
        python = str(venv / "bin" / "python")
        os.execve(python, [python, __file__, *argv], {**os.environ, "PWB_IN_VENV": "1"})
    venv = Path(sys.prefix)
    docker = None if args.no_docker else docker_host()
    run = Runner(work, venv, docker)
    chosen = args.only.split(",")
    info: dict[str, Any] = {"date": datetime.date.today().isoformat(), "load_start": load_average()}
    info.update(machine_info(run, docker))
    say(f"{info['cpu']}, {info['cores']} cores, {info['ram_gb']} GB; {info['postgresql']}")
    say(f"docker: {docker or 'not available (set DOCKER_HOST; see .ci/provision-docker)'}")
    figs = Figures()
    repeat = args.repeat
    heavy = max(1, min(repeat, 3))  # the long measurements
    if "isolation" in chosen:
        isolation(run, figs, repeat, docker is not None)
    if "reset" in chosen:
        reset(run, figs, heavy)
    if "async" in chosen:
        async_isolation(run, figs, repeat)
    if "scoped" in chosen:
        scoped(run, figs, repeat)
    if "start" in chosen:
        start(run, figs, repeat, docker is not None)
    if "reuse" in chosen:
        reuse(run, figs, repeat)
    if "xdist" in chosen:
        xdist(run, figs, heavy)
    if "cleanup" in chosen:
        cleanup(run, figs, heavy, 0.1 if args.quick else 1.0)
    if "seed" in chosen:
        seed(run, figs, heavy)
    for commit, path in json.loads(os.environ.get("PWB_BASELINES") or "{}").items():
        against_baseline(run, figs, repeat, commit, Path(path))
    info["load_end"] = load_average()
    rows = summary_rows(figs)
    print()
    width = max(len(r["what"]) for r in rows) if rows else 0
    for row in rows:
        parts = [row["ours"]]
        if row["peer"]:
            parts.append(f"against {row['peer']}")
        if row["ratio"]:
            parts.append(f"ratio {row['ratio']}")
        if row["target"]:
            parts.append(f"target {row['target']}: {row['met'] or '-'}")
        print(f"{row['what']:<{width}}  " + "; ".join(parts))
    data = {
        "machine": info,
        "repeat": repeat,
        "figures": {
            key: {
                **figs.meta[key],
                "median": figs.median(key),
                "values": figs.values.get(key) or figs.ratios.get(key),
            }
            for key in sorted(figs.meta)
        },
        "summary": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        say(f"wrote {args.json}")
    missed = [row["what"] for row in rows if row["met"] == "NO"]
    if args.check and missed:
        say(f"--check: {len(missed)} target(s) missed: {'; '.join(missed)}")
    status = 1 if args.check and missed else 0
    if args.no_write or set(chosen) != set(MEASUREMENTS):
        return status
    RESULTS.mkdir(exist_ok=True)
    json_path = RESULTS / f"{info['date']}-{info['host']}.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(info, figs, rows, repeat))
    if any(figs.median(k) for k in ("isolation.ours.overhead_ms", "reset.ours_ms")):
        chart(figs, RESULTS / "per-test-overhead.png")
    say(f"wrote {json_path.relative_to(REPO)}, results/latest.md, results/per-test-overhead.png")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
