"""Layer and manifest dedup store (image.md §6) on MySQL/MariaDB or SQLite.

Same tables and keys as upstream's convertor, plus format markers (docs/dedup.md) so a row is
reused only for output produced by this converter with byte-identical layer settings. Every
write is an idempotent ``INSERT IGNORE`` / ``INSERT OR IGNORE``: two conversions racing on the
same row both succeed. Deletes name the digest they found stale, so they never remove a row that
a concurrent conversion has just re-recorded with a different digest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from overlaybd_provider.engine.dedup import sql as q
from overlaybd_provider.errors import OverlaybdError

__all__ = [
    "DedupError",
    "DedupStore",
    "Row",
    "SqlDedupStore",
    "default_sqlite_path",
    "open_dedup",
    "parse_dbstr",
    "sql_store",
]

log = logging.getLogger(__name__)


class DedupError(OverlaybdError):
    """A dedup database that cannot be opened or used."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


# MySQL/MariaDB error numbers that a later attempt may not hit again: server gone or restarting,
# lock wait timeout, deadlock, too many connections. Everything else (access denied, unknown
# table...) needs a human.
_TRANSIENT_MYSQL = frozenset({1040, 1053, 1205, 1213, 2002, 2003, 2006, 2013, 2055})


def _driver_errors(conn: Any) -> tuple[type[BaseException], ...]:
    """The DB-API ``Error`` classes of ``conn``'s driver (PyMySQL, mysqlclient, mysql.connector,
    sqlite3): failures of those become one :class:`DedupError` line."""
    import sys

    errors: list[type[BaseException]] = [sqlite3.Error]
    root = type(conn).__module__.split(".")[0]
    for name in (root, "pymysql", "MySQLdb", "mysql.connector"):
        module = sys.modules.get(name)
        error = getattr(module, "Error", None) if module is not None else None
        if isinstance(error, type) and issubclass(error, BaseException):
            errors.append(error)
    return tuple(dict.fromkeys(errors))


def as_dedup_error(exc: BaseException, where: str) -> DedupError:
    """One line for a driver exception, classified transient or not (MySQL error number)."""
    args = getattr(exc, "args", ())
    code = args[0] if args and isinstance(args[0], int) else getattr(exc, "errno", None)
    text = str(args[1]) if len(args) > 1 and isinstance(args[0], int) else str(exc)
    retryable = code in _TRANSIENT_MYSQL or (isinstance(exc, sqlite3.OperationalError) and "locked" in text)
    number = f" ({code})" if isinstance(code, int) else ""
    return DedupError(f"dedup database {where}: {text}{number}", retryable=retryable)


@dataclass(frozen=True)
class Row:
    """A reusable result: the repository holding it, its digest and size."""

    repo: str
    digest: str
    size: int


class DedupStore(Protocol):
    """What the engine needs from a dedup database (host/repo = the *target* registry/repo)."""

    def create_tables(self) -> None: ...
    def find_layer(self, host: str, repo: str, chain_id: str, format_id: str) -> Row | None: ...
    def find_layer_elsewhere(self, host: str, repo: str, chain_id: str, format_id: str) -> list[Row]: ...
    def record_layer(self, host: str, repo: str, chain_id: str, digest: str, size: int, format_id: str) -> None: ...
    def delete_layer(self, host: str, repo: str, chain_id: str, digest: str) -> None: ...
    def find_manifest(self, host: str, repo: str, src_digest: str, media_type: str, format_id: str) -> Row | None: ...
    def find_manifest_elsewhere(
        self, host: str, repo: str, src_digest: str, media_type: str, format_id: str
    ) -> list[Row]: ...
    def record_manifest(
        self, host: str, repo: str, src_digest: str, media_type: str, digest: str, size: int, format_id: str
    ) -> None: ...
    def delete_manifest(self, host: str, repo: str, src_digest: str, media_type: str, digest: str) -> None: ...
    def record_layer_cost(self, chain_id: str, format_id: str, seconds: float, source_bytes: int) -> None: ...
    def layer_costs(self, chain_ids: list[str], format_id: str) -> dict[str, float]: ...
    def try_lease(self, host: str, chain_id: str, format_id: str, holder: str, ttl: int) -> str: ...
    def release_lease(self, host: str, chain_id: str, format_id: str, holder: str) -> None: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


def _dialect_of(conn: Any) -> q.Dialect:
    return q.SQLITE if isinstance(conn, sqlite3.Connection) else q.MYSQL


