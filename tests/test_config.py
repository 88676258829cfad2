"""config_from_env and DatabaseConfig: the seed's variables, SSL rules, URLs, and errors.

Pure parsing, no server: every example of the seed's "Database Connection" and "SSL" sections.
"""

from __future__ import annotations

import dataclasses

import pytest

from pipeweave_db import ConfigError, DatabaseConfig, config_from_env, mask_url

SECRET = "s3cr3t-Pa55"


def params(env: dict[str, str]) -> dict[str, str]:
    return config_from_env(env).params()


# -- the seed's two methods ------------------------------------------------------------------


def test_database_url_local_development() -> None:
    p = params({"DATABASE_URL": "postgres://user:password@localhost:5432/pipeweave"})
    assert (p["host"], p["port"], p["dbname"], p["user"], p["password"]) == (
        "localhost",
        "5432",
        "pipeweave",
        "user",
        "password",
    )
    assert p["sslmode"] == "disable"


def test_database_url_with_sslmode_require() -> None:
    p = params({"DATABASE_URL": "postgres://user:password@host:5432/pipeweave?sslmode=require"})
    assert p["sslmode"] == "require"


def test_database_url_cloud_sql_socket() -> None:
    url = "postgres://user:password@/pipeweave?host=/cloudsql/project:region:instance"
    config = config_from_env({"DATABASE_URL": url})
    assert config.params()["host"] == "/cloudsql/project:region:instance"
    assert config.is_unix_socket


def test_individual_credentials() -> None:
    env = {
        "DB_HOST": "localhost",
        "DB_PORT": "5432",
        "DB_NAME": "pipeweave",
        "DB_USER": "postgres",
        "DB_PASS": "your-password",
    }
    config = config_from_env(env)
    assert (config.host, config.port, config.database, config.user, config.password) == (
        "localhost",
        5432,
        "pipeweave",
        "postgres",
        "your-password",
    )
    assert config.max == 10
    assert config.allow_exit_on_idle is False
    assert config.auto_init is False
    assert config.params()["sslmode"] == "disable"


def test_individual_credentials_aliases_and_default_port() -> None:
    config = config_from_env(
        {"DB_HOST": "db", "DB_DATABASE": "pw", "DB_USERNAME": "me", "DB_PASSWORD": "pw1"}
    )
    assert (config.port, config.database, config.user, config.password) == (5432, "pw", "me", "pw1")


def test_password_is_optional() -> None:
    config = config_from_env({"DB_HOST": "db", "DB_NAME": "pw", "DB_USER": "me"})
    assert "password" not in config.params()


def test_database_url_wins_over_individual_variables() -> None:
    config = config_from_env(
        {
            "DATABASE_URL": "postgres://a:b@urlhost/urldb",
            "DB_HOST": "other",
            "DB_NAME": "other",
            "DB_USER": "other",
        }
    )
    assert config.params()["host"] == "urlhost"
    assert config.host is None


def test_optional_settings_apply_to_both_forms() -> None:
    extra = {"DB_POOL_MAX": "2", "DB_ALLOW_EXIT_ON_IDLE": "true", "AUTO_INIT_DB": "true"}
    for base in (
        {"DATABASE_URL": "postgres://a@h/d"},
        {"DB_HOST": "h", "DB_NAME": "d", "DB_USER": "a"},
    ):
        config = config_from_env({**base, **extra})
        assert (config.max, config.allow_exit_on_idle, config.auto_init) == (2, True, True)


def test_empty_variables_count_as_unset() -> None:
    config = config_from_env(
        {"DATABASE_URL": "", "DB_HOST": "h", "DB_NAME": "d", "DB_USER": "u", "DB_PORT": ""}
    )
    assert (config.host, config.port) == ("h", 5432)


# -- SSL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("true", "require"),
        ("TRUE", "require"),
        ("1", "require"),
        ("false", "disable"),
        ("verify-full", "verify-full"),
        ("require", "require"),
    ],
)
def test_db_ssl(value: str, mode: str) -> None:
    assert (
        params({"DB_HOST": "h", "DB_NAME": "d", "DB_USER": "u", "DB_SSL": value})["sslmode"] == mode
    )


def test_sslmode_in_url_wins_over_db_ssl() -> None:
    env = {"DATABASE_URL": "postgres://u@h/d?sslmode=disable", "DB_SSL": "true"}
    assert params(env)["sslmode"] == "disable"


