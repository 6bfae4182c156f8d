"""The ``overlaybd_conversions`` table: one row per converted image, for the UI page.

It lives beside upstream's ``overlaybd_layers`` / ``overlaybd_manifests`` dedup tables (same
database) and is written by the record / convert operators. Rows are keyed by ``run_key`` (DAG,
run, task, map index) so a retried or re-run task updates its row instead of adding a duplicate.
Works on any DB-API connection to MySQL/MariaDB or SQLite.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

TABLE = "overlaybd_conversions"

_COLUMNS_SQL = {
    "mysql": f"""CREATE TABLE IF NOT EXISTS `{TABLE}` (
  `id` bigint NOT NULL AUTO_INCREMENT,
  `run_key` varchar(512) NOT NULL COMMENT 'dag/run/task/map-index: one row per conversion task',
  `source` varchar(512) NOT NULL,
  `target` varchar(512) NOT NULL,
  `source_digest` varchar(255) NOT NULL,
  `target_digest` varchar(255) NOT NULL,
  `platforms` varchar(512) NOT NULL DEFAULT '',
  `layers_total` int NOT NULL DEFAULT 0,
  `layers_reused` int NOT NULL DEFAULT 0,
  `layers_built` int NOT NULL DEFAULT 0,
  `source_bytes` bigint NOT NULL DEFAULT 0,
  `target_bytes` bigint NOT NULL DEFAULT 0,
  `reused_bytes` bigint NOT NULL DEFAULT 0,
  `built_source_bytes` bigint NOT NULL DEFAULT 0,
  `built_seconds` double NOT NULL DEFAULT 0,
  `seconds` double NOT NULL DEFAULT 0,
  `seconds_saved` double NOT NULL DEFAULT 0,
  `manifest_cached` tinyint NOT NULL DEFAULT 0,
  `dag_id` varchar(250) NOT NULL DEFAULT '',
  `run_id` varchar(250) NOT NULL DEFAULT '',
  `recorded_at` varchar(40) NOT NULL,
  `details` text,
  PRIMARY KEY (`id`),
  UNIQUE KEY `uq_overlaybd_conversions_run_key` (`run_key`(255)),
  KEY `ix_overlaybd_conversions_source` (`source`(255), `recorded_at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    "sqlite": f"""CREATE TABLE IF NOT EXISTS {TABLE} (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  run_key TEXT NOT NULL UNIQUE,
  source TEXT NOT NULL,
  target TEXT NOT NULL,
  source_digest TEXT NOT NULL,
  target_digest TEXT NOT NULL,
  platforms TEXT NOT NULL DEFAULT '',
  layers_total INTEGER NOT NULL DEFAULT 0,
  layers_reused INTEGER NOT NULL DEFAULT 0,
  layers_built INTEGER NOT NULL DEFAULT 0,
  source_bytes INTEGER NOT NULL DEFAULT 0,
  target_bytes INTEGER NOT NULL DEFAULT 0,
  reused_bytes INTEGER NOT NULL DEFAULT 0,
  built_source_bytes INTEGER NOT NULL DEFAULT 0,
  built_seconds REAL NOT NULL DEFAULT 0,
  seconds REAL NOT NULL DEFAULT 0,
  seconds_saved REAL NOT NULL DEFAULT 0,
  manifest_cached INTEGER NOT NULL DEFAULT 0,
  dag_id TEXT NOT NULL DEFAULT '',
  run_id TEXT NOT NULL DEFAULT '',
  recorded_at TEXT NOT NULL,
  details TEXT
)""",
}


@dataclass(frozen=True)
class ConversionRow:
    """One recorded conversion (sizes in bytes, times in seconds, ``recorded_at`` ISO-8601 UTC)."""

    run_key: str
    source: str
    target: str
    source_digest: str
    target_digest: str
    recorded_at: str
    platforms: str = ""
    layers_total: int = 0
    layers_reused: int = 0
    layers_built: int = 0
    source_bytes: int = 0
    target_bytes: int = 0
    reused_bytes: int = 0
    built_source_bytes: int = 0
    built_seconds: float = 0.0
    seconds: float = 0.0
    seconds_saved: float = 0.0
    manifest_cached: bool = False
    dag_id: str = ""
    run_id: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def column_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def as_params(self) -> list[Any]:
        values = asdict(self)
        values["details"] = json.dumps(self.details, sort_keys=True)
        values["manifest_cached"] = int(self.manifest_cached)
        return [values[name] for name in self.column_names()]

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ConversionRow:
        values = {name: record[name] for name in cls.column_names() if name in record}
        raw = values.get("details")
        values["details"] = json.loads(raw) if isinstance(raw, str) and raw else (raw or {})
        values["manifest_cached"] = bool(values.get("manifest_cached"))
        return cls(**values)


def dialect_of(conn: Any) -> str:
    """``"sqlite"`` or ``"mysql"`` for a DB-API connection (mysqlclient, mysql.connector, PyMySQL)."""
    if isinstance(conn, sqlite3.Connection):
        return "sqlite"
    module = type(conn).__module__.split(".")[0].lower()
    if module in {"mysqldb", "mysql", "pymysql", "_mysql"} or "mysql" in module:
        return "mysql"
    raise TypeError(
        f"unsupported DB-API connection for {TABLE}: {type(conn).__module__}.{type(conn).__name__}"
    )


class ConversionLog:
    """Reads and writes ``overlaybd_conversions`` over a caller-owned DB-API connection."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.dialect = dialect_of(conn)
        self._mark = "?" if self.dialect == "sqlite" else "%s"

    def create_table(self) -> None:
        self._execute(_COLUMNS_SQL[self.dialect])
        self.conn.commit()

    def record(self, row: ConversionRow) -> None:
        """Insert ``row``, or replace the row with the same ``run_key`` (retries never duplicate)."""
        names = ConversionRow.column_names()
        marks = ", ".join([self._mark] * len(names))
        updates = [n for n in names if n != "run_key"]
        if self.dialect == "mysql":
            cols = ", ".join(f"`{n}`" for n in names)
            tail = ", ".join(f"`{n}` = VALUES(`{n}`)" for n in updates)
            sql = f"INSERT INTO `{TABLE}` ({cols}) VALUES ({marks}) ON DUPLICATE KEY UPDATE {tail}"
        else:
            cols = ", ".join(names)
            tail = ", ".join(f"{n} = excluded.{n}" for n in updates)
            sql = f"INSERT INTO {TABLE} ({cols}) VALUES ({marks}) ON CONFLICT(run_key) DO UPDATE SET {tail}"
        self._execute(sql, row.as_params())
        self.conn.commit()

    def recent(self, *, limit: int = 200, source: str | None = None) -> list[ConversionRow]:
        """Newest first; ``source`` filters one image."""
        cols = ", ".join(ConversionRow.column_names())
        where, params = "", []
        if source:
            where, params = f" WHERE source = {self._mark}", [source]
        sql = f"SELECT {cols} FROM {TABLE}{where} ORDER BY recorded_at DESC, id DESC LIMIT {int(limit)}"
        return [ConversionRow.from_record(r) for r in self._query(sql, params)]

    def build_rate(self, *, last: int = 50) -> float | None:
        """Source bytes per second of recent builds (to estimate time saved by reuse), or None."""
        sql = (
            f"SELECT built_source_bytes, built_seconds FROM {TABLE} WHERE built_seconds > 0 "
            f"ORDER BY recorded_at DESC, id DESC LIMIT {int(last)}"
        )
        rows = self._query(sql)
        nbytes = sum(int(r["built_source_bytes"]) for r in rows)
        seconds = sum(float(r["built_seconds"]) for r in rows)
        return nbytes / seconds if seconds > 0 and nbytes > 0 else None

    def count(self) -> int:
        rows = self._query(f"SELECT COUNT(*) AS n FROM {TABLE}")
        return int(rows[0]["n"]) if rows else 0

    def table_exists(self) -> bool:
        if self.dialect == "sqlite":
            rows = self._query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", [TABLE])
        else:
            rows = self._query(
                "SELECT table_name AS name FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name = %s",
                [TABLE],
            )
        return bool(rows)

    # -- DB-API plumbing ----------------------------------------------------------------------
    def _execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        cur = self.conn.cursor()
        try:
            cur.execute(sql, tuple(params or ()))
        finally:
            cur.close()

    def _query(self, sql: str, params: Iterable[Any] | None = None) -> list[dict[str, Any]]:
        cur = self.conn.cursor()
        try:
            cur.execute(sql, tuple(params or ()))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        finally:
            cur.close()


def create_table_sql(dialect: str) -> str:
    """The DDL, e.g. for the docker-compose MySQL init script test."""
    return _COLUMNS_SQL[dialect]
