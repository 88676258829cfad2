"""PipeWeave's PostgreSQL database: configuration, connection, schema and maintenance."""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING

from pipeweave_db.lazy import lazy_exports

if TYPE_CHECKING:
    from pipeweave_db.config import DatabaseConfig, config_from_env, mask_url
    from pipeweave_db.database import (
        Database,
        Row,
        close_database,
        create_database,
        create_database_from_env,
        test_connection,
    )
    from pipeweave_db.errors import (
        ArgumentError,
        ConfigError,
        MigrationError,
        PipeweaveError,
        QueryResultError,
        SchemaError,
    )
    from pipeweave_db.maintenance import (
        CleanupResult,
        cleanup,
        cleanup_expired_cache,
        cleanup_old_dlq,
    )
    from pipeweave_db.schema import (
        PIPEWEAVE_TABLES,
        AppliedMigration,
        InitResult,
        Migration,
        SchemaStatus,
        initialize_schema,
        is_database_initialized,
        load_migrations,
        migrate,
        reset_schema,
        schema_status,
    )

try:
    __version__ = metadata.version("pytest-pipeweave")
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "PIPEWEAVE_TABLES",
    "AppliedMigration",
    "ArgumentError",
    "CleanupResult",
    "ConfigError",
    "Database",
    "DatabaseConfig",
    "InitResult",
    "Migration",
    "MigrationError",
    "PipeweaveError",
    "QueryResultError",
    "Row",
    "SchemaError",
    "SchemaStatus",
    "cleanup",
    "cleanup_expired_cache",
    "cleanup_old_dlq",
    "close_database",
    "config_from_env",
    "create_database",
    "create_database_from_env",
    "initialize_schema",
    "is_database_initialized",
    "load_migrations",
    "mask_url",
    "migrate",
    "reset_schema",
    "schema_status",
    "test_connection",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "config": ("DatabaseConfig", "config_from_env", "mask_url"),
        "database": (
            "Database",
            "Row",
            "close_database",
            "create_database",
            "create_database_from_env",
            "test_connection",
        ),
        "errors": (
            "ArgumentError",
            "ConfigError",
            "MigrationError",
            "PipeweaveError",
            "QueryResultError",
            "SchemaError",
        ),
        "maintenance": ("CleanupResult", "cleanup", "cleanup_expired_cache", "cleanup_old_dlq"),
        "schema": (
            "PIPEWEAVE_TABLES",
            "AppliedMigration",
            "InitResult",
            "Migration",
            "SchemaStatus",
            "initialize_schema",
            "is_database_initialized",
            "load_migrations",
            "migrate",
            "reset_schema",
            "schema_status",
        ),
    },
)
