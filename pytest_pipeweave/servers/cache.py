"""The local backend's cache folder, kept between runs, and how long what is in it stays.

It holds initdb'ed clusters (one per PostgreSQL build), their copies holding the prepared
template, copies of installations the server user could not run where they lie, and short
answers (a binary's version, whether the server user can run it). Each is marked used whenever
a start uses it. Whenever the cache gains a cluster or an installation, what no start used for
``UNUSED_FOR`` goes (another PostgreSQL build, older migrations, another virtualenv's answers),
and so do the leftovers of processes that died while filling it. By default the cache is in
/dev/shm, which is memory: nothing else would free it before a reboot.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pytest_pipeweave.processes import process_alive

UNUSED_FOR = 7 * 24 * 3600.0
# "<entry>.<pid>.partial" (being filled) and "<entry>.<pid>.stale" (being removed).
_IN_HAND = re.compile(r"\.(\d+)\.(?:partial|stale)$")


def mark_used(entry: Path) -> None:
    """``entry`` used now: it stays ``UNUSED_FOR`` from here. Nothing if it is not there."""
    with contextlib.suppress(OSError):
        os.utime(entry)


def add(entry: Path, make: Callable[[Path], None]) -> None:
    """``entry`` made by ``make(folder)`` in a folder beside it, renamed into place (a run
    never finds half of it), then the cache pruned. One another process added first is left
    as it is; when ``make`` fails, its folder goes and the error is raised."""
    partial = entry.with_name(f"{entry.name}.{os.getpid()}.partial")
    entry.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        make(partial)
    except BaseException:
        _delete(partial)
        raise
    try:
        partial.rename(entry)
    except OSError:  # another process added it first
        _delete(partial)
    else:
        prune(entry.parent)


def remove(entry: Path) -> None:
    """``entry`` removed, renamed first: a run that looks for it meanwhile does not find
    half of it."""
    stale = entry.with_name(f"{entry.name}.{os.getpid()}.stale")
    with contextlib.suppress(OSError):
        entry.rename(stale)
        _delete(stale)


def prune(cache_dir: Path, now: float | None = None) -> list[str]:
    """What no start used for ``UNUSED_FOR`` removed from ``cache_dir``, and what processes
    no longer running left half made or half removed; the names removed. ``making-<pid>``
    folders hold a server, and are their maker's to clear (``LocalServer.cache_prepared``)."""
    oldest = (time.time() if now is None else now) - UNUSED_FOR
    removed = []
    with contextlib.suppress(OSError):
        for entry in cache_dir.iterdir():
            if entry.name.startswith("making-"):
                continue
            if in_hand := _IN_HAND.search(entry.name):
                if process_alive(int(in_hand.group(1))):
                    continue
                _delete(entry)
            else:
                try:
                    if entry.lstat().st_mtime >= oldest:
                        continue
                except OSError:  # removed meanwhile
                    continue
                remove(entry)
            removed.append(entry.name)
    return sorted(removed)


def _delete(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            entry.unlink()