@pytest.mark.parametrize("variable", ["NODE_ENV", "PIPEWEAVE_ENV"])
def test_production_turns_ssl_on_for_tcp_hosts(variable: str) -> None:
    assert (
        params({"DATABASE_URL": "postgres://u:p@host:5432/pipeweave", variable: "production"})[
            "sslmode"
        ]
        == "require"
    )
    assert (
        params(
            {
                "DB_HOST": "my-db-host.example.com",
                "DB_NAME": "d",
                "DB_USER": "u",
                variable: "production",
            }
        )["sslmode"]
        == "require"
    )


def test_production_never_turns_ssl_on_for_unix_sockets() -> None:
    socket_env = {
        "DB_HOST": "/cloudsql/my-project:us-central1:my-instance",
        "DB_NAME": "pipeweave",
        "DB_USER": "postgres",
        "DB_PASS": "password",
        "NODE_ENV": "production",
    }
    assert params(socket_env)["sslmode"] == "disable"
    url = "postgres://u:p@/pipeweave?host=/cloudsql/p:r:i"
    assert params({"DATABASE_URL": url, "NODE_ENV": "production"})["sslmode"] == "disable"


def test_production_respects_an_explicit_choice() -> None:
    env = {"DATABASE_URL": "postgres://u@h/d?sslmode=disable", "NODE_ENV": "production"}
    assert params(env)["sslmode"] == "disable"
    env = {
        "DB_HOST": "h",
        "DB_NAME": "d",
        "DB_USER": "u",
        "DB_SSL": "false",
        "NODE_ENV": "production",
    }
    assert params(env)["sslmode"] == "disable"


def test_full_verification_is_expressible() -> None:
    env = {
        "DB_HOST": "h",
        "DB_NAME": "d",
        "DB_USER": "u",
        "DB_SSL": "verify-full",
        "DB_SSL_ROOT_CERT": "/ca.pem",
    }
    p = params(env)
    assert (p["sslmode"], p["sslrootcert"]) == ("verify-full", "/ca.pem")
    p = params({"DATABASE_URL": "postgres://u@h/d?sslmode=verify-full&sslrootcert=/ca.pem"})
    assert (p["sslmode"], p["sslrootcert"]) == ("verify-full", "/ca.pem")
    # A CA alone asks for verification.
    assert (
        DatabaseConfig(host="h", database="d", user="u", ssl_root_cert="/ca.pem").sslmode
        == "verify-full"
    )


def test_ssl_keyword_forms() -> None:
    base = {"host": "h", "database": "d", "user": "u"}
    assert DatabaseConfig(**base, ssl=True).params()["sslmode"] == "require"
    assert DatabaseConfig(**base, ssl=False).params()["sslmode"] == "disable"
    assert DatabaseConfig(**base, ssl="VERIFY-CA").params()["sslmode"] == "verify-ca"


# -- URLs --------------------------------------------------------------------------------------


def test_both_schemes_and_percent_encoding() -> None:
    for scheme in ("postgres", "postgresql", "PostgreSQL"):
        p = params({"DATABASE_URL": f"{scheme}://us%40er:p%40ss%3Aw%2Fo%25rd@db.example.com/pw"})
        assert (p["user"], p["password"], p["host"]) == ("us@er", "p@ss:w/o%rd", "db.example.com")


def test_ipv6_host() -> None:
    p = params({"DATABASE_URL": "postgresql://u:p@[::1]:5433/pw"})
    assert (p["host"], p["port"]) == ("::1", "5433")
    assert (
        "[::1]:5433"
        in config_from_env({"DATABASE_URL": "postgresql://u:p@[::1]:5433/pw"}).masked_url
    )


def test_other_libpq_parameters_pass_through() -> None:
    p = params(
        {
            "DATABASE_URL": "postgres://u@h/d?application_name=orchestrator&connect_timeout=3&options=-c%20statement_timeout%3D5s"
        }
    )
    assert p["application_name"] == "orchestrator"
    assert p["connect_timeout"] == "3"
    assert p["options"] == "-c statement_timeout=5s"
    assert config_from_env({"DATABASE_URL": "postgres://u@h/d?connect_timeout=3"}).timeout == 3


def test_conninfo_round_trips_special_characters() -> None:
    config = DatabaseConfig(host="/cloudsql/p:r:i", database="d b", user="u", password="a b'c\\")
    from psycopg.conninfo import conninfo_to_dict

    parsed = conninfo_to_dict(config.conninfo())
    assert (parsed["host"], parsed["dbname"], parsed["password"]) == (
        "/cloudsql/p:r:i",
        "d b",
        "a b'c\\",
    )


# -- errors ------------------------------------------------------------------------------------


