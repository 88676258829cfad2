"""What one pytest process knows of the plugin: its settings and its share of the server."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from pipeweave_db import mask_url
from pytest_pipeweave.runs import STATE_FILE
from pytest_pipeweave.servers import ServerInfo, ServerUnavailable
from pytest_pipeweave.settings import Settings
from pytest_pipeweave.shared import SharedServer

_KEY = pytest.StashKey["PipeweaveSession"]()


class PipeweaveSession:
    """Starts (or joins) the run's server on first use; leaves it when pytest finishes."""

    def __init__(self, settings: Settings, run_key: str | None, worker: str) -> None:
        self.settings = settings
        self.run_key = run_key
        self.worker = worker
        self.shared: SharedServer | None = None
        self.error: ServerUnavailable | None = None
        self.databases: list[str] = []

    @classmethod
    def install(cls, config: pytest.Config, settings: Settings) -> PipeweaveSession:
        """Under pytest-xdist, the workers of one session share its run key.

        Read from ``workerinput``, not from PYTEST_XDIST_* variables: a pytest started from
        inside a worker inherits those, and must not join the outer run.
        """
        workerinput = getattr(config, "workerinput", None)
        if workerinput is not None:
            session = cls(
                settings, str(workerinput["testrunuid"])[:12], str(workerinput["workerid"])
            )
        elif is_xdist_controller(config):
            # Fix the run key now: pytest-xdist hands its --testrunuid to the workers.
            config.option.testrunuid = config.option.testrunuid or uuid.uuid4().hex
            session = cls(settings, str(config.option.testrunuid)[:12], "controller")
        else:
            session = cls(settings, None, "main")
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
        self.shared = SharedServer(self.settings, self.run_key)
        try:
            return self.shared.acquire()
        except ServerUnavailable as exc:
            self.error = exc
            raise

    def reserve(self) -> None:
        """As the pytest-xdist controller, own the run until every worker is done with it."""
        self.shared = SharedServer(self.settings, self.run_key)
        self.shared.reserve()

    def finish(self) -> None:
        if self.shared is not None and (
            self.shared.info is not None or self.worker == "controller"
        ):
            self.shared.release(self.databases)

    def report(self) -> dict[str, Any] | None:
        """What the terminal summary says of the server, JSON-able (sent by xdist workers)."""
        if self.shared is None or self.shared.info is None:
            return None
        info = self.shared.info
        state = self.shared.state
        return {
            "backend": info.backend,
            "version": info.version,
            "startup_seconds": state.get("startup_seconds"),
            "template_seconds": state.get("template_seconds"),
            "warm_start": state.get("warm_start"),
            "keep": self.settings.keep,
            # Never the password: a kept server's is in the run's state file (mode 0600).
            "url": mask_url(info.url(self.databases[0] if self.databases else "postgres")),
            "state_file": str(self.shared.run.path / STATE_FILE),
            "stop": self.shared.stop_hint(),
        }


def is_xdist_controller(config: pytest.Config) -> bool:
    """True in the process that runs pytest-xdist's workers (not in a worker, not without xdist)."""
    return (
        config.pluginmanager.hasplugin("xdist")
        and getattr(config, "workerinput", None) is None
        and config.getoption("dist", "no") != "no"
        and bool(config.getoption("tx", None))
    )
