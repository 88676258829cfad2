"""pytest plugin loaded into every inner benchmark run (``-p pwb_timing``).

Writes to ``$PWB_OUT`` (JSON): each test's setup, call and teardown durations as pytest reports
them, and the time from ``pytest_sessionstart`` to the first test's call (start-up cost: server,
template, first database). Under pytest-xdist the controller receives the workers' reports, so
durations are complete there too.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest


class Timing:
    def __init__(self) -> None:
        self.session_start: float | None = None
        self.first_call: float | None = None
        self.tests: dict[str, dict[str, Any]] = {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session_start = time.perf_counter()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        if self.first_call is None:
            self.first_call = time.perf_counter()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        test = self.tests.setdefault(report.nodeid, {"outcome": "passed"})
        test[report.when] = report.duration
        if report.failed:
            test["outcome"] = "failed"
        elif report.skipped and test["outcome"] == "passed":
            test["outcome"] = "skipped"

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        path = os.environ.get("PWB_OUT")
        if not path or hasattr(session.config, "workerinput"):
            return
        start_to_first = (
            self.first_call - self.session_start
            if self.first_call is not None and self.session_start is not None
            else None
        )
        with open(path, "w") as handle:
            json.dump(
                {
                    "exitstatus": int(exitstatus),
                    "start_to_first_test": start_to_first,
                    "tests": self.tests,
                },
                handle,
            )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(Timing(), "pwb-timing")
