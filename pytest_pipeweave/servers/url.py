"""The url backend: a server that already runs (a CI service container, a shared dev server).

Nothing is started or stopped: the plugin only creates and drops its own uniquely named
databases there (see ``databases``).
"""

from __future__ import annotations

import getpass
from typing import Any
from urllib.parse import urlencode

from pipeweave_db import ConfigError, mask_url
from pipeweave_db.config import is_unix_socket, parse_url
from pytest_pipeweave.servers.base import ServerInfo, ServerUnavailable

_CONNECTION_KEYS = {"host", "port", "dbname", "user", "password"}


class ExistingServer:
    """A server reached through a URL, with a role allowed to create databases."""

    backend = "url"

    def __init__(self, url: str) -> None:
        self.url = url

    def start(self) -> ServerInfo:
        import psycopg

        try:
            params = parse_url(self.url, "--pipeweave-url")
        except ConfigError as exc:
            raise ServerUnavailable(str(exc)) from None
        if "," in params.get("host", ""):
            raise ServerUnavailable(f"--pipeweave-url must name one host: {mask_url(self.url)}")
        host = params.get("host", "")
        user = params.get("user") or getpass.getuser()
        info = ServerInfo(
            backend=self.backend,
            host=host if not is_unix_socket(host, None) else "",
            port=int(params.get("port") or 5432),
            user=user,
            password=params.get("password"),
            socket_dir=host if host and is_unix_socket(host, None) else None,
            admin_database=params.get("dbname") or user,
            query=urlencode({k: v for k, v in params.items() if k not in _CONNECTION_KEYS}),
        )
        try:
            with psycopg.connect(info.url(info.admin_database), connect_timeout=10) as conn:
                version = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
                row = conn.execute(
                    "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
                ).fetchone()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ServerUnavailable(
                f"cannot reach the server at {mask_url(self.url)}: {reason}"
            ) from None
        if not (row and row[0]):
            raise ServerUnavailable(
                f"role {user!r} may not create databases: the url backend needs CREATEDB"
            )
        return ServerInfo(**{**info.to_state(), "version": version})

    def stop(self) -> None:
        """Nothing to stop: the fixtures drop the databases they created."""

    def is_alive(self) -> bool:
        return True

    def to_state(self) -> dict[str, Any]:
        return {"backend": self.backend}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ExistingServer:
        return cls("")
