"""``pipeweave_db.troubleshooting``: libpq's reports turned into one line and the seed's remedy.

The end-to-end cases (a refused port, a wrong password, a missing database, no pg_hba.conf
entry) run against real servers in test_cli.py; these cover the variants no test server
produces here: other PostgreSQL versions' wording, several hosts, timeouts, unknown hosts.
"""

from __future__ import annotations

import psycopg
import pytest

from pipeweave_db import ConfigError, MigrationError
from pipeweave_db.troubleshooting import (
    AUTHENTICATION_HINT,
    NO_SOCKET_HINT,
    NOT_ALLOWED_HINT,
    REFUSED_HINT,
    SSL_REQUIRED_HINT,
    TIMEOUT_HINT,
    UNKNOWN_HOST_HINT,
    UNKNOWN_USER_HINT,
    Diagnosis,
    diagnose,
)

MULTI_HOST = (
    'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
    "Connection refused\n"
    "\tIs the server running on that host and accepting TCP/IP connections?\n"
    "Multiple connection attempts failed. All failures were:\n"
    "- host: 'localhost', port: '5432', hostaddr: '::1': connection failed: connection to "
    'server at "::1", port 5432 failed: Connection refused\n'
    "\tIs the server running on that host and accepting TCP/IP connections?\n"
    "- host: 'localhost', port: '5432', hostaddr: '127.0.0.1': connection failed: connection "
    'to server at "127.0.0.1", port 5432 failed: Connection refused\n'
    "\tIs the server running on that host and accepting TCP/IP connections?"
)


@pytest.mark.parametrize(
    ("message", "kind", "line", "hint"),
    [
        (
            MULTI_HOST,
            "connection_refused",
            'connection to server at "127.0.0.1", port 5432 failed: Connection refused',
            REFUSED_HINT,
        ),
        (
            'connection is bad: connection to server on socket "/cloudsql/p:r:i/.s.PGSQL.5432" '
            "failed: No such file or directory\n\tIs the server running locally and accepting "
            "connections on that socket?",
            "connection_refused",
            'connection to server on socket "/cloudsql/p:r:i/.s.PGSQL.5432" failed: '
            "No such file or directory",
            NO_SOCKET_HINT,
        ),
        (
            'connection failed: connection to server at "10.0.0.1", port 5432 failed: '
            'FATAL:  password authentication failed for user "postgres"',
            "authentication_failed",
            'connection to server at "10.0.0.1", port 5432 failed: FATAL: password '
            'authentication failed for user "postgres"',
            AUTHENTICATION_HINT,
        ),
        (
            'connection failed: FATAL:  no pg_hba.conf entry for host "1.2.3.4", user "u", '
            'database "d", SSL off',
            "ssl_required",
            'FATAL: no pg_hba.conf entry for host "1.2.3.4", user "u", database "d", SSL off',
            SSL_REQUIRED_HINT,
        ),
        (
            'connection failed: FATAL:  no pg_hba.conf entry for host "1.2.3.4", user "u", '
            'database "d", SSL encryption',
            "not_allowed",
            'FATAL: no pg_hba.conf entry for host "1.2.3.4", user "u", database "d", '
            "SSL encryption",
            NOT_ALLOWED_HINT,
        ),
        ("connection timeout expired", "timeout", "connection timeout expired", TIMEOUT_HINT),
        (
            "failed to resolve host 'db.invalid': [Errno -2] Name or service not known",
            "unknown_host",
            "failed to resolve host 'db.invalid': [Errno -2] Name or service not known",
            UNKNOWN_HOST_HINT,
        ),
        (
            'connection failed: connection to server on socket "/tmp/.s.PGSQL.5432" failed: '
            'FATAL:  role "nobody" does not exist',
            "unknown_user",
            'connection to server on socket "/tmp/.s.PGSQL.5432" failed: FATAL: role "nobody" '
            "does not exist",
            UNKNOWN_USER_HINT,
        ),
        ("connection failed: something new", "connection_failed", "something new", ""),
    ],
)
def test_connection_failures(message: str, kind: str, line: str, hint: str) -> None:
    assert diagnose(psycopg.OperationalError(message)) == Diagnosis(kind, line, hint)


def test_missing_database_hint_quotes_unusual_names() -> None:
    plain = diagnose(psycopg.OperationalError('FATAL:  database "pipeweave" does not exist'))
    assert plain.kind == "database_missing"
    assert "`createdb pipeweave`" in plain.hint
    assert '-c "CREATE DATABASE pipeweave;"`' in plain.hint
    odd = diagnose(psycopg.OperationalError('FATAL:  database "My DB" does not exist'))
    assert "`createdb 'My DB'`" in odd.hint
    assert """-c 'CREATE DATABASE "My DB";'`""" in odd.hint


def test_library_errors_keep_their_message_and_name_their_kind() -> None:
    assert diagnose(ConfigError("DB_PORT must be...")) == Diagnosis(
        "config_error", "DB_PORT must be..."
    )
    assert diagnose(MigrationError("migration 0002_x failed:\n  boom")).kind == "migration_error"
    assert diagnose(MigrationError("a\n  b")).message == "a b"


def test_server_errors_give_their_first_line() -> None:
    error = psycopg.errors.UndefinedTable('relation "dlq" does not exist\nLINE 1: SELECT ...')
    assert diagnose(error) == Diagnosis("database_error", 'relation "dlq" does not exist')
