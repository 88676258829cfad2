"""The pytest plugin (entry point ``pytest11: pipeweave``): options, report lines, fixtures.

Each option is read from the command line, else its environment variable, else its ini key::

    --pipeweave-backend  PIPEWEAVE_BACKEND            pipeweave_backend  auto|local|docker|url
    --pipeweave-url      PIPEWEAVE_TEST_DATABASE_URL  pipeweave_url      an existing server
    --pipeweave-image    PIPEWEAVE_IMAGE              pipeweave_image    docker image
    --pipeweave-pg-bin   PIPEWEAVE_PG_BIN             pipeweave_pg_bin   folder of initdb/postgres
    --pipeweave-keep     PIPEWEAVE_KEEP               pipeweave_keep     leave the server running
"""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass
from typing import Any

import pytest

from pipeweave_db import mask_url
from pytest_pipeweave.fixtures import (  # noqa: F401  (fixtures are found in the plugin module)
    _pipeweave_worker_database,
    pipeweave_config,
    pipeweave_database,
    pipeweave_database_committed,
    pipeweave_database_url,
    pipeweave_env,
    pipeweave_factory,
    pipeweave_seed,
    pipeweave_server,
    pipeweave_template_setup,
)
from pytest_pipeweave.servers import BACKENDS, DEFAULT_IMAGE, ServerUnavailable, choose_backend
from pytest_pipeweave.servers.local import binary_version, find_pg_bin, short_version
from pytest_pipeweave.session import PipeweaveSession
from pytest_pipeweave.settings import Settings

_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class _Option:
    name: str
    env: str
    help: str
    flag: bool = False

    @property
    def ini(self) -> str:
        return f"pipeweave_{self.name}"

    @property
    def dest(self) -> str:
        return f"pipeweave_{self.name}"


OPTIONS = (
    _Option(
        "backend", "PIPEWEAVE_BACKEND", f"server backend: {', '.join(BACKENDS)} (default auto)"
    ),
    _Option("url", "PIPEWEAVE_TEST_DATABASE_URL", "URL of an existing server (url backend)"),
    _Option("image", "PIPEWEAVE_IMAGE", f"docker image (default {DEFAULT_IMAGE})"),
    _Option("pg_bin", "PIPEWEAVE_PG_BIN", "folder holding initdb and postgres (local backend)"),
    _Option("keep", "PIPEWEAVE_KEEP", "leave the server running and print how to connect", True),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pipeweave", "PipeWeave PostgreSQL test databases")
    for option in OPTIONS:
        flag = "--pipeweave-" + option.name.replace("_", "-")
        help_text = f"{option.help} [env {option.env}, ini {option.ini}]"
        if option.flag:
            group.addoption(
                flag, action="store_true", default=None, dest=option.dest, help=help_text
            )
            parser.addini(option.ini, option.help, type="bool", default=None)
        else:
            group.addoption(flag, default=None, dest=option.dest, help=help_text)
            parser.addini(option.ini, option.help, default=None)


def settings_from(config: pytest.Config) -> Settings:
    """Command line, else environment, else ini; a bad backend name is a usage error."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = config.getoption(option.dest)
        if value is None:
            env = os.environ.get(option.env)
            if env:
                value = env.strip().lower() in _TRUE if option.flag else env
        if value is None:
            value = config.getini(option.ini)
        if value is not None and value != "":
            values[option.name] = value
    settings = Settings(**values)
    if settings.backend not in BACKENDS:
        raise pytest.UsageError(
            f"pipeweave: unknown backend {settings.backend!r}: choose one of {', '.join(BACKENDS)}"
        )
    return settings


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pipeweave(committed=False): committed=True makes pipeweave_database, and the factory "
        "and seed with it, commit as pipeweave_database_committed does",
    )
    PipeweaveSession.install(config, settings_from(config))


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"pipeweave: {describe_backend(PipeweaveSession.of(config).settings)}"]


def describe_backend(settings: Settings) -> str:
    """Which server the run will use, found out without starting it."""
    try:
        backend = choose_backend(settings.backend, settings.url, settings.pg_bin)
    except ServerUnavailable as exc:
        return f"backend {settings.backend}: {exc}"
    chosen = f"backend {backend}" + (" (auto)" if settings.backend == "auto" else "")
    if backend == "local":
        try:
            bin_dir = find_pg_bin(settings.pg_bin)
            assert bin_dir is not None
            return f"{chosen}, PostgreSQL {short_version(binary_version(bin_dir))} from {bin_dir}"
        except ServerUnavailable as exc:
            return f"{chosen}: {exc}"
    if backend == "docker":
        return f"{chosen}, image {settings.image}"
    return f"{chosen}, {mask_url(settings.url or '')}"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start (or join) the server as soon as the tests that need one are known.

    Before the first test, so that the header can say how long it took; and under
    pytest-xdist, while the other workers are still starting up, rather than in a test.
    """
    config = session.config
    if config.option.collectonly or not any(_uses_server(item) for item in session.items):
        return
    # What the fixtures will need (psycopg above all), imported now: another worker may be
    # starting the server, and this one waits for it with nothing else to do.
    importlib.import_module("pytest_pipeweave.databases")
    with contextlib.suppress(ServerUnavailable):  # kept, and reported by the fixtures
        PipeweaveSession.of(config).server()


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    session = PipeweaveSession.of(config)
    if session.error is not None:
        return [f"pipeweave: {session.error}"]
    report = session.report()
    return [f"pipeweave: {describe_start(report)}"] if report else []


def _uses_server(item: pytest.Item) -> bool:
    return "pipeweave_server" in getattr(item, "fixturenames", ())


def describe_start(report: dict[str, Any]) -> str:
    startup = report.get("startup_seconds")
    how = "joined" if startup is None else f"started in {startup:.2f} s"
    if report.get("warm_start") is not None:
        how += " (cached cluster)" if report["warm_start"] else " (initdb)"
    return f"{report['backend']} server PostgreSQL {report['version']} {how}"


_REPORTS = pytest.StashKey[list[dict[str, Any]]]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    pipeweave = PipeweaveSession.of(session.config)
    report = pipeweave.report()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and report is not None:
        workeroutput["pipeweave"] = report
    if report is not None:
        session.config.stash[_REPORTS].append(report)
    pipeweave.finish()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_REPORTS] = []
    pipeweave = PipeweaveSession.of(session.config)
    if pipeweave.worker == "controller" and not session.config.option.collectonly:
        pipeweave.reserve()  # before the workers exist; see shared.py


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown where xdist is not installed
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist: keep what each worker says of the server for the summary."""
    report = getattr(node, "workeroutput", {}).get("pipeweave")
    if report:
        node.config.stash[_REPORTS].append(report)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    reports = config.stash.get(_REPORTS, [])
    if not reports:
        return
    started = [r for r in reports if r.get("startup_seconds") is not None] or reports
    first = started[0]
    line = f"pipeweave: {describe_start(first)}"
    if first.get("template_seconds") is not None:
        line += f", template in {first['template_seconds']:.2f} s"
    terminalreporter.write_line(line)
    if first.get("keep"):
        terminalreporter.write_line(f"pipeweave: server kept running: psql '{first['url']}'")
        if "***" in first["url"]:
            terminalreporter.write_line(f"pipeweave: its password is in {first['state_file']}")
        terminalreporter.write_line(f"pipeweave: to stop it: {first['stop']}")
