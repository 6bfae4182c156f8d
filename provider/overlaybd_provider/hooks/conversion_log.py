"""The ``overlaybd_conversions`` table: one row per conversion (succeeded, failed, retrying), for the UI page.

It lives beside upstream's ``overlaybd_layers`` / ``overlaybd_manifests`` dedup tables (same
database) and is written by the operators: on success (the record / convert operators) and from
the failure callbacks (:mod:`overlaybd_provider.hooks.conversion_failure`). Rows are keyed by
``run_key`` (DAG, run, conversion task or task group, map index), so a retry or a re-run updates
the row of its conversion instead of adding a duplicate: a failure followed by a successful retry
leaves one succeeded row.

Works on any DB-API connection to MySQL/MariaDB or SQLite. Tables made by an earlier version get
the missing columns (``ALTER TABLE ... ADD COLUMN``) on first write; a database user without the
ALTER privilege keeps working with one warning (rows are then written without the new columns,
and failed conversions are not recorded).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

log = logging.getLogger(__name__)

TABLE = "overlaybd_conversions"

SUCCESS, FAILED, UP_FOR_RETRY, RUNNING = "success", "failed", "up_for_retry", "running"
STATUSES = (SUCCESS, FAILED, UP_FOR_RETRY, RUNNING)

# Columns added after the first release: (MySQL type, SQLite type). Defaults describe old rows
# (only successes were recorded then).
ADDED_COLUMNS: dict[str, tuple[str, str]] = {
    "status": ("varchar(20) NOT NULL DEFAULT 'success'", "TEXT NOT NULL DEFAULT 'success'"),
    "error": ("text", "TEXT"),
    "task_id": ("varchar(250) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT ''"),
    "map_index": ("int NOT NULL DEFAULT -1", "INTEGER NOT NULL DEFAULT -1"),
    "try_number": ("int NOT NULL DEFAULT 0", "INTEGER NOT NULL DEFAULT 0"),
}


def _added(dialect: str) -> str:
    index = 0 if dialect == "mysql" else 1
    quote = "`" if dialect == "mysql" else ""
    return "".join(f"  {quote}{name}{quote} {types[index]},\n" for name, types in ADDED_COLUMNS.items())


_COLUMNS_SQL = {
    "mysql": f"""CREATE TABLE IF NOT EXISTS `{TABLE}` (
  `id` bigint NOT NULL AUTO_INCREMENT,
  `run_key` varchar(512) NOT NULL COMMENT 'dag/run/conversion task/map-index: one row per conversion',
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
{_added("mysql")}  PRIMARY KEY (`id`),
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
  details TEXT,
{_added("sqlite").rstrip().rstrip(",")}
)""",
}


@dataclass(frozen=True)
class ConversionRow:
    """One recorded conversion (sizes in bytes, times in seconds, ``recorded_at`` ISO-8601 UTC).

    ``seconds_saved`` is the recorded build cost of the layers this conversion reused (what
    building them cost when they were built), not an estimate. ``error`` is the one-line error
    of a failed (or retrying) conversion; ``try_number`` the task try that wrote the row.
    """

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
    status: str = SUCCESS
    error: str = ""
    task_id: str = ""
    map_index: int = -1
    try_number: int = 0

    @classmethod
    def column_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def as_record(self) -> dict[str, Any]:
        values = asdict(self)
        values["details"] = json.dumps(self.details, sort_keys=True)
        values["manifest_cached"] = int(self.manifest_cached)
        return values

    def as_params(self) -> list[Any]:
        values = self.as_record()
        return [values[name] for name in self.column_names()]

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ConversionRow:
        values = {name: record[name] for name in cls.column_names() if name in record}
        raw = values.get("details")
        values["details"] = json.loads(raw) if isinstance(raw, str) and raw else (raw or {})
        values["manifest_cached"] = bool(values.get("manifest_cached"))
        for name, default in (("error", ""), ("status", SUCCESS), ("task_id", "")):
            if name in values and values[name] is None:
                values[name] = default
        return cls(**values)

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCESS


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


_warned: set[str] = set()


def warn_once(key: str, message: str, *args: Any) -> None:
    """One warning per process and ``key`` (a degraded schema would otherwise warn on every row)."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


