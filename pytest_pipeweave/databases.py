"""Test databases on a server: the template holding the schema, clones of it, dropping them.

Works outside pytest too: ``create_template(server, "tpl")`` then
``clone_database(server, "tpl", "mine")`` gives an initialized database in milliseconds, and
``DatabaseJanitor`` does the same for a run of several processes, cleaning up after it.
Names are always quoted identifiers, comments quoted literals: nothing is pasted into SQL.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from pipeweave_db import (
    ArgumentError,
    Database,
    create_database,
    initialize_schema,
)
from pytest_pipeweave.errors import ServerUnavailable, first_line
from pytest_pipeweave.leaks import install_write_notices
from pytest_pipeweave.servers.base import ServerInfo
from pytest_pipeweave.template_cache import schema_digest

NAME_PREFIX = "pytest_pipeweave_"
TEMPLATE_SUFFIX = "template"
# The copies of failed tests' data (--pipeweave-keep-failed): outside any run's names, so that
# the run's end leaves them; a later run with the option drops those of runs that are over.
FAILED_PREFIX = f"{NAME_PREFIX}failed_"
# Reusable templates (--pipeweave-reuse): ``<prefix><key digest>``, outliving runs.
REUSABLE_PREFIX = f"{NAME_PREFIX}template_"
# With reuse, each run's end leaves a copy of the reusable template for the next run's worker in
# the same slot ("main", "gw0", ...), made while nobody waits: the next run renames it instead
# of copying. ``<prefix><template digest>_<slot>``: at most one a slot, dropped with the template.
SPARE_PREFIX = f"{NAME_PREFIX}spare_"
# A database comment: the run that owns it, the host it ran on (for people reading it), when
# it was made (seconds since the epoch by the server's clock: the hosts' clocks may disagree;
# absent from what older versions made), and what it is, when it is more than the run's own.
_RUN_COMMENT = re.compile(
    r"^pytest-pipeweave run=(?P<run>[0-9a-f]{12}) host=(?P<host>\S+)"
    r"(?: created=(?P<created>\d+))?(?: (?P<state>building|kept|failed test))?$"
)
# High 16 bits of the advisory lock keys; the low 48 are the run key's 12 hex digits.
_RUN_LOCK = 0x7077
_BUILD_LOCK = 0x7078
# Held (shared) by every run using a reusable template, so that a stale one is dropped only
# when no run uses it.
_TEMPLATE_LOCK = 0x7079
# A reusable template's comment: its key, the run that built it, and what the key was made of.
_REUSABLE = re.compile(
    r"^pytest-pipeweave template=(?P<key>[0-9a-f]{12}) run=(?P<run>[0-9a-f]{12}) "
    r"schema=(?P<schema>\S+) postgres=(?P<postgres>\S*) setup=(?P<setup>\S+) "
    r"origin=(?P<origin>\S+)(?: created=(?P<created>\d+))?$"
)

TemplateSetup = Callable[[Database], None]
Connection = psycopg.Connection[tuple[Any, ...]]


def admin_connection(server: ServerInfo) -> Connection:
    """An autocommit connection to the server's maintenance database."""
    return psycopg.connect(server.admin_url, autocommit=True, connect_timeout=10)


def database_name(run_key: str, suffix: str) -> str:
    """``pytest_pipeweave_<run>_<suffix>``: recognisably ours, unique per run."""
    return f"{NAME_PREFIX}{run_key}_{suffix}".lower()


def reusable_name(digest: str) -> str:
    return f"{REUSABLE_PREFIX}{digest}"


def spare_name(digest: str, slot: str) -> str:
    """The spare of reusable template ``digest`` for the worker in ``slot`` (see SPARE_PREFIX)."""
    return f"{SPARE_PREFIX}{digest}_{slot}".lower()


def host_label(hostname: str | None = None) -> str:
    """This host's name (``hostname``) as database names carry it: letters and digits, at
    most 16, so that a name says which host made it and leaves room for the rest."""
    label = re.sub(r"[^a-z0-9]", "", (hostname or socket.gethostname()).lower())[:16]
    return label or "host"


