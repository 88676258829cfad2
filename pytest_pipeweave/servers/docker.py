"""The docker backend: a postgres container started through testcontainers, with the same speed
settings as the local backend.

Containers carry labels naming their run and host, so a later run can remove the containers of
runs that died (SIGKILL gives no chance to clean up) and never anyone else's.

The image is any that follows the official postgres image's conventions (``POSTGRES_USER``,
``POSTGRES_PASSWORD``, ``POSTGRES_DB``, ``PGDATA``, a ``postgres ...`` command). Its data folder
is a tmpfs (initdb is several times faster there than on overlay2), and readiness is polled
over TCP every 50 ms instead of PostgresContainer's own check, which runs psql inside the
container once a second.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_pipeweave.errors import ServerUnavailable, first_line
from pytest_pipeweave.processes import wait_until
from pytest_pipeweave.servers.base import PreparedDatabase, RunIsDead, ServerInfo
from pytest_pipeweave.servers.local import SPEED_SETTINGS, SUPERUSER
from pytest_pipeweave.settings import DEFAULT_IMAGE

if TYPE_CHECKING:
    from pytest_pipeweave.settings import Settings

RUN_LABEL = "pytest-pipeweave.run"
HOST_LABEL = "pytest-pipeweave.host"
_READY_TIMEOUT = 60.0
# Outside /var/lib/postgresql, so no image's own VOLUME or data layout gets in the way.
PGDATA = "/pipeweave-pgdata"
_PORT = "5432/tcp"


def docker_client(timeout: int = 10, docker_host: str | None = None) -> Any:
    """A docker SDK client (``docker_host``, else docker's own defaults), or ServerUnavailable
    saying what is missing."""
    try:
        import docker
    except ImportError:
        raise ServerUnavailable(
            "the docker backend needs testcontainers: pip install 'pytest-pipeweave[docker]'"
        ) from None
    try:
        if docker_host:
            client = docker.DockerClient(base_url=docker_host, timeout=timeout)
        else:
            client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:
        raise ServerUnavailable(f"no Docker engine answers: {exc}") from None
    return client


def _container_class() -> Any:
    """testcontainers' PostgresContainer, without its once-a-second readiness check."""
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        try:
            from testcontainers.postgres import PostgresContainer
        except ImportError:
            raise ServerUnavailable(
                "the docker backend needs testcontainers: pip install 'pytest-pipeweave[docker]'"
            ) from None

    class Container(PostgresContainer):
        def _connect(self) -> None:
            """Readiness is DockerServer's to poll, over TCP, every 50 ms."""

    return Container


def _engine_is_local(docker_host: str | None) -> bool:
    """True when the engine publishes ports on this machine (a unix socket, or no DOCKER_HOST)."""
    return not (docker_host or "").startswith(("tcp://", "ssh://", "http"))


def docker_available(docker_host: str | None = None) -> bool:
    """True when the docker SDK is installed and an engine answers (checked quickly)."""
    if not (docker_host or os.path.exists("/var/run/docker.sock")):
        return False
    try:
        docker_client(timeout=3, docker_host=docker_host)
    except ServerUnavailable:
        return False
    return True


class DockerServer:
    """A postgres container, removed by ``stop()`` (also after a failure or Ctrl-C)."""

    backend = "docker"
    ephemeral = True
    remedy = "a running Docker engine with pip install 'pytest-pipeweave[docker]'"

    def __init__(
        self,
        image: str = DEFAULT_IMAGE,
        run_folder: str = "",
        run_is_dead: RunIsDead = lambda folder: False,
        docker_host: str | None = None,
    ) -> None:
        self.image = image
        self.run_folder = run_folder
        self.run_is_dead = run_is_dead
        self.docker_host = docker_host
        self.container_id: str | None = None

    @classmethod
    def available(cls, settings: Settings) -> bool:
        return docker_available(settings.docker_host)

    @classmethod
    def describe(cls, settings: Settings, cache_dir: Path | None = None) -> str:
        return f"image {settings.image}"

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        folder: Path,
        cache_dir: Path,
        run_is_dead: RunIsDead,
        prepared: PreparedDatabase | None = None,
    ) -> DockerServer:
        return cls(settings.image, str(folder), run_is_dead, settings.docker_host)

    def _client(self) -> Any:
        return docker_client(docker_host=self.docker_host)

    def start(self) -> ServerInfo:
        client = self._client()
        remove_leftover_containers(client, self.run_is_dead)
        local = _engine_is_local(self.docker_host)
        password = secrets.token_urlsafe(18)
        settings = " ".join(f"-c {name}={value}" for name, value in SPEED_SETTINGS.items())
        container = (
            _container_class()(
                self.image, username=SUPERUSER, password=password, dbname="postgres", driver=None
            )
            .with_env("PGDATA", PGDATA)
            .with_command(f"postgres {settings}")
        )
        kwargs: dict[str, Any] = {
            "labels": {RUN_LABEL: self.run_folder, HOST_LABEL: socket.gethostname()}
        }
        if hasattr(container, "with_tmpfs_mount"):
            container.with_tmpfs_mount(PGDATA)
        else:  # older testcontainers: docker's own keyword argument
            kwargs["tmpfs"] = {PGDATA: ""}
        container.with_kwargs(**kwargs)
        # A local engine publishes on loopback only: a superuser whose password is in the
        # container's environment has no business listening on every interface.
        container.ports[_PORT] = ("127.0.0.1",) if local else None
        try:
            container.start()
        except BaseException as exc:
            inner = getattr(container, "_container", None)
            if inner is not None:
                self.container_id = inner.id
                self.stop()
            else:  # interrupted inside "docker run": the container may exist, unrecorded
                remove_run_containers(client, self.run_folder)
            if isinstance(exc, Exception):
                raise self._start_failure(client, exc) from exc
            raise
        self.container_id = container.get_wrapped_container().id
        try:
            info = self._info(container, password, local)
        except BaseException:
            self.stop()
            raise
        return info

    def _start_failure(self, client: Any, exc: Exception) -> ServerUnavailable:
        """Why the container did not start, in one line, with what to do when we can tell."""
        from docker.errors import ImageNotFound

        reason = first_line(exc)
        try:
            client.images.get(self.image)
        except Exception as missing:
            if isinstance(missing, ImageNotFound):
                return ServerUnavailable(
                    f"the Docker engine has no image {self.image} and could not pull it "
                    f"({getattr(exc, 'explanation', None) or reason}): pull or build it there, "
                    "or choose one it has with --pipeweave-image (PIPEWEAVE_IMAGE)"
                )
            return ServerUnavailable(
                f"the Docker engine stopped answering while the {self.image} container started "
                f"({first_line(missing)}): start the engine again and rerun"
            )
        return ServerUnavailable(f"the {self.image} container did not start: {reason}")

    def _info(self, container: Any, password: str, local: bool) -> ServerInfo:
        import psycopg

        wrapped = container.get_wrapped_container()
        if local:
            # The published port itself, whatever testcontainers' connection mode would say
            # (in its bridge_ip mode get_exposed_port() returns the container's own 5432).
            wrapped.reload()
            bindings = wrapped.ports.get(_PORT)
            if not bindings:
                self._fail_if_exited(wrapped)
                raise ServerUnavailable(f"the {self.image} container published no port {_PORT}")
            host, port = "127.0.0.1", int(bindings[0]["HostPort"])
        else:
            host, port = container.get_container_host_ip(), int(container.get_exposed_port(5432))
        info = ServerInfo(self.backend, host, port, SUPERUSER, password)
        versions: list[str] = []

        def answers() -> bool:
            try:
                with psycopg.connect(info.url(), connect_timeout=3) as conn:
                    row = conn.execute("SHOW server_version").fetchone()
                    versions.append(str(row[0]).split()[0] if row else "")
            except psycopg.OperationalError:
                wrapped.reload()
                self._fail_if_exited(wrapped)
                return False
            return True

        if not wait_until(answers, _READY_TIMEOUT, interval=0.05):
            raise ServerUnavailable(f"the {self.image} container did not answer on {host}:{port}")
        return ServerInfo(
            self.backend, host, port, SUPERUSER, password, version=versions[-1], ephemeral=True
        )

    def _fail_if_exited(self, wrapped: Any) -> None:
        """A container that stopped will never answer: say why now, not after the timeout."""
        if wrapped.status in ("exited", "dead"):
            log = wrapped.logs(tail=20).decode(errors="replace").rstrip()
            raise ServerUnavailable(f"the {self.image} container exited; its log ends:\n{log}")

    def stop(self) -> None:
        if self.container_id is None:
            return
        with contextlib.suppress(Exception):
            _remove_container(self._client(), self.container_id)
        self.container_id = None

    def is_alive(self) -> bool:
        if self.container_id is None:
            return False
        try:
            return bool(self._client().containers.get(self.container_id).status == "running")
        except Exception:
            return False

    def to_state(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "container_id": self.container_id,
            "docker_host": self.docker_host,
        }

    def stop_hint(self) -> str:
        return f"docker rm -f {self.container_id}"

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> DockerServer:
        server = cls(docker_host=state.get("docker_host"))
        server.container_id = state.get("container_id")
        return server


