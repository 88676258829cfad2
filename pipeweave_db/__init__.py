"""PipeWeave's PostgreSQL database: configuration, connection, schema and maintenance."""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING

from pipeweave_db.lazy import lazy_exports

if TYPE_CHECKING:
    from pipeweave_db.async_database import (
        AsyncDatabase,
        close_database_async,
        create_async_database,
        create_async_database_from_env,
        test_connection_async,
    )
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
        cleanup_async,
        cleanup_expired_cache,
        cleanup_expired_cache_async,
        cleanup_old_dlq,
        cleanup_old_dlq_async,
    )
    from pipeweave_db.migration_files import Migration, load_migrations
    from pipeweave_db.observers import ExecutedStatement, StatementObserver
    from pipeweave_db.schema import (
        PIPEWEAVE_TABLES,
        AppliedMigration,
        InitResult,
        SchemaStatus,
        initialize_schema,
        initialize_schema_async,
        is_database_initialized,
        is_database_initialized_async,
        migrate,
        migrate_async,
        reset_schema,
        reset_schema_async,
        schema_status,
        schema_status_async,
    )

try:
    __version__ = metadata.version("pytest-pipeweave")
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "PIPEWEAVE_TABLES",
    "AppliedMigration",
    "ArgumentError",
    "AsyncDatabase",
    "CleanupResult",
    "ConfigError",
    "Database",
    "DatabaseConfig",
    "ExecutedStatement",
    "InitResult",
    "Migration",
    "MigrationError",
    "PipeweaveError",
    "QueryResultError",
    "Row",
    "SchemaError",
    "SchemaStatus",
    "StatementObserver",
    "cleanup",
    "cleanup_async",
    "cleanup_expired_cache",
    "cleanup_expired_cache_async",
    "cleanup_old_dlq",
    "cleanup_old_dlq_async",
    "close_database",
    "close_database_async",
    "config_from_env",
    "create_async_database",
    "create_async_database_from_env",
    "create_database",
    "create_database_from_env",
    "initialize_schema",
    "initialize_schema_async",
    "is_database_initialized",
    "is_database_initialized_async",
    "load_migrations",
    "mask_url",
    "migrate",
    "migrate_async",
    "reset_schema",
    "reset_schema_async",
    "schema_status",
    "schema_status_async",
    "test_connection",
    "test_connection_async",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "async_database": (
            "AsyncDatabase",
            "close_database_async",
            "create_async_database",
            "create_async_database_from_env",
            "test_connection_async",
        ),
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
        "observers": ("ExecutedStatement", "StatementObserver"),
        "maintenance": (
            "CleanupResult",
            "cleanup",
            "cleanup_async",
            "cleanup_expired_cache",
            "cleanup_expired_cache_async",
            "cleanup_old_dlq",
            "cleanup_old_dlq_async",
        ),
        "migration_files": ("Migration", "load_migrations"),
        "schema": (
            "PIPEWEAVE_TABLES",
            "AppliedMigration",
            "InitResult",
            "SchemaStatus",
            "initialize_schema",
            "initialize_schema_async",
            "is_database_initialized",
            "is_database_initialized_async",
            "migrate",
            "migrate_async",
            "reset_schema",
            "reset_schema_async",
            "schema_status",
            "schema_status_async",
        ),
    },
)
