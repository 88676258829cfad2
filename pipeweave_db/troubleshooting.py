"""Why a database call failed, in one line, and what to do about it (the seed's Troubleshooting).

libpq reports connection failures as text, without an SQLSTATE, so they are recognised by
libpq's and the server's own (English) words. The one-line message keeps libpq's wording, which
names the host, port, user or database involved; libpq never puts a password in it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

import psycopg

from pipeweave_db.errors import PipeweaveError

__all__ = ["Diagnosis", "diagnose"]

# What the seed's Troubleshooting section says, plus the variants libpq reports for them.
REFUSED_HINT = (
    "Ensure PostgreSQL is running and listening on that host and port: "
    "`brew services start postgresql` (macOS with Homebrew), or with Docker "
    "`docker run -d -p 5432:5432 -e POSTGRES_PASSWORD=postgres postgres:15`"
)
NO_SOCKET_HINT = (
    "Ensure PostgreSQL is running and the socket folder is right (for Cloud SQL: is the "
    "instance connection name right and the Cloud SQL connector running?)"
)
AUTHENTICATION_HINT = "Check username and password in your connection config"
NO_PASSWORD_HINT = "The server asks for a password: give it with --password, DB_PASS, or in the URL"
SSL_REQUIRED_HINT = (
    "Enable SSL in your connection config: --ssl, DB_SSL=true, or "
    "postgres://user:pass@host:5432/db?sslmode=require (else ask the server's administrator "
    "for a pg_hba.conf entry for this host, user and database)"
)
NOT_ALLOWED_HINT = (
    "The server's pg_hba.conf lets no connection in for this host, user and database: "
    "ask its administrator to add an entry"
)
SSL_UNSUPPORTED_HINT = (
    "The server does not accept SSL: turn SSL off (--no-ssl, DB_SSL=false, or sslmode=disable "
    "in the URL), or enable SSL on the server"
)
UNKNOWN_USER_HINT = "Check the username in your connection config, or create that role"
TIMEOUT_HINT = "Nothing answered in time: check the host, the port and any firewall on the way"
UNKNOWN_HOST_HINT = "Check the host name in your connection config"

# (words in libpq's message, kind, hint), checked in this order.
_CONNECTION_RULES = (
    ("password authentication failed", "authentication_failed", AUTHENTICATION_HINT),
    ("no password supplied", "authentication_failed", NO_PASSWORD_HINT),
    ("authentication failed", "authentication_failed", AUTHENTICATION_HINT),
    ("no pg_hba.conf entry", "ssl_required", SSL_REQUIRED_HINT),
    ("server does not support SSL", "ssl_unsupported", SSL_UNSUPPORTED_HINT),
    ("Connection refused", "connection_refused", REFUSED_HINT),
    ("No such file or directory", "connection_refused", NO_SOCKET_HINT),
    ("timeout expired", "timeout", TIMEOUT_HINT),
    ("failed to resolve host", "unknown_host", UNKNOWN_HOST_HINT),
    ("could not translate host name", "unknown_host", UNKNOWN_HOST_HINT),
)
_DATABASE_MISSING = re.compile(r'database "(?P<name>.*)" does not exist')
_ROLE_MISSING = re.compile(r'role ".*" does not exist')
# PostgreSQL 12+ ends the pg_hba message with "no encryption", older ones with "SSL off".
_UNENCRYPTED = re.compile(r"no encryption|SSL off")
_LIBPQ_PREFIXES = ("connection failed:", "connection is bad:")


@dataclass(frozen=True)
class Diagnosis:
    """One failure: ``kind`` for programs, ``message`` (one line) and ``hint`` for people.

    ``hint`` is empty when there is nothing useful to add to the message.
    """

    kind: str
    message: str
    hint: str = ""


def diagnose(error: BaseException) -> Diagnosis:
    """Classify ``error`` (any exception a pipeweave_db call raised) into a Diagnosis."""
    if isinstance(error, psycopg.OperationalError) and error.sqlstate is None:
        return _connection_failure(str(error))
    if isinstance(error, psycopg.Error):
        primary = error.diag.message_primary if error.sqlstate else None
        return Diagnosis("database_error", _one_line(primary or _first_line(str(error))))
    if isinstance(error, PipeweaveError):
        return Diagnosis(error.kind, _one_line(str(error)))
    return Diagnosis("error", _one_line(str(error)) or type(error).__name__)


def _connection_failure(text: str) -> Diagnosis:
    """A failure to connect, recognised by libpq's words (the most specific first)."""
    if match := _DATABASE_MISSING.search(text):
        line = _line_with(text, "does not exist")
        return Diagnosis("database_missing", line, _create_database_hint(match.group("name")))
    if _ROLE_MISSING.search(text):
        return Diagnosis("unknown_user", _line_with(text, "does not exist"), UNKNOWN_USER_HINT)
    for words, kind, hint in _CONNECTION_RULES:
        if words.lower() in text.lower():
            line = _line_with(text, words)
            if kind == "ssl_required" and not _UNENCRYPTED.search(line):
                # Encrypted already, and still no entry: SSL is not what is missing.
                return Diagnosis("not_allowed", line, NOT_ALLOWED_HINT)
            return Diagnosis(kind, line, hint)
    return Diagnosis("connection_failed", _first_line(text))


def _create_database_hint(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        createdb, statement = name, f'"CREATE DATABASE {name};"'
    else:
        identifier = '"' + name.replace('"', '""') + '"'
        createdb, statement = shlex.quote(name), shlex.quote(f"CREATE DATABASE {identifier};")
    return (
        f"Create the database first: `createdb {createdb}`, or with Docker "
        f"`docker exec -it <container> psql -U postgres -c {statement}`"
    )


def _line_with(text: str, words: str) -> str:
    """The line of libpq's (possibly multi-line, multi-host) report that holds ``words``."""
    for line in text.splitlines():
        if words.lower() in line.lower():
            return _one_line(line)
    return _first_line(text)


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return _one_line(lines[0]) if lines else ""


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    line = re.sub(r"^- host: .*?: (?=connection)", "", line)
    for prefix in _LIBPQ_PREFIXES:
        if line.startswith(prefix):
            line = line[len(prefix) :].strip()
    return line