def labelled_containers(client: Any, label: str) -> list[dict[str, Any]]:
    """The engine's summaries (``Id``, ``Labels``, ``Ports``...) of containers carrying ``label``.

    docker-py's ``containers.list()`` inspects each container after listing them, and fails
    when another run removes one in between; the summaries need no second request.
    """
    return list(client.api.containers(all=True, filters={"label": label}))


def _remove_container(client: Any, container_id: str) -> bool:
    try:
        client.api.remove_container(container_id, force=True, v=True)
    except Exception:  # already gone, or being removed by its own run
        return False
    return True


def remove_run_containers(client: Any, run_folder: str) -> None:
    """Remove the containers labelled with this very run (and host): ours, whatever their id."""
    with contextlib.suppress(Exception):
        for summary in labelled_containers(client, f"{RUN_LABEL}={run_folder}"):
            if (summary.get("Labels") or {}).get(HOST_LABEL) == socket.gethostname():
                _remove_container(client, summary["Id"])


def remove_leftover_containers(client: Any, run_is_dead: RunIsDead) -> list[str]:
    """Remove containers labelled by a run on this host that has ended."""
    removed = []
    here = socket.gethostname()
    for summary in labelled_containers(client, RUN_LABEL):
        labels = summary.get("Labels") or {}
        ours = labels.get(HOST_LABEL) == here and run_is_dead(labels.get(RUN_LABEL, ""))
        if ours and _remove_container(client, summary["Id"]):
            removed.append(summary["Id"])
    return removed
