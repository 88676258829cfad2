"""The pytest plugin (entry point ``pytest11: pipeweave``): options, report lines, fixtures.

Each setting is read from the command line, else its environment variable, else its ini key
(see ``settings``); ``pytest --help`` lists them. The report header says which backend the
run will use and where that choice came from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import threading
from typing import Any

import pytest

from pipeweave_db import ConfigError
from pytest_pipeweave.errors import ServerUnavailable
from pytest_pipeweave.fixtures import (  # noqa: F401  (fixtures are found in the plugin module)
    REACHES_WORKER_DATABASE,
    _pipeweave_janitor,
    _pipeweave_worker_database,
    data_fixture_outlives_class,
    keep_failed_test_data,
    pipeweave_assert_max_num_queries,
    pipeweave_assert_num_queries,
    pipeweave_async_class_database,
    pipeweave_async_database,
    pipeweave_async_database_committed,
    pipeweave_async_factory,
    pipeweave_async_module_database,
    pipeweave_async_seed,
    pipeweave_class_database,
    pipeweave_config,
    pipeweave_connection,
    pipeweave_database,
    pipeweave_database_committed,
    pipeweave_database_url,
    pipeweave_env,
    pipeweave_factory,
    pipeweave_module_database,
    pipeweave_queries,
    pipeweave_seed,
    pipeweave_server,
    pipeweave_template,
    pipeweave_template_key,
    pipeweave_template_setup,
)
from pytest_pipeweave.processes import ProcessId
from pytest_pipeweave.runs import base_path
from pytest_pipeweave.servers import describe_backend
from pytest_pipeweave.session import CONTROLLER_INPUT, PipeweaveSession, ServerReport
from pytest_pipeweave.settings import SETTINGS, Settings

_REPORTS = pytest.StashKey[list[ServerReport]]()
STOP_REUSED = "pytest --pipeweave-stop-reused"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pipeweave", "PipeWeave PostgreSQL test databases")
    for setting in SETTINGS:
        if not setting.option:
            continue
        help_text = f"{setting.help} [env {setting.env}, ini {setting.ini}]"
        dest = setting.ini
        if setting.flag:
            group.addoption(
                setting.option_name, action="store_true", default=None, dest=dest, help=help_text
            )
        else:
            group.addoption(setting.option_name, default=None, dest=dest, help=help_text)
        parser.addini(setting.ini, setting.help, default=None)
    group.addoption(
        "--pipeweave-stop-reused",
        action="store_true",
        default=False,
        help="stop the server kept for reuse, remove its files, and run no tests",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--pipeweave-stop-reused``: the one command that undoes ``--pipeweave-reuse``."""
    if not config.getoption("pipeweave_stop_reused"):
        return None
    from pytest_pipeweave.shared import stop_reused_server

    stopped, message = stop_reused_server(settings_from(config))
    print(f"pipeweave: {message}")
    return 0 if stopped else 1


