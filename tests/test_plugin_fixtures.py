"""The fixtures, through real inner test runs (pytester, each in its own process)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("pipeweave_inner_env")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", *args)


def test_rollback_isolates_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def count(db):
            return db.one("SELECT count(*) AS n FROM services")["n"]

        def test_writes(pipeweave_database):
            pipeweave_database.none(
                "INSERT INTO services (id, version, base_url) VALUES ('a', '1', 'u')")
            assert count(pipeweave_database) == 1

        def test_fails_mid_transaction(pipeweave_database):
            pipeweave_database.none(
                "INSERT INTO services (id, version, base_url) VALUES ('b', '1', 'u')")
            with pipeweave_database.tx() as t:
                t.none("INSERT INTO services (id, version, base_url) VALUES ('c', '1', 'u')")
                raise RuntimeError("the test blows up inside a transaction")

        def test_broken_statement_leaves_the_test_usable(pipeweave_database):
            with pytest.raises(Exception):
                pipeweave_database.none("INSERT INTO services (id) VALUES ('no-version')")
            assert count(pipeweave_database) == 0

        def test_nothing_left_behind(pipeweave_database):
            assert count(pipeweave_database) == 0
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        ["*test_fails_mid_transaction FAILED*", "*test_nothing_left_behind PASSED*"]
    )


def test_code_under_test_may_nest_transactions(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def register(db, service_id, task_ids):
            with db.tx() as t:
                t.none("INSERT INTO services (id, version, base_url) VALUES (%s, '1', 'u')",
                       [service_id])
                for task_id in task_ids:
                    with t.tx() as sp:
                        sp.none("INSERT INTO tasks (id, service_id, code_hash) VALUES (%s, %s, 'h')",
                                [task_id, service_id])

        def test_nested(pipeweave_database):
            register(pipeweave_database, "svc", ["t1", "t2"])
            try:
                register(pipeweave_database, "svc", ["t3"])  # duplicate service: rolled back
            except Exception:
                pass
            assert pipeweave_database.one("SELECT count(*) AS n FROM tasks")["n"] == 2

        def test_after(pipeweave_database):
            assert pipeweave_database.one("SELECT count(*) AS n FROM tasks")["n"] == 0
        """
    )
    run(pytester).assert_outcomes(passed=2)


def test_committed_mode_is_seen_by_others_and_reset_after(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import subprocess, sys, threading
        import psycopg

        SCRIPT = (
            "from pipeweave_db import create_database_from_env\\n"
            "with create_database_from_env() as db:\\n"
            "    print(db.one('SELECT count(*) AS n FROM services')['n'])\\n"
        )

        def test_commits(pipeweave_database_committed, pipeweave_database_url, pipeweave_env):
            pipeweave_database_committed.none(
                "INSERT INTO services (id, version, base_url) VALUES ('a', '1', 'u')")
            with psycopg.connect(pipeweave_database_url) as other:
                assert other.execute("SELECT count(*) FROM services").fetchone() == (1,)
            seen = []
            thread = threading.Thread(target=lambda: seen.append(
                pipeweave_database_committed.one("SELECT count(*) AS n FROM services")["n"]))
            thread.start(); thread.join()
            assert seen == [1]
            out = subprocess.run([sys.executable, "-c", SCRIPT], env=pipeweave_env,
                                 capture_output=True, text=True, check=True).stdout
            assert out.strip() == "1"

        def test_back_to_template_state(pipeweave_database_committed):
            assert pipeweave_database_committed.one("SELECT count(*) AS n FROM services")["n"] == 0
            assert pipeweave_database_committed.one(
                "SELECT count(*) AS n FROM pipeweave_schema_migrations")["n"] == 1

        def test_schema_change_is_undone(pipeweave_database_committed):
            pipeweave_database_committed.none("CREATE TABLE scratch (id int)")
            pipeweave_database_committed.none("ALTER TABLE services ADD COLUMN extra int")

        def test_schema_back(pipeweave_database_committed):
            assert pipeweave_database_committed.one_or_none(
                "SELECT 1 AS x FROM pg_tables WHERE tablename = 'scratch'") is None
            assert pipeweave_database_committed.one_or_none(
                "SELECT 1 AS x FROM pg_attribute WHERE attrelid = 'services'::regclass"
                " AND attname = 'extra'") is None

        def test_rollback_mode_still_works(pipeweave_database):
            assert pipeweave_database.one("SELECT count(*) AS n FROM services")["n"] == 0
        """
    )
    run(pytester).assert_outcomes(passed=5)


def test_committed_mode_by_marker(pytester: pytest.Pytester) -> None:
    """As pytest-django's ``django_db(transaction=True)``: per test, class or module."""
    pytester.makepyfile(
        """
        import psycopg
        import pytest

        COUNT = "SELECT count(*) AS n FROM services"

        def seen_by_another_connection(url):
            with psycopg.connect(url) as other:
                return other.execute("SELECT count(*) FROM services").fetchone()[0]

        @pytest.mark.pipeweave(committed=True)
        def test_marked(pipeweave_database, pipeweave_factory, pipeweave_database_url):
            pipeweave_factory.service()
            assert seen_by_another_connection(pipeweave_database_url) == 1

        def test_reset_after(pipeweave_database):
            assert pipeweave_database.one(COUNT)["n"] == 0

        @pytest.mark.pipeweave(committed=True)
        class TestCommittedClass:
            def test_in_class(self, pipeweave_seed, pipeweave_database_url):
                assert seen_by_another_connection(pipeweave_database_url) > 0

        @pytest.mark.pipeweave(committed=False)
        def test_marked_rolled_back(pipeweave_database, pipeweave_factory, pipeweave_database_url):
            pipeweave_factory.service()
            assert pipeweave_database.one(COUNT)["n"] == 1
            assert seen_by_another_connection(pipeweave_database_url) == 0

        @pytest.mark.pipeweave(commited=True)
        def test_misspelled(pipeweave_database):
            pass
        """
    )
    result = run(pytester, "--strict-markers", "-rf")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        ["*pipeweave: @pytest.mark.pipeweave takes committed=True or committed=False, not commited"]
    )