class SqlDedupStore:
    """A :class:`DedupStore` over one DB-API connection (PyMySQL, mysqlclient or sqlite3).

    Calls are serialized by a lock (DB-API connections are not thread-safe) and each ends its
    transaction, so a long-lived connection never reads a stale REPEATABLE READ snapshot."""

    def __init__(self, conn: Any, *, dialect: q.Dialect | None = None, owns: bool = True, label: str = "") -> None:
        self.conn = conn
        self.dialect = dialect or _dialect_of(conn)
        self._owns = owns
        self._lock = threading.RLock()
        self._label = label or self.dialect.name

    def describe(self) -> str:
        return self._label

    def _run(self, sql: str, params: tuple = (), *, fetch: bool = False) -> list[tuple]:
        return self._transaction([(sql, params)], fetch=fetch)

    def _transaction(self, statements: list[tuple[str, tuple]], *, fetch: bool = False) -> list[tuple]:
        """Runs the statements in one transaction (committed once, rolled back on any error), so a
        row and its format marker appear together or not at all, even if the process is killed.
        Returns the rows fetched by the last statement when ``fetch``."""
        with self._lock:
            try:
                cur = self.conn.cursor()
                rows: list[tuple] = []
                try:
                    for sql, params in statements:
                        cur.execute(self.dialect.sql(sql) if "?" in sql else sql, params)
                        rows = list(cur.fetchall()) if fetch else []
                except Exception:
                    with contextlib.suppress(Exception):
                        self.conn.rollback()
                    raise
                finally:
                    with contextlib.suppress(Exception):
                        cur.close()
                self.conn.commit()
            except self._errors as exc:
                raise as_dedup_error(exc, self._label) from None
            return rows

    @property
    def _errors(self) -> tuple[type[BaseException], ...]:
        return _driver_errors(self.conn)

    def existing_tables(self) -> set[str]:
        """Tables of the current database (visible to this user)."""
        return {str(r[0]).lower() for r in self._run(self.dialect.list_tables, fetch=True)}

    def create_tables(self) -> None:
        """Create what is missing. Tables that exist are left alone, so a least-privilege user
        (SELECT, INSERT, UPDATE, DELETE; docs/dedup.md) works once the schema was created."""
        have = self.existing_tables()
        for statement in self.dialect.create:
            table = q.table_of(statement)
            if table is not None and table in have:
                continue
            try:
                self._run(statement)
            except DedupError as exc:
                raise DedupError(
                    f"{exc}; while creating the missing table {table or statement.split()[2]}: create the "
                    "schema beforehand (docker/mysql-init/01-overlaybd.sql) or grant CREATE to this user",
                    retryable=exc.retryable,
                ) from None

    # layers ------------------------------------------------------------------

    def find_layer(self, host: str, repo: str, chain_id: str, format_id: str) -> Row | None:
        rows = self._run(q.LAYER_SAME_REPO, (host, repo, chain_id, format_id), fetch=True)
        return Row(rows[0][0], rows[0][1], int(rows[0][2])) if rows else None

    def find_layer_elsewhere(self, host: str, repo: str, chain_id: str, format_id: str) -> list[Row]:
        rows = self._run(q.LAYER_OTHER_REPOS, (host, chain_id, repo, format_id), fetch=True)
        return [Row(r[0], r[1], int(r[2])) for r in rows]

    def record_layer(self, host: str, repo: str, chain_id: str, digest: str, size: int, format_id: str) -> None:
        self._transaction([
            (
                self.dialect.insert("overlaybd_layers", ("host", "repo", "chain_id", "data_digest", "data_size")),
                (host, repo, chain_id, digest, size),
            ),
            (
                self.dialect.insert(
                    "overlaybd_layer_formats", ("host", "repo", "chain_id", "data_digest", "format_id")
                ),
                (host, repo, chain_id, digest, format_id),
            ),
        ])

    def delete_layer(self, host: str, repo: str, chain_id: str, digest: str) -> None:
        self._transaction([
            (q.LAYER_DELETE, (host, repo, chain_id, digest)),
            (q.LAYER_FORMAT_DELETE, (host, repo, chain_id, digest)),
        ])

    # manifests ---------------------------------------------------------------

    def find_manifest(self, host: str, repo: str, src_digest: str, media_type: str, format_id: str) -> Row | None:
        rows = self._run(q.MANIFEST_SAME_REPO, (host, repo, src_digest, media_type, format_id), fetch=True)
        return Row(rows[0][0], rows[0][1], int(rows[0][2])) if rows else None

    def find_manifest_elsewhere(
        self, host: str, repo: str, src_digest: str, media_type: str, format_id: str
    ) -> list[Row]:
        rows = self._run(q.MANIFEST_OTHER_REPOS, (host, src_digest, media_type, repo, format_id), fetch=True)
        return [Row(r[0], r[1], int(r[2])) for r in rows]

    def record_manifest(
        self, host: str, repo: str, src_digest: str, media_type: str, digest: str, size: int, format_id: str
    ) -> None:
        self._transaction([
            (
                self.dialect.insert(
                    "overlaybd_manifests", ("host", "repo", "src_digest", "out_digest", "data_size", "mediatype")
                ),
                (host, repo, src_digest, digest, size, media_type),
            ),
            (
                self.dialect.insert(
                    "overlaybd_manifest_formats",
                    ("host", "repo", "src_digest", "mediatype", "out_digest", "format_id"),
                ),
                (host, repo, src_digest, media_type, digest, format_id),
            ),
        ])

    def delete_manifest(self, host: str, repo: str, src_digest: str, media_type: str, digest: str) -> None:
        self._transaction([
            (q.MANIFEST_DELETE, (host, repo, src_digest, media_type, digest)),
            (q.MANIFEST_FORMAT_DELETE, (host, repo, src_digest, media_type, digest)),
        ])

    # build costs (time saved by a reuse) and leases (one build of a layer at a time) --------

    def record_layer_cost(self, chain_id: str, format_id: str, seconds: float, source_bytes: int) -> None:
        """What building this layer cost; the first recorded build wins (``INSERT IGNORE``)."""
        self._run(self.dialect.insert("overlaybd_layer_costs", ("chain_id", "format_id", "build_seconds",
                                                                "source_bytes")),
                  (chain_id, format_id, float(seconds), int(source_bytes)))

    def layer_costs(self, chain_ids: list[str], format_id: str) -> dict[str, float]:
        """Recorded build seconds of these chain ids (missing ones are absent)."""
        out: dict[str, float] = {}
        unique = sorted(set(chain_ids))
        for start in range(0, len(unique), 200):
            part = unique[start:start + 200]
            sql = q.COST_SELECT.format(marks=", ".join("?" for _ in part))
            for chain_id, seconds in self._run(sql, (format_id, *part), fetch=True):
                out[str(chain_id)] = float(seconds)
        return out

    def try_lease(self, host: str, chain_id: str, format_id: str, holder: str, ttl: int) -> str:
        """Take (or renew) the build lease of a layer; returns the holder after the attempt, which
        is ``holder`` when we have it. An expired lease (its holder died) is taken over."""
        now = int(time.time())
        rows = self._transaction([
            (self.dialect.insert("overlaybd_layer_leases", ("host", "chain_id", "format_id", "holder",
                                                            "expires_at")),
             (host, chain_id, format_id, holder, now + ttl)),
            (q.LEASE_TAKE, (holder, now + ttl, host, chain_id, format_id, holder, now)),
            (q.LEASE_HOLDER, (host, chain_id, format_id)),
        ], fetch=True)
        return str(rows[0][0]) if rows else ""

    def release_lease(self, host: str, chain_id: str, format_id: str, holder: str) -> None:
        self._run(q.LEASE_RELEASE, (host, chain_id, format_id, holder))

    def close(self) -> None:
        if self._owns:
            with self._lock:
                self.conn.close()


