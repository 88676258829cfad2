"""What one pytest process knows of the plugin: its settings, its run, and the plugin's server.

Only the plugin's own ``pipeweave_server`` fixture asks this object for a server; every other
fixture depends on fixture values, so a project that overrides ``pipeweave_server`` gets no
server of the plugin's and no run folder.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest

from pipeweave_db import mask_url
from pytest_pipeweave.errors import ServerUnavailable
from pytest_pipeweave.processes import ProcessId
from pytest_pipeweave.runs import STATE_FILE, new_run_key, run_key_for
from pytest_pipeweave.servers import ServerInfo
from pytest_pipeweave.settings import Settings
from pytest_pipeweave.shared import SharedServer

_KEY = pytest.StashKey["PipeweaveSession"]()
# pytest-xdist's workerinput key: the controller, an owner of the run until every worker ends.
CONTROLLER_INPUT = "pipeweave_controller"


@dataclasses.dataclass(frozen=True)
class ServerReport:
    """What the terminal summary says of the server (sent by xdist workers as a dict)."""

    backend: str
    version: str
    startup_seconds: float | None
    template_seconds: float | None
    template_note: str | None
    warm_start: bool | None
    keep: bool
    # With reuse: the server was kept for reuse; joined from an earlier run; replaced, and why.
    reuse: bool
    reused: bool
    replaced: str | None
    reaped: list[str]  # other runs' databases dropped for their age (--pipeweave-reap-after)
    url: str  # never with the password: a kept server's is in the run's state file (0600)
    state_file: str
    stop: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerReport:
        return cls(**data)


class PipeweaveSession:
    """Starts (or joins) the run's server on first use; leaves it when pytest finishes."""

    def __init__(
        self,
        settings: Settings,
        run_key: str,
        worker: str,
        co_owner: ProcessId | None = None,
    ) -> None:
        self.settings = settings
        self.run_key = run_key
        self.worker = worker
        self.co_owner = co_owner
        self.shared: SharedServer | None = None
        self.error: ServerUnavailable | None = None
        # Filled in by the plugin's own fixtures, for the summary.
        self.template_seconds: float | None = None
        self.template_note: str | None = None  # with reuse: reused, or why it was rebuilt
        self.databases: list[str] = []
        self.kept = 0  # failed tests whose data this process kept (--pipeweave-keep-failed)
        self.reaped: list[str] = []
        # Whether the run's template is the plugin's own (``pipeweave_template``), with no
        # setup: the local backend can then start with it made (``template_cache``).
        self.plain_template = False

    @classmethod
    def install(cls, config: pytest.Config, settings: Settings) -> PipeweaveSession:
        """Under pytest-xdist, the workers of one session share its run key.

        Read from ``workerinput``, not from PYTEST_XDIST_* variables: a pytest started from
        inside a worker inherits those, and must not join the outer run.
        """
        workerinput = getattr(config, "workerinput", None)
        if workerinput is not None:
            controller = workerinput.get(CONTROLLER_INPUT)
            session = cls(
                settings,
                run_key_for(str(workerinput["testrunuid"])),
                str(workerinput["workerid"]),
                ProcessId(**controller) if controller else None,
            )
        elif is_xdist_controller(config):
            # Fix the run id now: pytest-xdist hands its --testrunuid to the workers.
            config.option.testrunuid = config.option.testrunuid or uuid.uuid4().hex
            session = cls(settings, run_key_for(str(config.option.testrunuid)), "controller")
        else:
            session = cls(settings, new_run_key(), "main")
        config.stash[_KEY] = session
        return session

    @classmethod
    def of(cls, config: pytest.Config) -> PipeweaveSession:
        return config.stash[_KEY]

    def server(self) -> ServerInfo:
        """The run's server, started or joined now if this process has not done it yet."""
        if self.error is not None:
            raise self.error
        if self.shared is not None and self.shared.info is not None:
            return self.shared.info
        from pytest_pipeweave.template_cache import cached_template

        self.shared = SharedServer(
            self.settings,
            self.run_key,
            co_owner=self.co_owner,
            prepared=cached_template() if self.plain_template else None,
        )
        try:
            return self.shared.acquire()
        except ServerUnavailable as exc:
            self.error = exc
            raise

    def finish(self, *, interrupted: bool = False) -> None:
        """Leave the run's server; the xdist controller leaves last, once every worker is done.
        After Ctrl-C nothing is left for later runs (``SharedServer.release``)."""
        if self.worker == "controller":
            # With reuse, the workers may have had to start a server of the run's own.
            for reuse in {self.settings.reuse, False}:
                settings = dataclasses.replace(self.settings, reuse=reuse)
                SharedServer(settings, self.run_key).release()
        elif self.shared is not None and self.shared.info is not None:
            self.shared.release(for_later=not interrupted)

    def report(self) -> ServerReport | None:
        if self.shared is None or self.shared.info is None:
            return None
        info = self.shared.info
        state = self.shared.state
        return ServerReport(
            backend=info.backend,
            version=info.version,
            startup_seconds=state.startup_seconds,
            template_seconds=self.template_seconds,
            template_note=self.template_note,
            warm_start=state.warm_start,
            keep=self.settings.keep,
            reuse=state.keep and state.fingerprint is not None,
            reused=self.shared.reused,
            replaced=self.shared.replaced,
            reaped=self.reaped,
            url=mask_url(info.url(self.databases[0] if self.databases else "postgres")),
            state_file=str(self.shared.run.path / STATE_FILE),
            stop=self.stop_hint(),
        )

    def stop_hint(self) -> str:
        """How a user removes a kept server, or a kept run's databases on a server of theirs."""
        assert self.shared is not None and self.shared.info is not None
        if self.shared.info.ephemeral:
            return self.shared.stop_hint()
        from pytest_pipeweave.databases import database_name

        databases = database_name(self.run_key, "*")
        return f"drop the databases named {databases} and rm -rf {self.shared.run.path}"


def is_xdist_controller(config: pytest.Config) -> bool:
    """True in the process that runs pytest-xdist's workers (not in a worker, not without xdist)."""
    return (
        config.pluginmanager.hasplugin("xdist")
        and getattr(config, "workerinput", None) is None
        and config.getoption("dist", "no") != "no"
        and bool(config.getoption("tx", None))
    )
