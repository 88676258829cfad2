"""Connection settings: `DatabaseConfig`, and `config_from_env` with the seed's rules.

Connection strings are parsed by libpq (through `psycopg.conninfo`), so whatever psql accepts
is accepted here; we only add the checks libpq leaves to connect time (ports, sslmode) and
errors that name the setting without ever showing a password. psycopg is imported where a
string is parsed, not with this module: the pytest plugin loads it into every pytest process.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, quote

from pipeweave_db.errors import ConfigError

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_URL_SCHEMES = ("postgres", "postgresql")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PASSWORD_PARAM = re.compile(r"((?:^|[?&\s])password=)[^&\s]*", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, repr=False)
class DatabaseConfig:
    """How to reach PipeWeave's database: a URL, or host/port/database/user/password.

    ``ssl`` is ``True`` (encrypt, relaxed validation: sslmode=require), ``False``, or any libpq
    sslmode such as ``"verify-full"`` (with ``ssl_root_cert``). Left at ``None`` it means no SSL,
    as in the orchestrator, unless ``ssl_root_cert`` is given (then verify-full). An ``sslmode``
    inside ``connection_string`` always wins. ``max`` is the pool size; ``allow_exit_on_idle``
    keeps no connection open while the pool is idle (serverless).
    """

    connection_string: str | None = None
    host: str | None = None
    port: int = 5432
    database: str | None = None
    user: str | None = None
    password: str | None = None
    ssl: bool | str | None = None
    ssl_root_cert: str | None = None
    max: int = 10
    allow_exit_on_idle: bool = False
    application_name: str = "pipeweave"
    connect_timeout: int = 10
    auto_init: bool = False

    def __post_init__(self) -> None:
        if self.connection_string is not None:
            if any(v is not None for v in (self.host, self.database, self.user, self.password)):
                raise ConfigError(
                    "give either connection_string or host/database/user/password, not both"
                )
            parse_url(self.connection_string, "connection_string")
        else:
            missing = [name for name in ("host", "database", "user") if not getattr(self, name)]
            if missing:
                raise ConfigError(
                    "missing connection settings: give connection_string, or host, database "
                    f"and user (missing: {', '.join(missing)})"
                )
            object.__setattr__(self, "port", whole_number(self.port, "port", 1, 65535))
        object.__setattr__(self, "max", whole_number(self.max, "max", 1))
        object.__setattr__(
            self, "connect_timeout", whole_number(self.connect_timeout, "connect_timeout", 1)
        )
        if not isinstance(self.ssl, bool) and self.ssl is not None:
            object.__setattr__(self, "ssl", ssl_mode(self.ssl, "ssl"))
        for flag in ("allow_exit_on_idle", "auto_init"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be True or False, got {getattr(self, flag)!r}")

    @property
    def sslmode(self) -> str:
        """The libpq sslmode this config asks for when the URL does not name one."""
        if isinstance(self.ssl, str):
            return self.ssl
        if self.ssl is None:
            return "verify-full" if self.ssl_root_cert else "disable"
        return "require" if self.ssl else "disable"

    def params(self) -> dict[str, str]:
        """libpq keywords for psycopg, password included: never log or print them."""
        if self.connection_string is not None:
            params = parse_url(self.connection_string, "connection_string")
        else:
            assert self.host and self.database and self.user
            params = {
                "host": self.host,
                "port": str(self.port),
                "dbname": self.database,
                "user": self.user,
            }
            if self.password is not None:
                params["password"] = self.password
        params.setdefault("sslmode", self.sslmode)
        if self.ssl_root_cert:
            params.setdefault("sslrootcert", self.ssl_root_cert)
        params.setdefault("application_name", self.application_name)
        params.setdefault("connect_timeout", str(self.connect_timeout))
        return params

    def conninfo(self) -> str:
        """A libpq connection string, password included: never log or print it."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo("", **self.params())

    def pool_options(self) -> dict[str, Any]:
        """What a psycopg_pool pool (sync or async) is given besides conninfo and check."""
        return {
            "min_size": 0,
            "max_size": self.max,
            "kwargs": {"autocommit": True},
            "timeout": self.timeout,
            # Connections are made on demand (min_size=0): when the server is gone, stop
            # retrying after a connect timeout, so that the first request after it is back
            # connects at once instead of waiting out a backoff meant for long outages.
            "reconnect_timeout": self.timeout,
        }

    @property
    def timeout(self) -> float:
        """Seconds to wait for a connection: the effective libpq connect_timeout."""
        return float(self.params()["connect_timeout"])

    @property
    def is_unix_socket(self) -> bool:
        params = self.params()
        return is_unix_socket(params.get("host"), params.get("hostaddr"))

    @property
    def masked_url(self) -> str:
        """The connection as a URL with the password replaced by ``***``, for messages."""
        params = self.params()
        user = quote(params.get("user", ""), safe="")
        userinfo = f"{user}:***@" if "password" in params else (f"{user}@" if user else "")
        host = params.get("host", "")
        query = []
        if host and is_unix_socket(host, None):
            query.append(f"host={quote(host, safe='/:')}")
            host = ""
        elif ":" in host:
            host = f"[{host}]"
        port = f":{params['port']}" if params.get("port") and host else ""
        if params.get("port") and not host:
            query.append(f"port={params['port']}")
        if params.get("sslmode") not in (None, "disable"):
            query.append(f"sslmode={params['sslmode']}")
        dbname = quote(params.get("dbname", ""), safe="")
        tail = f"?{'&'.join(query)}" if query else ""
        return f"postgresql://{userinfo}{host}{port}/{dbname}{tail}"

    def __repr__(self) -> str:
        return (
            f"DatabaseConfig({self.masked_url!r}, max={self.max}, "
            f"allow_exit_on_idle={self.allow_exit_on_idle})"
        )


