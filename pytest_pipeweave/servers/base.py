"""What every server backend provides, and ``ServerInfo``, how to reach a running server.

A backend class answers for itself before any server exists (is it available, how to describe
it, how to create one for a run) and for a server once it runs (start, stop, is it alive). A
server must also be stoppable from another process (the last pytest-xdist worker out, or the
next run removing a dead run's leftovers), so each one describes itself as a JSON-able state.
"""

from __future__ import annotations

import dataclasses
import getpass
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlencode

from pipeweave_db import ConfigError, mask_url
from pipeweave_db.config import is_unix_socket, parse_url

if TYPE_CHECKING:
    from pytest_pipeweave.settings import Settings

_CONNECTION_KEYS = {"host", "port", "dbname", "user", "password"}


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    """How to reach a running server. ``url(dbname)`` gives a URL for any of its databases.

    ``ephemeral`` is true for a server the plugin started: stopping it removes every database
    on it. ``folder`` is where its files are (data, socket, log), when the plugin has any.
    """

    backend: str
    host: str
    port: int
    user: str
    password: str | None = dataclasses.field(default=None, repr=False)
    version: str = ""
    socket_dir: str | None = None
    admin_database: str = "postgres"
    query: str = ""
    ephemeral: bool = False
    folder: str | None = None
    # The database ``PreparedDatabase`` named, when the server started with it made already.
    prepared_database: str | None = None

    @classmethod
    def from_url(cls, url: str, *, source: str = "url") -> ServerInfo:
        """A server you run, from a URL such as ``postgresql://user:pw@host:5432/postgres``.

        The URL's database is where the plugin connects to create and drop its own databases;
        its other parameters (``sslmode``...) go into every URL. Nothing is connected to here;
        a malformed URL is a ConfigError naming ``source``.
        """
        params = parse_url(url, source)
        host = params.get("host", "")
        if "," in host:
            raise ConfigError(f"{source} must name one host: {mask_url(url)}")
        socket = bool(host) and is_unix_socket(host, None)
        user = params.get("user") or getpass.getuser()
        return cls(
            backend="url",
            host="" if socket else host,
            port=int(params.get("port") or 5432),
            user=user,
            password=params.get("password"),
            socket_dir=host if socket else None,
            admin_database=params.get("dbname") or user,
            query=urlencode({k: v for k, v in params.items() if k not in _CONNECTION_KEYS}),
        )

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

    @property
    def admin_url(self) -> str:
        """The URL of the database the plugin connects to for CREATE and DROP DATABASE."""
        return self.url(self.admin_database)

    def to_state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ServerInfo:
        return cls(**state)


@dataclasses.dataclass(frozen=True)
class PreparedDatabase:
    """A database that a backend whose servers start from a cached cluster (local) may keep
    made in that cache: database ``name``, made by ``prepare`` (given its URL) once for each
    ``key``, what it is made of. A server then starts with it
    (``ServerInfo.prepared_database``) rather than each run making it again."""

    name: str
    key: str
    prepare: Callable[[str], None]


class Server(Protocol):
    """A backend: the class chooses and creates, the instance starts, stops and describes.

    ``ephemeral``: stopping the server removes every database on it, so nothing needs dropping.
    ``remedy``: what a user does to make this backend available (for "no server" errors).
    """

    backend: str
    ephemeral: bool
    remedy: str

    @classmethod
    def available(cls, settings: Settings) -> bool:
        """Whether ``auto`` may choose this backend (checked quickly, nothing started)."""
        ...

    @classmethod
    def describe(cls, settings: Settings, cache_dir: Path | None = None) -> str:
        """What the report header says of the server this backend will give (``cache_dir``:
        where what it costs to find out may be kept)."""
        ...

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        folder: Path,
        cache_dir: Path,
        run_is_dead: RunIsDead,
        prepared: PreparedDatabase | None = None,
    ) -> Server:
        """A server for the run whose folder is ``folder``, not started yet; with ``prepared``
        made in it, where the backend keeps one."""
        ...

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Server:
        """The server ``to_state()`` described, to stop it from any process."""
        ...

    def start(self) -> ServerInfo: ...

    def stop(self) -> None:
        """Stop the server and remove everything it left; safe to call again."""
        ...

    def is_alive(self) -> bool: ...

    def to_state(self) -> dict[str, Any]: ...

    def stop_hint(self) -> str:
        """The command a user runs to stop a server left running (``--pipeweave-keep``)."""
        ...


# Asked about a run's folder (a container label or a state names it): has that run ended?
RunIsDead = Callable[[str], bool]
