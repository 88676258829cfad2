"""pytest-pipeweave: fast, isolated PipeWeave databases for tests (the plugin is ``plugin``)."""

from pytest_pipeweave.databases import (
    ServerGone,
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
