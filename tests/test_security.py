"""TLS for real, scram-sha-256 passwords with hostile characters, and unix sockets shaped like
Cloud SQL's, each on a server the test starts itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import trustme
from helpers import built_with_ssl, give_to_server_user, pg_bin

from pipeweave_db import create_database, create_database_from_env
from pytest_pipeweave import LocalServer, ServerInfo

PASSWORD = "tls-Secret-42"
SSL_ONLY_HBA = (
    "local all all trust\n"
    "hostssl all all 127.0.0.1/32 scram-sha-256\n"
    "hostssl all all ::1/128 scram-sha-256\n"
)
PASSWORD_HBA = "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"

StartServer = Callable[..., tuple[LocalServer, ServerInfo]]


def uses_ssl(env: dict[str, str]) -> bool:
    with create_database_from_env(env) as db:
        row = db.one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    return bool(row["ssl"])


@pytest.fixture
def tls(start_local_server: StartServer, server_folder: Callable[[str], Path]) -> dict[str, Any]:
    """A server that accepts TCP connections over SSL only, its certificate signed by a test CA
    for the name "localhost" (not for the address 127.0.0.1)."""
    if not built_with_ssl(pg_bin()):
        pytest.skip(f"the PostgreSQL in {pg_bin()} is built without SSL")
    ca, other_ca = trustme.CA(), trustme.CA()
    folder = server_folder("tls")
    cert = ca.issue_cert("localhost")
    cert.private_key_pem.write_to_path(str(folder / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "server.crt"))
    give_to_server_user(folder / "server.key", 0o600)
    give_to_server_user(folder / "server.crt", 0o644)
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    other_ca.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    _, info = start_local_server(
        settings={
            "ssl": "on",
            "ssl_cert_file": str(folder / "server.crt"),
            "ssl_key_file": str(folder / "server.key"),
        },
        hba=SSL_ONLY_HBA,
        password=PASSWORD,
    )
    env = {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(info.port),
        "DB_NAME": "postgres",
        "DB_USER": "postgres",
        "DB_PASS": PASSWORD,
    }
    url = f"postgres://postgres:{PASSWORD}@127.0.0.1:{info.port}/postgres"
    return {"info": info, "env": env, "url": url, "folder": folder}


def test_db_ssl_true_connects_over_ssl(tls: dict[str, Any]) -> None:
    assert uses_ssl({**tls["env"], "DB_SSL": "true"})


def test_sslmode_require_in_the_url_connects(tls: dict[str, Any]) -> None:
    assert uses_ssl({"DATABASE_URL": tls["url"] + "?sslmode=require"})


def test_production_mode_turns_ssl_on(tls: dict[str, Any]) -> None:
    assert uses_ssl({"DATABASE_URL": tls["url"], "NODE_ENV": "production"})
    assert uses_ssl({**tls["env"], "PIPEWEAVE_ENV": "production"})


def test_without_ssl_the_server_says_no_pg_hba_entry(tls: dict[str, Any]) -> None:
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba.conf entry.*no encryption"):
        uses_ssl(tls["env"])


def test_verify_full_with_the_right_ca_connects(tls: dict[str, Any]) -> None:
    env = {
        **tls["env"],
        "DB_HOST": "localhost",
        "DB_SSL": "verify-full",
        "DB_SSL_ROOT_CERT": str(tls["folder"] / "ca.pem"),
    }
    assert uses_ssl(env)
    url = tls["url"].replace("127.0.0.1", "localhost")
    assert uses_ssl(
        {"DATABASE_URL": f"{url}?sslmode=verify-full&sslrootcert={tls['folder']}/ca.pem"}
    )


def test_verify_full_refuses_a_wrong_ca(tls: dict[str, Any]) -> None:
    env = {
        **tls["env"],
        "DB_HOST": "localhost",
        "DB_SSL": "verify-full",
        "DB_SSL_ROOT_CERT": str(tls["folder"] / "other-ca.pem"),
    }
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        uses_ssl(env)


def test_verify_full_refuses_a_wrong_host_name(tls: dict[str, Any]) -> None:
    # The certificate names "localhost"; 127.0.0.1 is the same machine but not that name.
    env = {**tls["env"], "DB_SSL": "verify-full", "DB_SSL_ROOT_CERT": str(tls["folder"] / "ca.pem")}
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        uses_ssl(env)


# -- password authentication -------------------------------------------------------------------

HOSTILE_PASSWORDS = ["p@ss:w/o%rd#?&", "with spaces and & = +", "quote'and\"double\\back"]


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_hostile_passwords_work_in_both_forms(
    start_local_server: StartServer, password: str
) -> None:
    _, info = start_local_server(hba=PASSWORD_HBA, password=password)
    url = f"postgres://postgres:{quote(password, safe='')}@127.0.0.1:{info.port}/postgres"
    with create_database_from_env({"DATABASE_URL": url}) as db:
        assert db.one("SELECT current_user AS u") == {"u": "postgres"}
    env = {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(info.port),
        "DB_NAME": "postgres",
        "DB_USER": "postgres",
        "DB_PASS": password,
    }
    with create_database_from_env(env) as db:
        assert db.one("SELECT 1 AS x") == {"x": 1}


def test_wrong_password_is_refused_without_showing_it(start_local_server: StartServer) -> None:
    _, info = start_local_server(hba=PASSWORD_HBA, password="the-right-one")
    with create_database(
        host="127.0.0.1",
        port=info.port,
        database="postgres",
        user="postgres",
        password="Wrong-Secret-99",
    ) as db:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed") as err:
            db.one("SELECT 1 AS x")
        assert "Wrong-Secret-99" not in str(err.value)
        assert "Wrong-Secret-99" not in repr(db)


# -- unix sockets shaped like Cloud SQL's --------------------------------------------------------


@pytest.fixture
def cloud_sql(start_local_server: StartServer, server_folder: Callable[[str], Path]) -> Path:
    """A server listening only on <dir>/project:region:instance/.s.PGSQL.5432, as Cloud SQL's
    proxy does (no TCP, so port 5432 is free to name the socket)."""
    instance = server_folder("cloudsql") / "project:region:instance"
    start_local_server(
        socket_dir=instance,
        port=5432,
        settings={"listen_addresses": ""},
    )
    assert (instance / ".s.PGSQL.5432").is_socket()
    return instance


def test_db_host_as_a_socket_folder(cloud_sql: Path) -> None:
    env = {
        "DB_HOST": str(cloud_sql),
        "DB_NAME": "postgres",
        "DB_USER": "postgres",
        "DB_PASS": PASSWORD,
        "NODE_ENV": "production",
    }
    assert not uses_ssl(env), "production mode never turns SSL on for a socket"


def test_database_url_with_host_parameter(cloud_sql: Path) -> None:
    url = f"postgres://postgres:{PASSWORD}@/postgres?host={cloud_sql}"
    assert not uses_ssl({"DATABASE_URL": url, "NODE_ENV": "production"})