def create_template(
    server: ServerInfo,
    name: str,
    setup: TemplateSetup | None = None,
    *,
    comment: str | None = None,
) -> None:
    """Create database ``name`` with the PipeWeave schema, then let ``setup`` add to it."""
    with admin_connection(server) as conn:
        _create(conn, name, "template1", comment)
    try:
        _initialize(server.url(name), setup)
    except BaseException:
        drop_database(server, name)
        raise


def clone_database(
    server: ServerInfo, template: str, name: str, *, comment: str | None = None
) -> None:
    """Create ``name`` as a copy of ``template``."""
    with admin_connection(server) as conn:
        _create(conn, name, template, comment)


def drop_database(server: ServerInfo, name: str) -> None:
    """Drop ``name`` if it exists, disconnecting whoever is still connected to it."""
    with admin_connection(server) as conn:
        _drop(conn, name)


def _initialize(url: str, setup: TemplateSetup | None, *, write_notices: bool = False) -> None:
    """The PipeWeave schema in the database at ``url``, then ``setup``'s additions; for a test
    template, then the triggers that tell of commits from elsewhere (``leaks``)."""
    with create_database(connection_string=url, max=1) as db:
        initialize_schema(db)
        if setup is not None:
            setup(db)
        if write_notices:
            install_write_notices(db)


def initialize_template(url: str, setup: TemplateSetup | None = None) -> None:
    """The database at ``url`` made a test template: the schema, ``setup``'s additions, and
    the write notices."""
    _initialize(url, setup, write_notices=True)


def _create(conn: Connection, name: str, template: str, comment: str | None) -> None:
    conn.execute(_create_statement(conn, name, template))
    if comment:
        _comment(conn, name, comment)


def _create_statement(conn: Connection, name: str, template: str) -> sql.Composed:
    """CREATE DATABASE by file copy: on PostgreSQL 15+ the default, WAL_LOG, writes the whole
    template into the WAL, which costs more than copying its files."""
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(template)
    )
    if conn.info.server_version >= 150000:
        statement += sql.SQL(" STRATEGY FILE_COPY")
    return statement


def _drop(conn: Connection, name: str) -> None:
    if conn.info.server_version >= 130000:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        return
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        [name],
    )
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def _comment(conn: Connection, name: str, comment: str) -> None:
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal(comment)
            )
        )


def _databases(conn: Connection, run_key: str | None = None) -> list[tuple[str, str]]:
    """(run key, name) of the databases of our runs (of ``run_key``'s), by their comments.

    A kept database's comment says so, and does not match: it is never dropped as a leftover.
    """
    found = []
    for name, comment in _commented(conn, database_name(run_key, "") if run_key else NAME_PREFIX):
        match = _RUN_COMMENT.match(comment)
        if (
            match
            and match["state"] in (None, "building")
            and name.startswith(database_name(match["run"], ""))
        ):
            found.append((match["run"], name))
    return found


def _commented(conn: Connection, prefix: str) -> list[tuple[str, str]]:
    """(name, comment or "") of the databases whose names begin with ``prefix``, oldest first."""
    rows = conn.execute(
        "SELECT datname, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database"
        " WHERE starts_with(datname, %s) ORDER BY oid",
        [prefix],
    ).fetchall()
    return [(str(name), str(comment)) for name, comment in rows]


def _made_before(name: str, comment: str, cutoff: float, own_run: str) -> bool:
    """Whether ``name`` is a database of ours, not of run ``own_run``, that its comment says
    was made before ``cutoff`` (seconds since the epoch)."""
    if reusable := _REUSABLE.match(comment):
        made = reusable["created"]
        ours = name == reusable_name(reusable["key"])
    elif owned := _RUN_COMMENT.match(comment):
        made = owned["created"]
        ours = owned["run"] != own_run and any(
            name.startswith(prefix)
            for prefix in (database_name(owned["run"], ""), f"{FAILED_PREFIX}{owned['run']}_")
        )
    else:
        return False
    return ours and made is not None and int(made) < cutoff


