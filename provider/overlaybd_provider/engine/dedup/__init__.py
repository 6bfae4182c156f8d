"""The dedup database (docs/dedup.md): upstream's tables plus our format markers, on MySQL/MariaDB
or SQLite. ``store`` holds the store and how to open it, ``sql`` the statements per dialect."""

from overlaybd_provider.engine.dedup.store import (
    DedupError,
    DedupStore,
    MySqlParams,
    Row,
    SqlDedupStore,
    as_dedup_error,
    default_sqlite_path,
    open_dedup,
    parse_dbstr,
    sql_store,
)

__all__ = [
    "DedupError",
    "DedupStore",
    "MySqlParams",
    "Row",
    "SqlDedupStore",
    "as_dedup_error",
    "default_sqlite_path",
    "open_dedup",
    "parse_dbstr",
    "sql_store",
]