def sql_store(conn: Any, *, owns: bool = False) -> SqlDedupStore:
    """Store over a caller's DB-API connection (the Airflow hook passes MySqlHook's)."""
    return SqlDedupStore(conn, owns=owns)


# ------------------------------------------------------------------ opening

# go-sql-driver DSN: [user[:password]@][net[(addr)]]/dbname[?params]
_GO_DSN = re.compile(r"^(?:(?P<user>[^:@]*)(?::(?P<password>.*))?@)?(?:(?P<net>\w+)(?:\((?P<addr>[^)]*)\))?)?/(?P<db>[^?]*)(?:\?(?P<params>.*))?$")


@dataclass(frozen=True)
class MySqlParams:
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = ""
    database: str = ""
    unix_socket: str | None = None

    def describe(self) -> str:
        where = self.unix_socket or f"{self.host}:{self.port}"
        return f"mysql://{self.user}@{where}/{self.database}"


def parse_dbstr(dsn: str) -> MySqlParams:
    """Parse upstream's ``--db-str`` (go-sql-driver form ``user:password@tcp(host:port)/db``)."""
    m = _GO_DSN.match(dsn)
    if m is None or not m.group("db"):
        raise DedupError(f"--dbstr {_redact(dsn)!r}: expected user:password@tcp(host:port)/dbname")
    net, addr = m.group("net") or "tcp", m.group("addr") or ""
    if net == "unix":
        return MySqlParams(user=m.group("user") or "root", password=m.group("password") or "",
                           database=m.group("db"), unix_socket=addr or None)
    if net != "tcp":
        raise DedupError(f"--dbstr: network {net!r} is not supported (tcp or unix)")
    host, _, port = addr.rpartition(":") if ":" in addr else (addr, "", "")
    try:
        port_number = int(port) if port else 3306
    except ValueError:
        raise DedupError(f"--dbstr: port {port!r} is not a number") from None
    return MySqlParams(host=host or "127.0.0.1", port=port_number, user=m.group("user") or "root",
                       password=m.group("password") or "", database=m.group("db"))


