"""The url backend: a server that already runs (a CI service container, a shared dev server).

Nothing is started or stopped: the plugin only creates and drops its own uniquely named
databases there (see ``databases``), with a role that may create databases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeweave_db import ConfigError, mask_url
from pytest_pipeweave.errors import ServerUnavailable, first_line
from pytest_pipeweave.servers.base import PreparedDatabase, RunIsDead, ServerInfo

if TYPE_CHECKING:
    from pytest_pipeweave.settings import Settings

# What libpq says when nothing listens at the address (TCP) or no socket is in the folder.
_SERVER_DOWN = ("Connection refused", "No such file or directory", "timeout expired")


class ExistingServer:
    """A server reached through a URL."""

    backend = "url"
    ephemeral = False
    remedy = (
        "an existing server: --pipeweave-url=postgresql://user:password@host/db "
        "or PIPEWEAVE_TEST_DATABASE_URL"
    )

    def __init__(self, url: str, source: str = "url") -> None:
        self.url = url
        self.source = source

    @classmethod
    def available(cls, settings: Settings) -> bool:
        return bool(settings.url)

    @classmethod
    def describe(cls, settings: Settings, cache_dir: Path | None = None) -> str:
        return f"{mask_url(settings.url or '')} (from {settings.source('url')})"

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        folder: Path,
        cache_dir: Path,
        run_is_dead: RunIsDead,
        prepared: PreparedDatabase | None = None,
    ) -> ExistingServer:
        if not settings.url:
            raise ServerUnavailable(
                "the url backend needs --pipeweave-url or PIPEWEAVE_TEST_DATABASE_URL"
            )
        return cls(settings.url, settings.source("url"))

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ExistingServer:
        return cls("")

    def start(self) -> ServerInfo:
        import psycopg

        try:
            info = ServerInfo.from_url(self.url, source=self.source)
        except ConfigError as exc:
            raise ServerUnavailable(str(exc)) from None
        try:
            with psycopg.connect(info.admin_url, connect_timeout=10) as conn:
                version = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
        except psycopg.Error as exc:
            reason = first_line(exc)
            if any(sign in reason for sign in _SERVER_DOWN):
                reason += f": is a server running there? Start it, or fix {self.source}"
            raise ServerUnavailable(
                f"cannot reach the server at {mask_url(self.url)}: {reason}"
            ) from None
        return dataclasses.replace(info, version=version)

    def stop(self) -> None:
        """Nothing to stop: the run drops the databases it created."""

    def is_alive(self) -> bool:
        return True

    def to_state(self) -> dict[str, Any]:
        return {"backend": self.backend}

    def stop_hint(self) -> str:
        return ""
