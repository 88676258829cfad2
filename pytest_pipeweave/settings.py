"""Every setting the servers and the plugin read, each parsed once, with where it came from.

The plugin reads each from its command-line option, else its environment variable, else its
ini key (as pytest-django's ``_get_option_with_source`` does); ``ephemeral_server`` from its
keyword arguments, else the same environment variables. A bad value is a ``ConfigError`` that
names the option or variable it came from, never silently a default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from pipeweave_db import ConfigError, mask_url
from pipeweave_db.config import parse_flag

DEFAULT_IMAGE = "postgres:15"
DEFAULT_SOURCE = "default"


def _text(value: str, source: str) -> str:
    return value


def _backend(value: str, source: str) -> str:
    from pytest_pipeweave.servers import BACKEND_CHOICES

    if value not in BACKEND_CHOICES:
        raise ConfigError(
            f"unknown backend {value!r} ({source}): choose one of {', '.join(BACKEND_CHOICES)}"
        )
    return value


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str, source: str) -> float:
    """Seconds, from a duration such as ``90s``, ``30m``, ``6h``, ``2d`` or ``1h30m``."""
    text = value.strip().lower()
    parts = _DURATION_PART.findall(text)
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if not parts or "".join(n + u for n, u in parts) != text or seconds <= 0:
        raise ConfigError(
            f"not a duration: {value!r} ({source}): give a number and a unit, "
            "e.g. 90s, 30m, 6h or 2d"
        )
    return seconds


@dataclass(frozen=True)
class Setting:
    """One setting: its environment variable, and whether it also has an option and ini key."""

    name: str
    env: str
    help: str
    parse: Callable[[str, str], Any] = _text
    option: bool = True
    flag: bool = False

    @property
    def option_name(self) -> str:
        return "--pipeweave-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return f"pipeweave_{self.name}"


def flag_setting(name: str, env: str, help: str) -> Setting:
    """A yes/no setting: a bare option on the command line, parsed as a flag elsewhere."""
    return Setting(name, env, help, parse_flag, flag=True)


SETTINGS = (
    Setting(
        "backend",
        "PIPEWEAVE_BACKEND",
        "server backend: auto, local, docker, url (default auto: url if given, else local "
        "binaries, else Docker)",
        _backend,
    ),
    Setting("url", "PIPEWEAVE_TEST_DATABASE_URL", "URL of an existing server (url backend)"),
    Setting("image", "PIPEWEAVE_IMAGE", f"docker image (default {DEFAULT_IMAGE})"),
    Setting("pg_bin", "PIPEWEAVE_PG_BIN", "folder holding initdb and postgres (local backend)"),
    flag_setting(
        "keep",
        "PIPEWEAVE_KEEP",
        "leave the server running and print how to connect",
    ),
    flag_setting(
        "reuse",
        "PIPEWEAVE_REUSE",
        "leave the server and template for the next run with reuse, and attach to a server and "
        "template an earlier one left (rebuilt when what made them changed)",
    ),
    flag_setting(
        "recreate",
        "PIPEWEAVE_RECREATE",
        "with reuse: build the template again even though nothing that made it changed",
    ),
    flag_setting(
        "strict",
        "PIPEWEAVE_STRICT",
        "fail (not only warn about) a rollback-mode test whose code committed writes through "
        "a connection of its own",
    ),
    flag_setting(
        "keep_failed",
        "PIPEWEAVE_KEEP_FAILED",
        "copy the data a failing test saw into a database of its own, kept until the next run "
        "on that server, and print its address",
    ),
    Setting(
        "reap_after",
        "PIPEWEAVE_REAP_AFTER",
        "on a server that outlives runs (url backend), also drop this plugin's databases older "
        "than this (e.g. 6h), from any host, even when their run looks alive (default: only "
        "those of runs known to be over)",
        parse_duration,
    ),
    Setting(
        "tmpdir",
        "PIPEWEAVE_TMPDIR",
        "parent of the servers' folders (default /dev/shm when writable, else the temp folder)",
        option=False,
    ),
    Setting(
        "server_user",
        "PIPEWEAVE_SERVER_USER",
        "as root, the user the local server runs as (default postgres, else nobody)",
        option=False,
    ),
    Setting(
        "docker_host", "DOCKER_HOST", "the Docker engine (docker's own variable)", option=False
    ),
)


@dataclass(frozen=True, repr=False)
class Settings:
    """Which server to use and how. ``sources`` says where each value came from.

    ``url`` may hold a password, so ``repr()`` masks it.
    """

    backend: str = "auto"
    url: str | None = None
    image: str = DEFAULT_IMAGE
    pg_bin: str | None = None
    keep: bool = False
    reuse: bool = False
    recreate: bool = False
    strict: bool = False
    keep_failed: bool = False
    reap_after: float | None = None
    tmpdir: str | None = None
    server_user: str | None = None
    docker_host: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def resolve(
        cls,
        *,
        keywords: Mapping[str, Any] | None = None,
        command_line: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        ini: Mapping[str, str | None] | None = None,
    ) -> Settings:
        """Each setting from the first place that gives it: a keyword, the command line, the
        environment, the ini file; else its default. Empty strings count as not given."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for setting in SETTINGS:
            for source, value in (
                ("argument " + setting.name, (keywords or {}).get(setting.name)),
                (setting.option_name, (command_line or {}).get(setting.name)),
                (setting.env, environ.get(setting.env)),
                ("ini " + setting.ini, (ini or {}).get(setting.name)),
            ):
                if value is None or value == "":
                    continue
                values[setting.name] = (
                    setting.parse(value, source) if isinstance(value, str) else value
                )
                sources[setting.name] = source
                break
        return cls(**values, sources=sources)

    def source(self, name: str) -> str:
        """Where setting ``name`` came from: an option, a variable, an ini key, or default."""
        return self.sources.get(name, DEFAULT_SOURCE)

    def __repr__(self) -> str:
        shown = {
            f.name: mask_url(self.url) if f.name == "url" and self.url else getattr(self, f.name)
            for f in fields(self)
            if f.name != "sources"
        }
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"