def _redact(text: str) -> str:
    return re.sub(r":[^:@/]*@", ":***@", text)


def _connect_mysql(params: MySqlParams) -> Any:
    try:
        import pymysql
    except ImportError:  # pragma: no cover - PyMySQL is a declared dependency of [mysql]
        raise DedupError("MySQL dedup needs PyMySQL: pip install airflow-provider-overlaybd[mysql]") from None
    try:
        return pymysql.connect(
            host=params.host, port=params.port, user=params.user, password=params.password,
            database=params.database, unix_socket=params.unix_socket, charset="utf8mb4", autocommit=False,
        )
    except pymysql.MySQLError as exc:
        error = as_dedup_error(exc, params.describe())
        raise DedupError(f"cannot connect to {error}", retryable=error.retryable) from None


def default_sqlite_path() -> Path:
    """``$OVERLAYBD_DEDUP_DB`` or ``$XDG_DATA_HOME/overlaybd/dedup.db``."""
    env = os.environ.get("OVERLAYBD_DEDUP_DB")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(base) / "overlaybd" / "dedup.db"


def _open_sqlite(path: Path) -> SqlDedupStore:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(str(path), timeout=60, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.isolation_level = ""  # back to implicit transactions, committed per call
    except sqlite3.Error as exc:
        raise DedupError(f"cannot open SQLite dedup database {path}: {exc}") from None
    store = SqlDedupStore(conn, dialect=q.SQLITE, owns=True, label=f"sqlite:///{path}")
    store.create_tables()
    return store


def open_dedup(db_url: str | None = None, *, dbstr: str | None = None, create: bool = True) -> SqlDedupStore:
    """Open the dedup store named by ``--db-url`` (``mysql://user:pw@host:port/db``,
    ``sqlite:///path``) or ``--dbstr`` (go-sql-driver DSN); neither = embedded SQLite default.
    Tables are created when missing (``CREATE TABLE IF NOT EXISTS``)."""
    if db_url and dbstr:
        raise DedupError("give either --db-url or --dbstr, not both")
    if dbstr:
        params = parse_dbstr(dbstr)
        store = SqlDedupStore(_connect_mysql(params), dialect=q.MYSQL, owns=True, label=params.describe())
    elif db_url is None:
        return _open_sqlite(default_sqlite_path())
    else:
        parts = urlsplit(db_url)
        scheme = parts.scheme.lower()
        if scheme == "sqlite":
            # SQLAlchemy convention: sqlite:///relative.db, sqlite:////absolute/path.db
            if not db_url.startswith("sqlite:///") or len(db_url) == len("sqlite:///"):
                raise DedupError(f"--db-url {db_url!r}: expected sqlite:///PATH (sqlite:////abs/path)")
            return _open_sqlite(Path(db_url[len("sqlite:///"):]))
        if scheme in ("mysql", "mariadb", "mysql+pymysql"):
            query = parse_qs(parts.query)
            params = MySqlParams(
                host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                user=unquote(parts.username or "root"), password=unquote(parts.password or ""),
                database=parts.path.lstrip("/"), unix_socket=(query.get("unix_socket") or [None])[0],
            )
            if not params.database:
                raise DedupError(f"--db-url {_redact(db_url)!r}: missing database name")
            store = SqlDedupStore(_connect_mysql(params), dialect=q.MYSQL, owns=True, label=params.describe())
        else:
            raise DedupError(f"--db-url {_redact(db_url)!r}: scheme must be mysql:// or sqlite:///")
    if create:
        store.create_tables()
    return store
