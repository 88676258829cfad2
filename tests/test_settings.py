"""Settings: each from the first place that gives it, with its source; bad values refused."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from pipeweave_db import ConfigError
from pytest_pipeweave import ServerUnavailable, Settings, ephemeral_server

NOTHING: dict[str, str] = {}


def test_argument_beats_command_line_beats_environment_beats_ini() -> None:
    sources = {
        "keywords": {"image": "from-argument"},
        "command_line": {"image": "from-option", "pg_bin": "/opt/pg/bin"},
        "environ": {"PIPEWEAVE_IMAGE": "from-env", "PIPEWEAVE_PG_BIN": "/env", "DOCKER_HOST": "x"},
        "ini": {"image": "from-ini", "pg_bin": "/ini", "url": "postgresql://h/db"},
    }
    settings = Settings.resolve(**sources)  # type: ignore[arg-type]
    assert (settings.image, settings.pg_bin, settings.docker_host, settings.url) == (
        "from-argument",
        "/opt/pg/bin",
        "x",
        "postgresql://h/db",
    )
    assert settings.source("image") == "argument image"
    assert settings.source("pg_bin") == "--pipeweave-pg-bin"
    assert settings.source("docker_host") == "DOCKER_HOST"
    assert settings.source("url") == "ini pipeweave_url"
    assert (settings.backend, settings.source("backend")) == ("auto", "default")


def test_empty_values_count_as_not_given() -> None:
    settings = Settings.resolve(environ={"PIPEWEAVE_BACKEND": "", "PIPEWEAVE_KEEP": ""})
    assert (settings.backend, settings.keep) == ("auto", False)
    assert settings.source("keep") == "default"


@pytest.mark.parametrize(
    ("word", "value"),
    [("1", True), ("yes", True), ("On", True), ("TRUE", True), ("0", False), ("off", False)],
)
def test_yes_no_words_are_those_of_pipeweave_db(word: str, value: bool) -> None:
    assert Settings.resolve(environ={"PIPEWEAVE_KEEP": word}).keep is value


def test_anything_else_is_refused_naming_where_it_came_from() -> None:
    with pytest.raises(ConfigError, match=r"^PIPEWEAVE_KEEP must be true or false, got 'maybe'$"):
        Settings.resolve(environ={"PIPEWEAVE_KEEP": "maybe"})
    with pytest.raises(ConfigError, match=r"^ini pipeweave_keep must be true or false"):
        Settings.resolve(environ=NOTHING, ini={"keep": "maybe"})
    with pytest.raises(ConfigError, match=r"unknown backend 'oracle' \(PIPEWEAVE_BACKEND\)"):
        Settings.resolve(environ={"PIPEWEAVE_BACKEND": "oracle"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("6h", 21600), ("1.5h", 5400), ("1h30m", 5400), ("2D", 172800)],
)
def test_an_age_limit_is_a_duration(text: str, seconds: float) -> None:
    assert Settings.resolve(environ={"PIPEWEAVE_REAP_AFTER": text}).reap_after == seconds


@pytest.mark.parametrize("text", ["6", "6 hours", "h", "0s", "-1h", "1h 30m", "6hh", "6y"])
def test_anything_else_is_not_an_age_limit(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.resolve(environ={"PIPEWEAVE_REAP_AFTER": text})
    assert str(caught.value) == (
        f"not a duration: {text!r} (PIPEWEAVE_REAP_AFTER): give a number and a unit, "
        "e.g. 90s, 30m, 6h or 2d"
    )


def test_repr_masks_the_password() -> None:
    settings = Settings.resolve(
        environ={"PIPEWEAVE_TEST_DATABASE_URL": "postgresql://u:s3cret@h/d"}
    )
    assert "s3cret" not in repr(settings)
    assert "u:***@h" in repr(settings)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)


@pytest.mark.usefixtures("pipeweave_inner_env")
def test_a_bad_yes_no_value_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_db(pipeweave_database): pass")
    monkeypatch.setenv("PIPEWEAVE_KEEP", "maybe")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.stderr.lines if line] == [
        "ERROR: pipeweave: PIPEWEAVE_KEEP must be true or false, got 'maybe'"
    ]
    monkeypatch.delenv("PIPEWEAVE_KEEP")
    pytester.makeini("[pytest]\npipeweave_keep = maybe\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pipeweave: ini pipeweave_keep must be true or false*"])


@pytest.mark.usefixtures("pipeweave_inner_env")
def test_the_header_says_where_the_backend_came_from(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_plain(): pass")

    def header(*args: str) -> str:
        lines = run(pytester, *args).stdout.lines
        return next(line for line in lines if line.startswith("pipeweave: backend"))

    assert header().startswith("pipeweave: backend local (auto), PostgreSQL ")
    assert header().endswith(" [backend from default]")
    assert header("--pipeweave-backend=local").endswith(" [backend from --pipeweave-backend]")
    monkeypatch.setenv("PIPEWEAVE_BACKEND", "local")
    assert header().endswith(" [backend from PIPEWEAVE_BACKEND]")
    monkeypatch.delenv("PIPEWEAVE_BACKEND")
    pytester.makeini("[pytest]\npipeweave_backend = local\n")
    assert header().endswith(" [backend from ini pipeweave_backend]")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_the_server_user_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = pwd.getpwnam("nobody")
    with ephemeral_server("local", server_user="nobody") as server:
        pid = int(
            Path(server.folder or "", "local", "data", "postmaster.pid").read_text().split()[0]
        )
        assert Path(f"/proc/{pid}").stat().st_uid == nobody.pw_uid
    monkeypatch.setenv("PIPEWEAVE_SERVER_USER", "no-such-user-here")
    with pytest.raises(ServerUnavailable, match="there is no user 'no-such-user-here'"):
        ephemeral_server("local").__enter__()