@contextlib.contextmanager
def _locked_if_free(conn: Connection, lock: int) -> Iterator[bool]:
    """Whether advisory ``lock`` was free; if so it is held for the block (no waiting)."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", [lock]).fetchone()
    if not (row and row[0]):
        yield False
        return
    try:
        yield True
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [lock])


@dataclass(frozen=True)
class Template:
    """The run's template database, and how long building it took (None: built before).

    ``rebuilt`` says why a reusable template was built again (None: reused, built for the
    first time, or not reusable).
    """

    name: str
    build_seconds: float | None
    rebuilt: str | None = None
    cached: bool = False  # made already in the server's cached cluster (``template_cache``)


@dataclass(frozen=True)
class TemplateKey:
    """What a reusable template depends on, each part a short hash or version: the shipped
    migrations, the server's PostgreSQL, and the setup (its code, or a key its owner gives).

    ``origin`` names the setup function: a new template replaces the older ones of its origin,
    and leaves those of other suites sharing the server alone.
    """

    schema: str
    postgres: str
    setup: str
    origin: str

    @classmethod
    def of(cls, server: ServerInfo, setup: TemplateSetup | None, key: str | None) -> TemplateKey:
        setup_hash = _short_hash(_setup_identity(setup, key))
        origin = "none" if setup is None else f"{setup.__module__}.{setup.__qualname__}"
        return cls(schema_digest(), server.version, setup_hash, _short_hash(origin))

    @property
    def digest(self) -> str:
        return _short_hash(f"{self.schema} {self.postgres} {self.setup} {self.origin}")

    def changed_from(self, other: TemplateKey) -> str:
        """What differs from ``other``, in words for the report."""
        changes = [
            words
            for part, words in (
                ("schema", "the migrations"),
                ("postgres", "PostgreSQL"),
                ("setup", "the template setup (its code or pipeweave_template_key)"),
            )
            if getattr(self, part) != getattr(other, part)
        ]
        return " and ".join(changes) + " changed" if changes else "it was not on the server"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _setup_identity(setup: TemplateSetup | None, key: str | None) -> str:
    """The given key, else the setup's source (its bytecode where there is no source)."""
    if key is not None:
        return f"key {key}"
    if setup is None:
        return "none"
    try:
        return f"source {inspect.getsource(setup)}"
    except (OSError, TypeError):
        code = getattr(setup, "__code__", None)
        return f"code {code.co_code.hex() if code else repr(setup)}"