def test_factories_write_where_the_test_reads(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_task_run_creates_what_it_needs(pipeweave_factory, pipeweave_database):
            run = pipeweave_factory.task_run()
            counts = pipeweave_database.one(
                "SELECT (SELECT count(*) FROM services) AS s, (SELECT count(*) FROM tasks) AS t,"
                " (SELECT count(*) FROM pipelines) AS p, (SELECT count(*) FROM pipeline_runs) AS pr,"
                " (SELECT count(*) FROM task_runs) AS tr")
            assert counts == {"s": 1, "t": 1, "p": 1, "pr": 1, "tr": 1}
            assert run["status"] == "pending"

        def test_overrides_and_sharing(pipeweave_factory):
            task = pipeweave_factory.task(retries=7, priority=5)
            a = pipeweave_factory.task_run(task=task, status="completed")
            b = pipeweave_factory.task_run(task=task, status="failed", error="boom")
            assert a["task_id"] == b["task_id"] == task["id"]
            assert a["max_retries"] == 7 and a["completed_at"] is not None and a["output_path"]
            assert b["error"] == "boom"
            assert a["id"] != b["id"]

        def test_task_runs_in_bulk(pipeweave_factory, pipeweave_database):
            # 5,000 rows of 17 columns: more parameters than one statement takes.
            runs = pipeweave_factory.task_runs(5000, status="completed")
            assert len({run["id"] for run in runs}) == 5000
            assert {run["task_id"] for run in runs} == {runs[0]["task_id"]}
            assert runs[0]["completed_at"] is not None and runs[0]["output_path"]
            assert pipeweave_database.one("SELECT count(*) AS n FROM task_runs")["n"] == 5000
            assert pipeweave_database.one("SELECT count(*) AS n FROM tasks")["n"] == 1
            assert pipeweave_factory.task_runs(0) == []

        def test_committed_factory(pipeweave_database_committed, pipeweave_factory):
            pipeweave_factory.dlq_entry()
            pipeweave_factory.cache_entry()
            assert pipeweave_database_committed.one("SELECT count(*) AS n FROM dlq")["n"] == 1

        def test_after_committed(pipeweave_database):
            assert pipeweave_database.one("SELECT count(*) AS n FROM dlq")["n"] == 0
        """
    )
    run(pytester).assert_outcomes(passed=5)


def test_seed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pipeweave_db import cleanup

        STATUSES = {"pending", "running", "completed", "failed", "timeout", "cancelled", "waiting"}

        def test_seed_has_the_standard_dataset(pipeweave_seed, pipeweave_database):
            db = pipeweave_database
            assert set(pipeweave_seed.services) == {"active", "inactive", "disconnected"}
            assert {r["status"] for r in db.many("SELECT status FROM services")} == {
                "active", "inactive", "disconnected"}
            assert {r["status"] for r in db.many("SELECT DISTINCT status FROM task_runs")} == STATUSES
            assert db.one("SELECT count(*) AS n FROM task_code_history WHERE task_id = 'transform'")["n"] == 2
            assert db.one("SELECT code_version FROM tasks WHERE id = 'transform'")["code_version"] == 2
            assert {r["status"] for r in db.many("SELECT status FROM pipeline_runs")} == {
                "completed", "failed", "running"}
            retried = pipeweave_seed.retried_task_runs[0]
            assert retried["attempt"] == 2 and retried["scheduled_for"] is not None
            assert len(retried["previous_attempts"]) == 1
            assert cleanup(db) == pipeweave_seed.expected_cleanup

        def test_seed_is_gone_after(pipeweave_database):
            assert pipeweave_database.one("SELECT count(*) AS n FROM task_runs")["n"] == 0
        """
    )
    run(pytester).assert_outcomes(passed=2)


def test_config_url_and_env_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os
        from pipeweave_db import create_database, create_database_from_env, is_database_initialized

        def test_config(pipeweave_config, pipeweave_database_url, pipeweave_server):
            assert pipeweave_server.backend == "local"
            assert pipeweave_server.version.startswith(("1", "2"))
            with create_database(pipeweave_config) as db:
                assert is_database_initialized(db)
            assert pipeweave_config.params()["dbname"].startswith("pytest_pipeweave_")

        def test_env(pipeweave_env, pipeweave_database_url):
            assert os.environ["DATABASE_URL"] == pipeweave_database_url
            assert not [k for k in os.environ if k.startswith("DB_")]
            with create_database_from_env() as db:
                assert is_database_initialized(db)
        """
    )
    result = run(pytester, "--pipeweave-backend=local")
    result.assert_outcomes(passed=2)
