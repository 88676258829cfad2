"""The peers' fixtures, set up as their users set them up; ``PWB_PEER`` says which to define.

PipeWeave's own fixtures come from its plugin (pytest11 entry point). The schema is PipeWeave's
in every case, created by ``pipeweave_db.initialize_schema``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from workload import TRUNCATE_ALL

PEER = os.environ.get("PWB_PEER", "")


def load_pipeweave_schema(
    host: str, port: Any, user: str, dbname: str, password: str | None = None, **_: Any
) -> None:
    """A pytest-postgresql loader (``load=[...]``): the PipeWeave schema into its template."""
    from pipeweave_db import create_database, initialize_schema

    options: dict[str, Any] = {"host": host, "port": int(port), "database": dbname, "user": user}
    if password:
        options["password"] = password
    with create_database(**options, max=1) as db:
        initialize_schema(db)


if PEER == "pytest-postgresql":
    from pytest_postgresql import factories

    # Its documented use: a process fixture whose template holds the schema, and a client
    # fixture that clones that template for each test and drops the clone afterwards.
    postgresql_proc = factories.postgresql_proc(load=[load_pipeweave_schema])
    postgresql = factories.postgresql("postgresql_proc")
    postgresql_async = factories.postgresql_async("postgresql_proc")


if PEER == "testcontainers":

    @pytest.fixture(scope="session")
    def tc_url() -> Iterator[str]:
        """A bare testcontainers PostgresContainer with the schema, for the whole session."""
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # testcontainers < 4.15
            from testcontainers.postgres import PostgresContainer

        from pipeweave_db import create_database, initialize_schema

        container = PostgresContainer(os.environ.get("PWB_IMAGE", "postgres:15"), driver=None)
        # Published on loopback only (the default would listen on every interface).
        container.ports["5432"] = ("127.0.0.1",)
        with container:
            url = container.get_connection_url()
            with create_database(connection_string=url, max=1) as db:
                initialize_schema(db)
            yield url

    @pytest.fixture(scope="session")
    def tc_connection(tc_url: str) -> Iterator[Any]:
        import psycopg

        with psycopg.connect(tc_url, autocommit=True) as conn:
            yield conn

    @pytest.fixture
    def tc_database(tc_connection: Any) -> Iterator[Any]:
        """The usual isolation with a bare container: empty every table after each test."""
        yield tc_connection
        tc_connection.execute(TRUNCATE_ALL)