def config_from_env(environ: Mapping[str, str] | None = None) -> DatabaseConfig:
    """Read the seed's variables: ``DATABASE_URL`` wins, else ``DB_HOST``/``DB_NAME``/``DB_USER``.

    ``DB_SSL``, ``DB_POOL_MAX``, ``DB_ALLOW_EXIT_ON_IDLE`` and ``AUTO_INIT_DB`` apply to both
    forms. In production (``NODE_ENV`` or ``PIPEWEAVE_ENV`` = ``production``) SSL is on for TCP
    hosts unless the URL or ``DB_SSL`` says otherwise; never for unix sockets. Empty variables
    count as unset.
    """
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(name)
        return value if value else None

    ssl: bool | str | None = None
    if (raw_ssl := get("DB_SSL")) is not None:
        ssl = _ssl_from_env(raw_ssl)
    options: dict[str, object] = {
        "ssl": ssl,
        "ssl_root_cert": get("DB_SSL_ROOT_CERT"),
        "max": _env_number(get("DB_POOL_MAX"), "DB_POOL_MAX", 10, 1),
        "allow_exit_on_idle": _env_flag(get("DB_ALLOW_EXIT_ON_IDLE"), "DB_ALLOW_EXIT_ON_IDLE"),
        "auto_init": _env_flag(get("AUTO_INIT_DB"), "AUTO_INIT_DB"),
        "connect_timeout": _env_number(get("DB_CONNECT_TIMEOUT"), "DB_CONNECT_TIMEOUT", 10, 1),
        "application_name": get("DB_APPLICATION_NAME") or "pipeweave",
    }
    production = "production" in (get("NODE_ENV"), get("PIPEWEAVE_ENV"))

    url = get("DATABASE_URL")
    if url is not None:
        params = parse_url(url, "DATABASE_URL")
        tcp = not is_unix_socket(params.get("host"), params.get("hostaddr"))
        if production and ssl is None and tcp and "sslmode" not in params:
            options["ssl"] = "require"
        return _build(options, connection_string=url)

    names = {
        "DB_HOST": get("DB_HOST"),
        "DB_NAME": get("DB_NAME") or get("DB_DATABASE"),
        "DB_USER": get("DB_USER") or get("DB_USERNAME"),
    }
    missing = [name for name, value in names.items() if value is None]
    if missing:
        raise ConfigError(
            "no database configured: set DATABASE_URL, or DB_HOST, DB_NAME and DB_USER "
            f"(missing: {', '.join(missing)})"
        )
    host = names["DB_HOST"]
    assert host is not None
    if production and ssl is None and not is_unix_socket(host, None):
        options["ssl"] = "require"
    return _build(
        options,
        host=host,
        port=_env_number(get("DB_PORT"), "DB_PORT", 5432, 1, 65535),
        database=names["DB_NAME"],
        user=names["DB_USER"],
        password=get("DB_PASS") or get("DB_PASSWORD"),
    )


def config_from_options(
    config: DatabaseConfig | None, options: Mapping[str, Any], caller: str
) -> DatabaseConfig:
    """``config`` with ``options`` laid over it, or a config of ``options`` alone (the seed's
    keywords); an unknown keyword is a ConfigError naming ``caller``."""
    try:
        if config is None:
            return DatabaseConfig(**options)
        return dataclasses.replace(config, **options) if options else config
    except TypeError as exc:
        raise ConfigError(f"unknown setting for {caller}: {exc}") from None


def _build(options: dict[str, object], **connection: object) -> DatabaseConfig:
    return DatabaseConfig(**connection, **options)  # type: ignore[arg-type]


