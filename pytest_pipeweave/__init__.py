"""pytest-pipeweave: fast, isolated PipeWeave databases for tests (the plugin is ``plugin``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeweave_db.lazy import lazy_exports

if TYPE_CHECKING:
    from pytest_pipeweave.databases import (
        TemplateSetup,
        WorkerDatabase,
        clone_database,
        create_template,
        drop_database,
    )
    from pytest_pipeweave.factories import PipeweaveFactory, code_hash, idempotency_key
    from pytest_pipeweave.seed import SeedData, seed_database
    from pytest_pipeweave.servers import (
        DockerServer,
        ExistingServer,
        LocalServer,
        Server,
        ServerGone,
        ServerInfo,
        ServerUnavailable,
    )

__all__ = [
    "DockerServer",
    "ExistingServer",
    "LocalServer",
    "PipeweaveFactory",
    "SeedData",
    "Server",
    "ServerGone",
    "ServerInfo",
    "ServerUnavailable",
    "TemplateSetup",
    "WorkerDatabase",
    "clone_database",
    "code_hash",
    "create_template",
    "drop_database",
    "idempotency_key",
    "seed_database",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "databases": (
            "TemplateSetup",
            "WorkerDatabase",
            "clone_database",
            "create_template",
            "drop_database",
        ),
        "factories": ("PipeweaveFactory", "code_hash", "idempotency_key"),
        "seed": ("SeedData", "seed_database"),
        "servers": (
            "DockerServer",
            "ExistingServer",
            "LocalServer",
            "Server",
            "ServerGone",
            "ServerInfo",
            "ServerUnavailable",
        ),
    },
)
