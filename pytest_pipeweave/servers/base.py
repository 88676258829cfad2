"""What every server backend provides: start it, say how to reach it, stop it.

A backend must also be stoppable from another process (the last pytest-xdist worker out, or the
next run removing a dead run's leftovers), so each one describes itself as a JSON-able state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol
from urllib.parse import quote

from pipeweave_db import PipeweaveError


class ServerUnavailable(PipeweaveError):
    """No server could be started or reached with the given settings."""


class ServerGone(PipeweaveError):
    """The test server stopped answering in the middle of a session."""


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    """How to reach a running server. ``url(dbname)`` gives a URL for any of its databases."""

    backend: str
    host: str
    port: int
    user: str
    password: str | None = dataclasses.field(default=None, repr=False)
    version: str = ""
    socket_dir: str | None = None
    admin_database: str = "postgres"
    query: str = ""

    def url(self, dbname: str = "postgres") -> str:
        """A postgresql:// URL; through the unix socket when the server has one (faster).

        ``query`` carries the extra parameters of a given URL (sslmode, say) into every URL.
        """
        userinfo = quote(self.user, safe="")
        if self.password is not None:
            userinfo += ":" + quote(self.password, safe="")
        params = [self.query] if self.query else []
        if self.socket_dir:
            params[:0] = [f"host={quote(self.socket_dir, safe='/')}", f"port={self.port}"]
            authority = ""
        else:
            host = f"[{self.host}]" if ":" in self.host else self.host
            authority = f"{host}:{self.port}"
        tail = "?" + "&".join(params) if params else ""
        return f"postgresql://{userinfo}@{authority}/{quote(dbname, safe='')}{tail}"

    def tcp_url(self, dbname: str = "postgres") -> str:
        """A URL over TCP, for clients that cannot use the unix socket."""
        return dataclasses.replace(self, socket_dir=None).url(dbname)

    def to_state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ServerInfo:
        return cls(**state)


class Server(Protocol):
    """A backend: ``start()`` returns how to reach the server, ``stop()`` removes everything."""

    backend: str

    def start(self) -> ServerInfo: ...

    def stop(self) -> None: ...

    def to_state(self) -> dict[str, Any]:
        """Enough to stop this server from another process (``from_state(...).stop()``)."""
        ...

    def is_alive(self) -> bool: ...