def test_missing_configuration_names_what_is_missing() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_env({})
    assert "DATABASE_URL" in str(info.value)
    assert "missing: DB_HOST, DB_NAME, DB_USER" in str(info.value)
    with pytest.raises(ConfigError, match=r"missing: DB_USER\)"):
        config_from_env({"DB_HOST": "h", "DB_NAME": "d"})


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"DB_PORT": "abc"}, ["DB_PORT", "'abc'"]),
        ({"DB_PORT": "70000"}, ["DB_PORT", "'70000'"]),
        ({"DB_POOL_MAX": "0"}, ["DB_POOL_MAX", "'0'"]),
        ({"DB_POOL_MAX": "ten"}, ["DB_POOL_MAX", "'ten'"]),
        ({"DB_SSL": "maybe"}, ["DB_SSL", "'maybe'"]),
        ({"DB_ALLOW_EXIT_ON_IDLE": "sometimes"}, ["DB_ALLOW_EXIT_ON_IDLE", "'sometimes'"]),
        ({"AUTO_INIT_DB": "2"}, ["AUTO_INIT_DB", "'2'"]),
    ],
)
def test_bad_values_name_variable_and_value(env: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_env({"DB_HOST": "h", "DB_NAME": "d", "DB_USER": "u", "DB_PASS": SECRET, **env})
    for word in words:
        assert word in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (f"mysql://u:{SECRET}@h/d", ["DATABASE_URL", "'mysql'"]),
        (f"u:{SECRET}@h/d", ["DATABASE_URL", "not a URL"]),
        (SECRET, ["DATABASE_URL", "not a URL"]),
        (f"postgres://u:{SECRET}@h:abc/d", ["DATABASE_URL", "invalid port", "h:abc"]),
        (f"postgres://u:{SECRET}@h/d?sslmode=maybe", ["sslmode", "'maybe'"]),
        (f"postgres://u:{SECRET}@h/d?foo=bar", ["DATABASE_URL", "'foo'"]),
        (f"postgres://u:{SECRET}%zz@h/d", ["DATABASE_URL", "percent-encoded"]),
        (f"postgres://u:{SECRET}@[::1/d", ["DATABASE_URL", "IPv6"]),
        (f"postgres://u:{SECRET}@more@h/d", ["DATABASE_URL", "%40"]),
        (f"postgres://u:pa/{SECRET}@h/d", ["DATABASE_URL", "invalid port"]),
    ],
)
def test_bad_urls_name_the_problem_never_the_password(url: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_env({"DATABASE_URL": url})
    message = str(info.value)
    for word in words:
        assert word in message
    assert SECRET not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"host": "h", "database": "d"},
        {"connection_string": "postgres://h/d", "host": "h"},
        {"host": "h", "database": "d", "user": "u", "port": 0},
        {"host": "h", "database": "d", "user": "u", "port": True},
        {"host": "h", "database": "d", "user": "u", "max": 0},
        {"host": "h", "database": "d", "user": "u", "ssl": "sometimes"},
        {"host": "h", "database": "d", "user": "u", "allow_exit_on_idle": "yes"},
        {"host": "h", "database": "d", "user": "u", "connect_timeout": 0},
    ],
)
def test_bad_keyword_configs(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DatabaseConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_immutable() -> None:
    config = DatabaseConfig(host="h", database="d", user="u")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.host = "other"  # type: ignore[misc]


# -- no password, anywhere -----------------------------------------------------------------------


def test_repr_and_str_never_show_the_password() -> None:
    for config in (
        DatabaseConfig(host="h", database="d", user="u", password=SECRET),
        DatabaseConfig(connection_string=f"postgres://u:{SECRET}@h/d"),
        DatabaseConfig(connection_string=f"postgres://u@h/d?password={SECRET}"),
        config_from_env({"DB_HOST": "h", "DB_NAME": "d", "DB_USER": "u", "DB_PASS": SECRET}),
    ):
        for text in (repr(config), str(config), config.masked_url, f"{config}", f"{[config]}"):
            assert SECRET not in text
        assert "***" in config.masked_url


@pytest.mark.parametrize(
    "url",
    [
        f"postgres://u:{SECRET}@h/d",
        f"postgres://u:{SECRET}@@h/d",
        f"postgres://u:a@{SECRET}@h/d",
        f"postgres://u:{SECRET}/x@h/d",
        f"postgres://u@h/d?password={SECRET}&x=1",
        f"not a url password={SECRET}",
    ],
)
def test_mask_url(url: str) -> None:
    assert SECRET not in mask_url(url)


def test_masked_url_of_socket_config() -> None:
    config = DatabaseConfig(host="/cloudsql/p:r:i", database="pw", user="u", password=SECRET)
    assert config.masked_url == "postgresql://u:***@/pw?host=/cloudsql/p:r:i&port=5432"