class ConversionLog:
    """Reads and writes ``overlaybd_conversions`` over a caller-owned DB-API connection."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.dialect = dialect_of(conn)
        self._mark = "?" if self.dialect == "sqlite" else "%s"
        self._columns: set[str] | None = None

    # -- schema -------------------------------------------------------------------------------
    def create_table(self) -> None:
        """Create the table, or bring an older one up to date (see :meth:`migrate`). An existing
        table is not re-created: MySQL checks the CREATE privilege even for ``IF NOT EXISTS``."""
        if not self.table_exists():
            self._execute(_COLUMNS_SQL[self.dialect])
            self.conn.commit()
        self._columns = None
        self.migrate()

    def columns(self) -> set[str]:
        """The table's columns (read once per instance)."""
        if self._columns is None:
            if self.dialect == "sqlite":
                rows = self._query(f"PRAGMA table_info({TABLE})")
                self._columns = {str(r["name"]) for r in rows}
            else:
                rows = self._query(
                    "SELECT column_name AS name FROM information_schema.columns "
                    "WHERE table_schema = DATABASE() AND table_name = %s",
                    [TABLE],
                )
                self._columns = {str(r["name"]).lower() for r in rows}
        return self._columns

    def missing_columns(self) -> list[str]:
        present = self.columns()
        return [name for name in ADDED_COLUMNS if name not in present]

    def migrate(self) -> list[str]:
        """Add the columns an older table lacks; returns those still missing afterwards.

        A concurrent writer may add a column first (duplicate-column error: fine). Without the
        ALTER privilege the table stays as it is and one warning says what to run."""
        missing = self.missing_columns()
        index = 0 if self.dialect == "mysql" else 1
        failure = None
        for name in missing:
            quoted = f"`{name}`" if self.dialect == "mysql" else name
            try:
                self._execute(f"ALTER TABLE {TABLE} ADD COLUMN {quoted} {ADDED_COLUMNS[name][index]}")
                self.conn.commit()
            except Exception as exc:
                self._rollback()
                failure = failure or exc
        self._columns = None
        still = self.missing_columns()
        if still:
            statements = "; ".join(
                f"ALTER TABLE {TABLE} ADD COLUMN {n} {ADDED_COLUMNS[n][index]}" for n in still
            )
            warn_once(
                f"migrate:{self.dialect}",
                "%s lacks column(s) %s and they cannot be added (%s): conversions are recorded "
                "without them and failed conversions are not recorded; a database admin can run: %s",
                TABLE,
                ", ".join(still),
                _one_line(failure),
                statements,
            )
        return still

    # -- rows ---------------------------------------------------------------------------------
    def record(self, row: ConversionRow) -> bool:
        """Insert ``row``, or replace the row with the same ``run_key`` (retries never duplicate).

        Returns False (and warns once) when the row cannot be represented: a non-success row on
        a table without the ``status`` column would read back as a success."""
        present = self.columns()
        if row.status != SUCCESS and "status" not in present:
            warn_once(
                f"status:{self.dialect}",
                "%s has no status column: %s conversion of %s not recorded",
                TABLE,
                row.status,
                row.source,
            )
            return False
        values = row.as_record()
        names = [n for n in ConversionRow.column_names() if n in present]
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
        self._execute(sql, [values[n] for n in names])
        self.conn.commit()
        return True

    def recent(
        self, *, limit: int = 200, source: str | None = None, status: str | None = None
    ) -> list[ConversionRow]:
        """Newest first; ``source`` keeps the conversions of one image (as source or target),
        ``status`` those in one state (old tables without the column hold only successes)."""
        present = self.columns()
        cols = ", ".join(n for n in ConversionRow.column_names() if n in present)
        where, params = [], []
        if source:
            where.append(f"(source = {self._mark} OR target = {self._mark})")
            params += [source, source]
        if status and "status" in present:
            where.append(f"status = {self._mark}")
            params.append(status)
        elif status and status != SUCCESS:
            return []
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {cols} FROM {TABLE}{clause} ORDER BY recorded_at DESC, id DESC LIMIT {int(limit)}"
        return [ConversionRow.from_record(r) for r in self._query(sql, params)]

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

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except Exception:
            pass


def _one_line(exc: BaseException | None) -> str:
    if exc is None:
        return "no error reported"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


def create_table_sql(dialect: str) -> str:
    """The DDL, e.g. for the docker-compose MySQL init script test."""
    return _COLUMNS_SQL[dialect]