def settings_from(config: pytest.Config) -> Settings:
    """The command line, else the environment, else the ini file; a bad value is a usage error."""
    options = [setting for setting in SETTINGS if setting.option]
    try:
        settings = Settings.resolve(
            command_line={s.name: config.getoption(s.ini) for s in options},
            ini={s.name: config.getini(s.ini) for s in options},
        )
    except ConfigError as exc:
        raise pytest.UsageError(f"pipeweave: {exc}") from None
    if settings.keep_failed and not settings.reuse:
        # The kept databases outlive the run, so the server does: kept for reuse.
        source = f"{settings.source('keep_failed')} (keep-failed)"
        settings = dataclasses.replace(
            settings, reuse=True, sources={**settings.sources, "reuse": source}
        )
    return settings


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """With ``--pipeweave-keep-failed``, a failed test's data is copied before its teardown
    undoes it, and its report says where."""
    report = yield
    if report.when == "call" and report.failed:
        kept = keep_failed_test_data(item)
        if kept:
            report.sections.append(("pipeweave: the failed test's data", kept))
    return report


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pipeweave(committed=False): committed=True makes pipeweave_database, and the factory "
        "and seed with it, commit as pipeweave_database_committed does",
    )
    config.stash[_REPORTS] = []
    PipeweaveSession.install(config, settings_from(config))


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> None:
    data_fixture_outlives_class(fixturedef, request.config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = PipeweaveSession.of(config).settings
    return [f"pipeweave: {describe_backend(settings, base_path(settings.tmpdir) / 'cache')}"]


@pytest.hookimpl(tryfirst=True)  # before the terminal's, which prints our report of it
def pytest_collection_finish(session: pytest.Session) -> None:
    """Start (or join) the plugin's server as soon as the tests that need it are known.

    Before the first test, so that the header can say how long it took; and under
    pytest-xdist, while the other workers are still starting up, rather than in a test. Only
    when the plugin's own ``pipeweave_server`` is the one in use: an overridden one is left
    to its fixture.
    """
    config = session.config
    if config.option.collectonly:
        return
    # The fixture definitions a test sees are its parent's (module, class): each parent is
    # looked up once, not each of its tests (for 10,000 tests, 90 ms before the server).
    needing = {item.parent: item for item in session.items if _needs_server(item)}.values()
    users = [item for item in needing if _from_plugin(item, *_SERVER_FIXTURES)]
    if not users:
        return
    PipeweaveSession.of(config).plain_template = all(
        _from_plugin(item, "pipeweave_template", "pipeweave_template_setup") for item in users
    )
    # What the fixtures will need (psycopg above all, tens of ms) is imported on another
    # thread meanwhile: the start mostly waits for other processes (cp, initdb, postgres).
    imports = threading.Thread(target=_import_quietly, args=("pytest_pipeweave.databases",))
    imports.start()
    try:
        with contextlib.suppress(ServerUnavailable):  # kept, and reported by the fixtures
            PipeweaveSession.of(config).server()
    finally:
        imports.join()


def _import_quietly(module: str) -> None:
    """Import ``module`` ahead of its use; a failure is left for that use to raise."""
    with contextlib.suppress(Exception):
        importlib.import_module(module)


def _needs_server(item: pytest.Item) -> bool:
    """True when ``item`` needs a database or the server."""
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and bool(_NEEDS_SERVER & set(info.name2fixturedefs))


# The fixtures that reach the server, some of them with nothing behind them in the closure.
_NEEDS_SERVER = REACHES_WORKER_DATABASE | {"pipeweave_server"}
# A test gets its database from this plugin's server when neither is overridden where it
# lies. The URL is asked for only when first needed (``_pipeweave_worker_database``), so it
# is not in the test's fixture closure: its definition is looked up.
_SERVER_FIXTURES = ("pipeweave_server", "pipeweave_database_url")


def _from_plugin(item: pytest.Item, *names: str) -> bool:
    """True when each of the fixtures ``names`` that ``item`` sees is this plugin's own."""
    manager = item.session._fixturemanager
    for name in names:
        try:
            definitions = manager.getfixturedefs(name, item)
        except (AttributeError, TypeError):  # pytest < 8.1 takes the item's node id
            definitions = manager.getfixturedefs(name, item.nodeid)  # type: ignore[arg-type]
        if not definitions:
            return False
        func = definitions[-1].func
        if f"{func.__module__}.{func.__name__}" != f"pytest_pipeweave.fixtures.{name}":
            return False
    return True


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    """How the server started; a server that could not start is said by each test's error,
    in one line, not here as well."""
    session = PipeweaveSession.of(config)
    report = session.report()
    return [f"pipeweave: {describe_start(report)}"] if report else []


def describe_start(report: ServerReport) -> str:
    if report.reused:
        how = "reused (kept by an earlier run with reuse)"
    elif report.startup_seconds is None:
        how = "joined"
    else:
        how = f"started in {report.startup_seconds:.2f} s"
        if report.warm_start is not None:
            how += " (cached cluster)" if report.warm_start else " (initdb)"
        if report.replaced:
            how += f", {report.replaced}"
    return f"{report.backend} server PostgreSQL {report.version} {how}"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    pipeweave = PipeweaveSession.of(session.config)
    report = pipeweave.report()
    if report is not None:
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput["pipeweave"] = report.to_dict()
        session.config.stash[_REPORTS].append(report)
    pipeweave.finish(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist hooks: unknown where xdist is not installed
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: tell each worker that the controller owns the run until the end."""
    node.workerinput[CONTROLLER_INPUT] = dataclasses.asdict(ProcessId.current())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist: keep what each worker says of the server for the summary."""
    report = getattr(node, "workeroutput", {}).get("pipeweave")
    if report:
        node.config.stash[_REPORTS].append(ServerReport.from_dict(report))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    reports = config.stash.get(_REPORTS, [])
    if not reports:
        return
    first = next((r for r in reports if r.startup_seconds is not None), reports[0])
    line = f"pipeweave: {describe_start(first)}"
    template_seconds = next(
        (r.template_seconds for r in reports if r.template_seconds is not None), None
    )
    if template_seconds is not None:
        line += f", template in {template_seconds:.2f} s"
    template_note = next((r.template_note for r in reports if r.template_note), None)
    if template_note:
        line += f"; {template_note}"
    terminalreporter.write_line(line)
    reaped = sorted({name for report in reports for name in report.reaped})
    if reaped:
        limit = PipeweaveSession.of(config).settings.reap_after
        terminalreporter.write_line(
            f"pipeweave: dropped {len(reaped)} databases of other runs made more than "
            f"{limit:g} s ago (--pipeweave-reap-after): {', '.join(reaped)}"
        )
    if first.reuse and not first.keep:
        terminalreporter.write_line(
            f"pipeweave: server kept for the next run with reuse; to stop it: {STOP_REUSED}"
        )
    if first.keep:
        terminalreporter.write_line(f"pipeweave: server kept running: psql '{first.url}'")
        if "***" in first.url:
            terminalreporter.write_line(f"pipeweave: its password is in {first.state_file}")
        terminalreporter.write_line(f"pipeweave: to stop it: {first.stop}")
