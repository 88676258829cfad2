"""Server backends behind one interface, and the one registry every choice goes through.

``local`` (binaries on this machine), ``docker`` (testcontainers), ``url`` (a server that
already runs); ``auto`` takes the first available in the order url, local, docker.
The backends import psycopg when they start a server, not with their module: the plugin
loads them into every pytest process, most of which never start one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_pipeweave.errors import ServerUnavailable
from pytest_pipeweave.servers.base import PreparedDatabase, RunIsDead, Server, ServerInfo
from pytest_pipeweave.servers.docker import DockerServer
from pytest_pipeweave.servers.local import LocalServer
from pytest_pipeweave.servers.url import ExistingServer

if TYPE_CHECKING:
    from pytest_pipeweave.settings import Settings

__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "DockerServer",
    "ExistingServer",
    "LocalServer",
    "PreparedDatabase",
    "Server",
    "ServerInfo",
    "choose_backend",
    "create_server",
    "describe_backend",
    "server_from_state",
]

BACKENDS: dict[str, type[Server]] = {
    "local": LocalServer,
    "docker": DockerServer,
    "url": ExistingServer,
}
BACKEND_CHOICES = ("auto", *BACKENDS)
# What auto prefers: a server the user named, then one of our own, then a container.
_AUTO_ORDER = ("url", "local", "docker")


def choose_backend(settings: Settings) -> type[Server]:
    """The backend class ``settings.backend`` names; for ``auto``, the first available."""
    if settings.backend != "auto":
        return BACKENDS[settings.backend]
    for name in _AUTO_ORDER:
        if BACKENDS[name].available(settings):
            return BACKENDS[name]
    remedies = "; ".join(f"({n}) {BACKENDS[name].remedy}" for n, name in enumerate(_AUTO_ORDER, 1))
    raise ServerUnavailable(f"no PostgreSQL server available. Give one of: {remedies}")


def describe_backend(settings: Settings, cache_dir: Path | None = None) -> str:
    """Which server a run with ``settings`` will use, and where that choice came from.

    Found out without starting anything, for the report header; ``cache_dir`` as for
    ``create_server``.
    """
    source = f"[backend from {settings.source('backend')}]"
    try:
        backend = choose_backend(settings)
        chosen = f"backend {backend.backend}" + (" (auto)" if settings.backend == "auto" else "")
        return f"{chosen}, {backend.describe(settings, cache_dir)} {source}"
    except ServerUnavailable as exc:
        return f"backend {settings.backend}: {exc} {source}"


def create_server(
    settings: Settings,
    *,
    folder: Path,
    cache_dir: Path,
    run_is_dead: RunIsDead,
    prepared: PreparedDatabase | None = None,
) -> Server:
    """A not yet started server of the backend ``settings`` choose, for the run in ``folder``
    (with ``prepared`` made in it, where the backend keeps one)."""
    return choose_backend(settings).create(
        settings, folder=folder, cache_dir=cache_dir, run_is_dead=run_is_dead, prepared=prepared
    )


def server_from_state(state: Mapping[str, Any]) -> Server:
    """The server a state describes, to stop it from any process."""
    return BACKENDS[str(state["backend"])].from_state(state)
