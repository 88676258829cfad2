"""pytest-pipeweave: fast, isolated PipeWeave databases for tests (the plugin is ``plugin``).

Outside pytest, ``ephemeral_server()`` and ``ephemeral_database()`` give the same servers and
databases to a script, a notebook or a unittest suite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeweave_db.lazy import lazy_exports

if TYPE_CHECKING:
    from pytest_pipeweave.databases import (
        DatabaseJanitor,
        Template,
        TemplateSetup,
        clone_database,
        create_template,
        drop_database,
    )
    from pytest_pipeweave.ephemeral import ephemeral_database, ephemeral_server
    from pytest_pipeweave.errors import (
        BinariesNotFound,
        PluginError,
        RestoreFailed,
        ServerGone,
        ServerUnavailable,
        SharedDataOpen,
    )
    from pytest_pipeweave.factories import (
        AsyncPipeweaveFactory,
        PipeweaveFactory,
        code_hash,
        idempotency_key,
    )
    from pytest_pipeweave.isolation import WorkerDatabase
    from pytest_pipeweave.runs import new_run_key
    from pytest_pipeweave.seed import SeedData, seed_database, seed_database_async
    from pytest_pipeweave.servers import (
        DockerServer,
        ExistingServer,
        LocalServer,
        PreparedDatabase,
        Server,
        ServerInfo,
    )
    from pytest_pipeweave.settings import Settings

__all__ = [
    "AsyncPipeweaveFactory",
    "BinariesNotFound",
    "DatabaseJanitor",
    "DockerServer",
    "ExistingServer",
    "LocalServer",
    "PipeweaveFactory",
    "PluginError",
    "PreparedDatabase",
    "RestoreFailed",
    "SeedData",
    "Server",
    "ServerGone",
    "ServerInfo",
    "ServerUnavailable",
    "Settings",
    "SharedDataOpen",
    "Template",
    "TemplateSetup",
    "WorkerDatabase",
    "clone_database",
    "code_hash",
    "create_template",
    "drop_database",
    "ephemeral_database",
    "ephemeral_server",
    "idempotency_key",
    "new_run_key",
    "seed_database",
    "seed_database_async",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "databases": (
            "DatabaseJanitor",
            "Template",
            "TemplateSetup",
            "clone_database",
            "create_template",
            "drop_database",
        ),
        "ephemeral": ("ephemeral_database", "ephemeral_server"),
        "errors": (
            "BinariesNotFound",
            "PluginError",
            "RestoreFailed",
            "ServerGone",
            "ServerUnavailable",
            "SharedDataOpen",
        ),
        "factories": ("AsyncPipeweaveFactory", "PipeweaveFactory", "code_hash", "idempotency_key"),
        "isolation": ("WorkerDatabase",),
        "runs": ("new_run_key",),
        "seed": ("SeedData", "seed_database", "seed_database_async"),
        "servers": (
            "DockerServer",
            "ExistingServer",
            "LocalServer",
            "PreparedDatabase",
            "Server",
            "ServerInfo",
        ),
        "settings": ("Settings",),
    },
)