class DatabaseJanitor:
    """A run's databases on one server, created and dropped through one admin connection.

    While open it holds the run's advisory lock (shared) on the server: any process, on any
    host, can tell a live run's databases from a dead one's by trying that lock. So opening
    one on a server that outlives runs (``ServerInfo.ephemeral`` false) drops the databases
    of runs that ended without cleaning up (killed), and closing it drops the run's own
    databases when this was the run's last process, unless ``keep``. On an ephemeral server
    nothing is dropped: the server takes its databases with it.

    The processes of one run (pytest-xdist workers) share ``run_key``: the first to ask builds
    the template, under the run's build lock, and the others reuse it. Names carry the run key
    and the host (``host_label``), comments the host and the time each database was made, so
    that runs from many hosts can share one server and ``drop_older_than`` can reap by age.

    With a reusable template a run takes the spare an earlier one left (``SPARE_PREFIX``) and,
    as it closes, leaves one for the next.
    """

    def __init__(self, server: ServerInfo, run_key: str, *, keep: bool = False) -> None:
        if not re.fullmatch(r"[0-9a-f]{12}", run_key):
            raise ArgumentError(f"run_key must be 12 hex digits (new_run_key()), got {run_key!r}")
        self.server = server
        self.run_key = run_key
        self.keep = keep
        self.host = host_label()
        hostname = re.sub(r"\s", "_", socket.gethostname())
        self._owner = f"pytest-pipeweave run={run_key} host={hostname}"
        self._clock_offset = 0.0  # the server's clock minus ours, for the comments' times
        self._conn: Connection | None = None
        # With reuse: the reusable template's digest, and the first slot copied from it here
        # (one statement is sent without waiting as the janitor closes, so one spare).
        self._spare_digest: str | None = None
        self._spare_slot: str | None = None
        self._open()
        if not server.ephemeral:
            self.drop_dead_runs()

    # -- the run's databases ---------------------------------------------------------------

    def name(self, suffix: str) -> str:
        return database_name(self.run_key, f"{self.host}_{suffix}")

    def template(
        self,
        setup: TemplateSetup | None = None,
        *,
        reuse: TemplateKey | None = None,
        recreate: bool = False,
    ) -> Template:
        """The run's template (schema, then ``setup``), built now unless a process of the run
        has built it already.

        With ``reuse``, the template is the server's one for that key, which outlives the run
        and is built only when no run built it before (or, with ``recreate``, no process of
        this run); the ones it replaces (same setup function, other key) that no run uses are
        dropped.
        """
        if reuse is not None:
            return self._reusable_template(setup, reuse, recreate)
        name = self.name(TEMPLATE_SUFFIX)
        conn = self._admin()
        conn.execute("SELECT pg_advisory_lock(%s)", [self._lock_id(_BUILD_LOCK)])
        try:
            comment = self._comment_of(name)
            if comment is not None and not comment.endswith(" building"):
                return Template(name, None)
            started = time.perf_counter()
            if comment is not None:  # a process of the run died while building it
                _drop(conn, name)
            cached = self._build(name, setup, self._comment())
            return Template(name, round(time.perf_counter() - started, 3), cached=cached)
        finally:
            with contextlib.suppress(psycopg.Error):
                self._admin().execute("SELECT pg_advisory_unlock(%s)", [self._lock_id(_BUILD_LOCK)])

    def _reusable_template(
        self, setup: TemplateSetup | None, key: TemplateKey, recreate: bool
    ) -> Template:
        name = reusable_name(key.digest)
        conn = self._admin()
        conn.execute(
            "SELECT pg_advisory_lock_shared(%s)", [self._key_lock(_TEMPLATE_LOCK, key.digest)]
        )
        build_lock = self._key_lock(_BUILD_LOCK, key.digest)
        conn.execute("SELECT pg_advisory_lock(%s)", [build_lock])
        try:
            kept = self._reusable(conn)
            found = kept.get(key.digest)
            self._spare_digest = key.digest
            if found is not None and not (recreate and found[1] != self.run_key):
                return Template(name, None)
            rebuilt: str | None = "--pipeweave-recreate"
            if found is None:
                earlier = [k for k, _ in kept.values() if k.origin == key.origin]
                rebuilt = key.changed_from(earlier[-1]) if earlier else None
            started = time.perf_counter()
            _drop(conn, name)
            comment = (
                f"pytest-pipeweave template={key.digest} run={self.run_key} schema={key.schema} "
                f"postgres={key.postgres} setup={key.setup} origin={key.origin} "
                f"created={self._server_time()}"
            )
            cached = self._build(name, setup, comment)
            # After the build: a spare being copied from the old template meanwhile is done.
            self._drop_spares(self._admin(), key.digest)
            self._drop_superseded(self._admin(), key)
            return Template(name, round(time.perf_counter() - started, 3), rebuilt, cached)
        finally:
            with contextlib.suppress(psycopg.Error):
                self._admin().execute("SELECT pg_advisory_unlock(%s)", [build_lock])

    def _build(self, name: str, setup: TemplateSetup | None, comment: str) -> bool:
        """Template ``name`` made under a "building" comment, so that a builder that dies
        half way leaves something the next one recognises and drops; without a setup, the
        one the server started with made (``ServerInfo.prepared_database``), renamed: whether
        it was that one."""
        if setup is None and self._take_prepared(name):
            _comment(self._admin(), name, comment)
            return True
        _create(self._admin(), name, "template1", self._comment("building"))
        try:
            initialize_template(self.server.url(name), setup)
        except BaseException:
            _drop(self._admin(), name)
            raise
        _comment(self._admin(), name, comment)
        return False

    def _take_prepared(self, name: str) -> bool:
        """The server's prepared database renamed ``name``; False if it has none (any more)."""
        if self.server.prepared_database is None:
            return False
        try:
            self._admin().execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(self.server.prepared_database), sql.Identifier(name)
                )
            )
        except psycopg.errors.InvalidCatalogName:  # taken by an earlier run (reuse)
            return False
        return True

    def _reusable(self, conn: Connection) -> dict[str, tuple[TemplateKey, str]]:
        """The reusable templates on the server, oldest first: digest -> (key, builder run)."""
        found = {}
        for _, comment in _commented(conn, REUSABLE_PREFIX):
            match = _REUSABLE.match(comment)
            if match:
                key = TemplateKey(
                    match["schema"], match["postgres"], match["setup"], match["origin"]
                )
                found[match["key"]] = (key, match["run"])
        return found

    def _drop_superseded(self, conn: Connection, key: TemplateKey) -> None:
        """Drop the reusable templates that ``key``'s replaces (of its origin) and no run holds."""
        for digest, (other, _) in self._reusable(conn).items():
            if digest != key.digest and other.origin == key.origin:
                self._drop_unused_template(conn, digest)

    def _drop_unused_template(self, conn: Connection, digest: str) -> bool:
        """Drop reusable template ``digest`` unless a run holds it; whether it was dropped."""
        with _locked_if_free(conn, self._key_lock(_TEMPLATE_LOCK, digest)) as free:
            if free:
                _drop(conn, reusable_name(digest))
                self._drop_spares(conn, digest)
            return free

    def _drop_spares(self, conn: Connection, digest: str) -> None:
        for name, _ in _commented(conn, f"{SPARE_PREFIX}{digest}_"):
            _drop(conn, name)

    def create(self, suffix: str, setup: TemplateSetup | None = None) -> str:
        """A database of the run with the PipeWeave schema (and ``setup``); its URL."""
        name = self.name(suffix)
        _create(self._admin(), name, "template1", self._comment())
        try:
            _initialize(self.server.url(name), setup)
        except BaseException:
            self.drop(name)
            raise
        return self.server.url(name)

    def clone(self, template: str, suffix: str) -> str:
        """A database of the run copied from ``template``; its URL. From the reusable
        template, the spare an earlier run left for ``suffix`` is taken when there is one."""
        name = self.name(suffix)
        conn = self._admin()
        if not (self._is_reusable(template) and self._take_spare(conn, suffix, name)):
            _create(conn, name, template, self._comment())
        if self._is_reusable(template) and self._spare_slot is None:
            self._spare_slot = suffix
        return self.server.url(name)

    def _is_reusable(self, template: str) -> bool:
        return self._spare_digest is not None and template == reusable_name(self._spare_digest)

    def _take_spare(self, conn: Connection, slot: str, name: str) -> bool:
        """The spare of ``slot`` renamed to ``name`` and made the run's, in one transaction
        (a run killed half way leaves a spare or a database of its own, never a stray);
        whether there was one to take (another run may have taken it first)."""
        assert self._spare_digest is not None
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(spare_name(self._spare_digest, slot)), sql.Identifier(name)
                    )
                )
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(name), sql.Literal(self._comment())
                    )
                )
        except (psycopg.errors.InvalidCatalogName, psycopg.errors.ObjectInUse):
            return False
        return True

    def _leave_spare(self, conn: Connection) -> None:
        """Start copying the reusable template into a spare for the next run in this slot,
        and return without waiting: the server finishes the copy after ``conn`` is closed (it
        reads the connection only between statements), so nobody waits for it. Its backend
        holds the template's shared lock until then, so the template is not dropped meanwhile.
        A spare already there (another run's) makes the copy fail at once, harmlessly."""
        if self._spare_digest is None or self._spare_slot is None:
            return
        spare = spare_name(self._spare_digest, self._spare_slot)
        statement = _create_statement(conn, spare, reusable_name(self._spare_digest))
        conn.pgconn.send_query(statement.as_bytes(conn))

    def recreate(self, template: str, name: str) -> None:
        """``name`` dropped and copied from ``template`` again."""
        self.drop(name)
        _create(self._admin(), name, template, self._comment())

    def drop(self, name: str) -> None:
        _drop(self._admin(), name)

    def keep_failed(self, template: str, label: str) -> str:
        """A database copied from ``template`` to hold a failed test's data, left after the
        run; its name (``label`` says which test, in a few letters)."""
        # Without the host: the test's name needs the room, and the comment says the host.
        name = re.sub(r"[^a-z0-9_]", "_", f"{FAILED_PREFIX}{self.run_key}_{label}".lower())[:63]
        _drop(self._admin(), name)
        _create(self._admin(), name, template, self._comment("failed test"))
        return name

    def drop_failed_copies(self) -> list[str]:
        """Drop what runs that are over kept of their failed tests; return the names."""
        conn = self._admin()
        dropped = []
        for name, comment in _commented(conn, FAILED_PREFIX):
            match = _RUN_COMMENT.match(comment)
            if not match or match["state"] != "failed test" or match["run"] == self.run_key:
                continue
            with _locked_if_free(conn, self._lock_id(_RUN_LOCK, match.group("run"))) as over:
                if over:  # no process of that run is left
                    _drop(conn, name)
                    dropped.append(name)
        return dropped

    def close(self) -> None:
        """Leave the run; its last process drops its databases (see the class). Idempotent."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("SELECT pg_advisory_unlock_shared(%s)", [self._lock_id(_RUN_LOCK)])
            if not (self.keep or self.server.ephemeral):
                self._drop_run(conn, self.run_key)
            self._leave_spare(conn)
        except psycopg.Error:
            pass  # the server is gone, and what it held with it
        finally:
            conn.close()

    def __enter__(self) -> DatabaseJanitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- other runs' leftovers -------------------------------------------------------------

    def drop_dead_runs(self) -> list[str]:
        """Drop the databases of runs that no process holds any more; return their names."""
        dropped = []
        conn = self._admin()
        for run_key in sorted({run for run, _ in _databases(conn)} - {self.run_key}):
            dropped += self._drop_run(conn, run_key)
        return dropped

    def drop_older_than(self, seconds: float) -> list[str]:
        """Drop the databases of other runs, from any host, made more than ``seconds`` ago by
        the server's clock, whether or not their run looks alive; return their names.

        For a shared server whose runs can die without the server noticing (a host that went
        away holding its connections open). Only databases whose comment says when we made
        them: kept ones and failed tests' copies too, reusable templates only when no run uses
        them; never another's database, nor one made by a version that wrote no time.
        """
        conn = self._admin()
        row = conn.execute("SELECT extract(epoch FROM now())::float8").fetchone()
        cutoff = (float(row[0]) if row else time.time()) - seconds
        dropped = []
        for name, comment in _commented(conn, NAME_PREFIX):
            if not _made_before(name, comment, cutoff, self.run_key):
                continue
            if reusable := _REUSABLE.match(comment):
                if self._drop_unused_template(conn, reusable["key"]):
                    dropped.append(name)
                continue
            _drop(conn, name)
            dropped.append(name)
        return dropped

    def _drop_run(self, conn: Connection, run_key: str) -> list[str]:
        """Drop ``run_key``'s databases if no process of that run is left (nor joins meanwhile)."""
        with _locked_if_free(conn, self._lock_id(_RUN_LOCK, run_key)) as over:
            if not over:
                return []
            names = [name for _, name in _databases(conn, run_key)]
            for name in names:
                _drop(conn, name)
            return names

    # -- plumbing ----------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            conn = admin_connection(self.server)
        except psycopg.Error as exc:
            raise ServerUnavailable(
                f"cannot reach the {self.server.backend} server: {first_line(exc)}"
            ) from None
        row = conn.execute(
            "SELECT rolcreatedb OR rolsuper, extract(epoch FROM now())::float8"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        if row:
            self._clock_offset = float(row[1]) - time.time()
        if not (row and row[0]):
            conn.close()
            raise ServerUnavailable(
                f"role {self.server.user!r} may not create databases: "
                f"the {self.server.backend} backend needs CREATEDB"
            )
        conn.execute("SELECT pg_advisory_lock_shared(%s)", [self._lock_id(_RUN_LOCK)])
        self._conn = conn

    def _admin(self) -> Connection:
        """The admin connection, opened again (with the run's lock) if the server restarted."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._open()
        assert self._conn is not None
        return self._conn

    def _comment(self, state: str | None = None) -> str:
        """The comment of a database made now: the run's, the host's, the time, and ``state``
        (by default "kept" for a run that keeps its databases)."""
        state = state or ("kept" if self.keep else None)
        comment = f"{self._owner} created={self._server_time()}"
        return f"{comment} {state}" if state else comment

    def _server_time(self) -> int:
        return int(time.time() + self._clock_offset)

    def _comment_of(self, name: str) -> str | None:
        """``name``'s comment ("" without one), or None when there is no such database."""
        row = (
            self._admin()
            .execute(
                "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database"
                " WHERE datname = %s",
                [name],
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    def _lock_id(self, namespace: int, run_key: str | None = None) -> int:
        return (namespace << 48) | int(run_key or self.run_key, 16)

    def _key_lock(self, namespace: int, digest: str) -> int:
        return (namespace << 48) | int(digest, 16)
