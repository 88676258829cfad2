"""Committed mode's reset: only the tables a test wrote to are put back, and always all of
what it changed, whoever wrote it and however (a superuser's reset and another role's)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from pytest_pipeweave import ephemeral_server

pytestmark = pytest.mark.usefixtures("pipeweave_inner_env")

# Reference rows in the template, a parent and its child: a reset of the parent alone must
# keep the child's rows (and the parent's that they point to).
CONFTEST = """
import pytest

@pytest.fixture(scope="session")
def pipeweave_template_setup():
    def setup(db):
        db.none("INSERT INTO services (id, version, base_url) VALUES ('ref', '1', 'u')")
        db.none("INSERT INTO tasks (id, service_id, code_hash) VALUES ('ref-task', 'ref', 'c')")
    return setup
"""

SUITE = """
import psycopg
import pytest

TABLES = ["services", "tasks", "task_code_history", "pipelines", "pipeline_runs",
          "task_runs", "dlq", "idempotency_cache"]
SERVICE = "INSERT INTO services (id, version, base_url) VALUES (%s, '1', 'u')"
# The oid of the test database, test after test: a reset keeps it, a copy made again changes it.
DATABASE = "SELECT oid FROM pg_database WHERE datname = current_database()"
OIDS = []


def template_state(db):
    OIDS.append(db.one(DATABASE)["oid"])
    counts = {t: db.one(f"SELECT count(*) AS n FROM {t}")["n"] for t in TABLES}
    assert counts == dict.fromkeys(TABLES, 0) | {"services": 1, "tasks": 1}
    assert [r["id"] for r in db.any("SELECT id FROM tasks")] == ["ref-task"]
    assert db.one("SELECT count(*) AS n FROM pipeweave_schema_migrations")["n"] == 1
    assert db.one("SELECT count(*) AS n FROM pg_tables WHERE tablename = 'scratch'")["n"] == 0


@pytest.mark.pipeweave(committed=True)
def test_1_writes_the_parent_only(pipeweave_database):
    pipeweave_database.none(SERVICE, ["mine"])
    pipeweave_database.none("UPDATE services SET version = '2' WHERE id = 'ref'")


@pytest.mark.pipeweave(committed=True)
def test_2_back(pipeweave_database):
    template_state(pipeweave_database)
    assert pipeweave_database.one("SELECT version FROM services")["version"] == "1"


@pytest.mark.pipeweave(committed=True)
def test_3_empties_both(pipeweave_database):
    pipeweave_database.none("DELETE FROM tasks")
    pipeweave_database.none("DELETE FROM services")


def test_4_back(pipeweave_database):
    template_state(pipeweave_database)


@pytest.mark.pipeweave(committed=True)
def test_5_writes_from_its_own_connection(pipeweave_database_url, pipeweave_database):
    with psycopg.connect(pipeweave_database_url, autocommit=True) as own:
        own.execute("INSERT INTO pipelines (id, name, entry_tasks, structure)"
                    " VALUES ('p', 'p', '{a}', '{}')")
        own.execute("CREATE TEMP TABLE scratch_temp (id int)")
        own.execute("INSERT INTO scratch_temp VALUES (1)")


@pytest.mark.pipeweave(committed=True)
def test_6_back(pipeweave_database):
    template_state(pipeweave_database)
    assert len(set(OIDS)) == 1, "reset by copying the database again"


@pytest.mark.pipeweave(committed=True)
def test_7_changes_the_schema(pipeweave_database):
    pipeweave_database.none("CREATE TABLE scratch (id int)")
    pipeweave_database.none(SERVICE, ["with-ddl"])


@pytest.mark.pipeweave(committed=True)
def test_8_back(pipeweave_database):
    template_state(pipeweave_database)
    assert OIDS[-1] != OIDS[0], "the schema change was not seen"
"""

SUPERUSER_ONLY = """

@pytest.mark.pipeweave(committed=True)
def test_9_writes_as_a_replica_and_truncates(pipeweave_database_url, pipeweave_database):
    with psycopg.connect(pipeweave_database_url, autocommit=True) as own:  # as bulk loads do
        own.execute("SET session_replication_role = replica")
        own.execute(SERVICE, ["unseen-by-user-triggers"])
    pipeweave_database.none("TRUNCATE task_code_history, task_runs, tasks")


def test_10_back(pipeweave_database):
    template_state(pipeweave_database)
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_each_committed_test_is_followed_by_the_template_state(
    pytester: pytest.Pytester, workers: str
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(SUITE + SUPERUSER_ONLY)
    run(pytester, "-n", workers, "-p", "xdist", "--dist", "loadfile").assert_outcomes(passed=10)


def test_a_role_that_is_not_a_superuser_gets_the_same(pytester: pytest.Pytester) -> None:
    """Without a superuser the reset checks foreign keys and cannot install the event
    triggers: a parent's reset takes its children's rows with it, and the schema is compared
    at every reset. On a server of its own: the run's databases would show on a shared one."""
    role = f"role_{uuid.uuid4().hex[:8]}"
    with ephemeral_server() as server:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {role} LOGIN CREATEDB NOSUPERUSER")
        pytester.makeconftest(CONFTEST)
        pytester.makepyfile(SUITE)
        url = f"postgresql://{role}@127.0.0.1:{server.port}/postgres"
        if server.socket_dir:
            url += f"?host={server.socket_dir}"
        run(pytester, f"--pipeweave-url={url}").assert_outcomes(passed=8)


# What a committed test leaves in its connection's session, and what the next one must not see.
SESSIONS = """
import pytest

LEAVE = ["SET application_name = 'left'", "CREATE TEMP TABLE left_behind (id int)",
         "SELECT pg_try_advisory_lock(77)"]
SEE = ("SELECT current_setting('application_name') AS name, "
       "to_regclass('pg_temp.left_behind') IS NULL AS no_table, "
       "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 77) AS locks")
CLEAN = {"name": "", "no_table": True, "locks": 0}


@pytest.mark.pipeweave(committed=True)
def test_1_leaves(pipeweave_connection):
    for statement in LEAVE:
        pipeweave_connection.execute(statement)
    assert pipeweave_connection.execute(SEE).fetchone()[0] == "left"  # kept for the test


@pytest.mark.pipeweave(committed=True)
def test_2_clean(pipeweave_database):
    for _ in range(4):  # whichever connection of the pool each statement gets
        assert pipeweave_database.one(SEE) == CLEAN


async def test_3_leaves(pipeweave_async_database_committed):
    for statement in LEAVE:
        await pipeweave_async_database_committed.any(statement)


async def test_4_clean(pipeweave_async_database_committed):
    assert await pipeweave_async_database_committed.one(SEE) == CLEAN


async def test_5_rolled_back_on_the_same_connection(pipeweave_async_database):
    assert await pipeweave_async_database.one(SEE) == CLEAN
    # Still told of other connections' commits (the clearing ends a LISTEN).
    listening = await pipeweave_async_database.one("SELECT count(*) AS n FROM pg_listening_channels()")
    assert listening["n"] == 1


@pytest.mark.pipeweave(committed=True)
@pytest.mark.parametrize("n", range(4))
def test_6_statements_psycopg_prepared_still_run(pipeweave_database, n):
    for i in range(6):  # psycopg prepares a statement from its sixth run on
        assert pipeweave_database.one("SELECT %s::int AS i", [i]) == {"i": i}
"""


def test_a_committed_test_leaves_nothing_in_its_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SESSIONS)
    run(pytester, "-p", "asyncio", "--asyncio-mode=auto").assert_outcomes(passed=9)