def parse_url(url: str, source: str) -> dict[str, str]:
    """libpq's parse of a postgres:// URL; errors name ``source`` and never show the password."""
    if not isinstance(url, str):
        raise ConfigError(f"{source} must be a string, got {type(url).__name__}")
    match = _SCHEME.match(url)
    if match is None:
        raise ConfigError(
            f"{source} is not a URL: expected postgres://user:password@host:port/database"
        )
    scheme = match.group(1)
    if scheme.lower() not in _URL_SCHEMES:
        raise ConfigError(
            f"{source} has an unknown scheme {scheme!r}: expected postgres:// or postgresql://"
        )
    url = scheme.lower() + url[len(scheme) :]
    # Only what follows the last '@' can be a query: a '?' before it may be in the password.
    _, _, query = url[match.end() :].rpartition("@")[2].partition("?")
    unknown = sorted({key for key, _ in parse_qsl(query)} - _libpq_keywords())
    if unknown:
        raise ConfigError(f"{source} has an unknown parameter {unknown[0]!r}: {_shown(url)}")
    import psycopg

    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except (psycopg.Error, ValueError) as exc:
        raise ConfigError(
            f"{source} is not a valid PostgreSQL URL ({_libpq_reason(exc, url)}): {_shown(url)}"
        ) from None
    result = {key: str(value) for key, value in params.items() if value is not None}
    for host in result.get("host", "").split(","):
        if "@" in host and not is_unix_socket(host, None):
            raise ConfigError(
                f"{source} has an '@' in its host: percent-encode '@' in the user and "
                f"password as %40: {_shown(url)}"
            )
    for port in result.get("port", "").split(","):
        if port and not (_is_decimal(port) and 1 <= int(port) <= 65535):
            # Not echoed: an unencoded '/' in a password makes libpq read part of it as a port.
            raise ConfigError(f"{source} has an invalid port: {_shown(url)}")
    if "sslmode" in result:
        result["sslmode"] = ssl_mode(result["sslmode"], f"sslmode in {source}")
    if "connect_timeout" in result:
        whole_number(result["connect_timeout"], f"connect_timeout in {source}", 0)
    return result


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, even when ``url`` is malformed.

    Everything between the user's ``:`` and the last ``@`` is masked, so an unencoded ``@``
    in a password cannot leak its tail; a missing or odd scheme changes nothing.
    """
    head, separator, rest = url.partition("://")
    if not separator:
        head, rest = "", url
    at = rest.rfind("@")
    if at != -1 and ":" in rest[:at]:
        rest = rest[: rest.index(":") + 1] + "***" + rest[at:]
    return head + separator + _PASSWORD_PARAM.sub(r"\1***", rest)


def is_unix_socket(host: str | None, hostaddr: str | None) -> bool:
    """True when libpq would use a unix socket: no host at all, or a path (``/cloudsql/...``)."""
    if not host:
        return not hostaddr
    return all(h.startswith(("/", "@")) for h in host.split(","))


def whole_number(value: object, name: str, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int within bounds, or a ConfigError naming ``name`` and the value."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _is_decimal(value.strip()):
        number = int(value.strip())
    if number is None or number < minimum or (maximum is not None and number > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{name} must be a whole number {bounds}, got {value!r}")
    return number


def _is_decimal(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '¹' and '٣', which int() refuses or reads."""
    return text.isascii() and text.isdigit()


def ssl_mode(value: object, name: str) -> str:
    if isinstance(value, str) and value.lower() in SSL_MODES:
        return value.lower()
    raise ConfigError(f"{name} must be one of {', '.join(SSL_MODES)}, got {value!r}")


def _ssl_from_env(value: str) -> bool | str:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    if lowered in SSL_MODES:
        return lowered
    raise ConfigError(
        f"DB_SSL must be true, false or an sslmode ({', '.join(SSL_MODES)}), got {value!r}"
    )


def parse_flag(value: str, name: str) -> bool:
    """A yes/no setting: true, 1, yes, on or false, 0, no, off (any case); else a ConfigError."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _env_flag(value: str | None, name: str) -> bool:
    return False if value is None else parse_flag(value, name)


def _env_number(
    value: str | None, name: str, default: int, minimum: int, maximum: int | None = None
) -> int:
    return default if value is None else whole_number(value, name, minimum, maximum)


def _shown(url: str) -> str:
    """``url`` fit for a one-line message: password masked, control characters escaped."""
    return _printable(mask_url(url))


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _libpq_reason(exc: Exception, url: str) -> str:
    """libpq's message without the input it quotes (which may hold the password)."""
    reason = _printable(str(exc).strip()) or "malformed"
    # The password first (it may contain quotes), then every quoted input.
    secret = _password_candidate(url)
    if secret:
        reason = reason.replace(secret, "***")
    return re.sub(r'"[^"]*"', "…", reason).strip()


def _password_candidate(url: str) -> str | None:
    """What a malformed URL holds where its password would be (see mask_url)."""
    rest = url.partition("://")[2] or url
    at = rest.rfind("@")
    if at == -1 or ":" not in rest[:at]:
        return None
    return rest[rest.index(":") + 1 : at] or None


@cache
def _libpq_keywords() -> frozenset[str]:
    import psycopg

    return frozenset(option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults())
