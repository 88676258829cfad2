"""Hostile input: arbitrary environments and URLs give a config or a ConfigError, nothing else,
and no message or repr ever contains the password.

Profiles (tests/conftest.py): "dev" runs a few hundred examples per property, "ci" (with CI set,
or HYPOTHESIS_PROFILE=ci) runs 10,000.
"""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import assume, example, given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from pipeweave_db import ConfigError, DatabaseConfig, config_from_env, mask_url

# A password no other part of a URL can contain by chance: a marker plus hostile characters.
passwords = st.text(
    alphabet=st.sampled_from("abcXYZ019@:/%#?&= '\"\\!$*+,;[]{}é€\t"), min_size=4, max_size=24
).map(lambda tail: "Pw!" + tail)
anything = st.text(max_size=40)
schemes = st.sampled_from(["postgres", "postgresql", "POSTGRES", "mysql", "http", "", "postgres:"])
hosts = st.one_of(
    st.sampled_from(["localhost", "db.example.com", "[::1]", "127.0.0.1", ""]),
    st.text(alphabet="abc.-[]:/@%", max_size=12),
)
ports = st.one_of(st.integers(0, 70000).map(str), st.text(alphabet="0123456789abc:-", max_size=6))
queries = st.lists(
    st.tuples(
        st.sampled_from(
            ["sslmode", "host", "connect_timeout", "application_name", "foo", "password"]
        ),
        st.text(alphabet="abc/:-=verifyqiuedsl0123", max_size=12),
    ),
    max_size=3,
)
VARIABLES = [
    "DATABASE_URL",
    "DB_HOST",
    "DB_PORT",
    "DB_NAME",
    "DB_DATABASE",
    "DB_USER",
    "DB_USERNAME",
    "DB_SSL",
    "DB_SSL_ROOT_CERT",
    "DB_POOL_MAX",
    "DB_ALLOW_EXIT_ON_IDLE",
    "AUTO_INIT_DB",
    "DB_CONNECT_TIMEOUT",
    "DB_APPLICATION_NAME",
    "NODE_ENV",
    "PIPEWEAVE_ENV",
]


def assert_no_leak(password: str, *texts: str) -> None:
    for text in texts:
        assert password not in text, text
        assert quote(password, safe="") not in text, text


def outcome(env: dict[str, str], password: str) -> None:
    try:
        config = config_from_env(env)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        assert_no_leak(password, str(exc), repr(exc))
        return
    assert isinstance(config, DatabaseConfig)
    assert_no_leak(password, repr(config), str(config), config.masked_url)


@st.composite
def urls(draw: st.DrawFn) -> tuple[str, str]:
    password = draw(passwords)
    encoded = draw(st.booleans())
    secret = quote(password, safe="") if encoded else password
    user = draw(st.sampled_from(["user", "u@x", "", "a:b"]))
    query = "&".join(f"{k}={v}" for k, v in draw(queries))
    url = (
        f"{draw(schemes)}://{quote(user, safe='') if encoded else user}:{secret}@{draw(hosts)}"
        f":{draw(ports)}/{draw(anything)}" + (f"?{query}" if query else "")
    )
    return url, password


@given(urls(), st.dictionaries(st.sampled_from(VARIABLES[1:]), anything, max_size=6))
@example(("postgres://u:Pw!a/b@h/d", "Pw!a/b"), {})
@example(("postgres://u:Pw!a@b@h/d", "Pw!a@b"), {})
@example(("postgres://u:Pw!%zz@h/d", "Pw!%zz"), {})
@example(("postgres://u@h/d?password=Pw!abc&foo=1", "Pw!abc"), {})
def test_any_database_url(url_and_password: tuple[str, str], others: dict[str, str]) -> None:
    url, password = url_and_password
    outcome({**others, "DATABASE_URL": url}, password)


@given(
    st.dictionaries(st.sampled_from(VARIABLES[1:]), anything, max_size=10), passwords, st.booleans()
)
def test_any_individual_variables(env: dict[str, str], password: str, alias: bool) -> None:
    env = {**env, ("DB_PASSWORD" if alias else "DB_PASS"): password}
    outcome(env, password)


@given(urls())
def test_mask_url_never_shows_the_password(url_and_password: tuple[str, str]) -> None:
    url, password = url_and_password
    assume("@" in url.split("://", 1)[-1])
    assert_no_leak(password, mask_url(url))


@given(
    user=st.text(min_size=1, max_size=12),
    password=passwords,
    host=st.sampled_from(["localhost", "db.example.com", "::1", "127.0.0.1"]),
    port=st.integers(1, 65535),
    dbname=st.text(min_size=1, max_size=12),
)
def test_encoded_urls_round_trip(
    user: str, password: str, host: str, port: int, dbname: str
) -> None:
    assume("\x00" not in user + password + dbname)
    authority = f"[{host}]" if ":" in host else host
    url = f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{authority}:{port}/{quote(dbname, safe='')}"
    params = config_from_env({"DATABASE_URL": url}).params()
    assert (
        params["user"],
        params["password"],
        params["host"],
        params["port"],
        params["dbname"],
    ) == (
        user,
        password,
        host,
        str(port),
        dbname,
    )
    assert (
        conninfo_to_dict(DatabaseConfig(connection_string=url).conninfo())["password"] == password
    )
