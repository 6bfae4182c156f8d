"""Dedup database connection → the engine's SQL dedup store and the conversions log.

MySQL/MariaDB goes through ``MySqlHook`` (so the connection's driver, TLS and charset settings
apply); the engine only receives the DB-API connection. When the default connection id does not
exist, an embedded SQLite file is used, so a fresh install converts without any database set up.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

from overlaybd_provider.hooks.conversion_log import ConversionLog

log = logging.getLogger(__name__)

DEFAULT_DEDUP_CONN_ID = "overlaybd_dedup"


def _airflow_conf(key: str, fallback: str | None) -> str | None:
    try:
        from airflow.sdk.configuration import conf

        value = conf.get("overlaybd", key, fallback=fallback)
    except Exception:
        value = fallback
    return value or fallback


def default_sqlite_path() -> Path:
    """``[overlaybd] sqlite_path`` or ``$AIRFLOW_HOME/overlaybd/dedup.db``."""
    configured = _airflow_conf("sqlite_path", None)
    if configured:
        return Path(configured).expanduser()
    home = os.environ.get("AIRFLOW_HOME") or str(Path("~/airflow").expanduser())
    return Path(home) / "overlaybd" / "dedup.db"


class OverlaybdDedupHook(BaseHook):
    """The dedup database: a ``mysql`` connection, a ``sqlite`` connection (host = file path), or the
    embedded SQLite default when ``dedup_conn_id`` is the default id and that connection is absent.
    """

    conn_name_attr = "dedup_conn_id"
    default_conn_name = DEFAULT_DEDUP_CONN_ID
    hook_name = "overlaybd dedup database"

    def __init__(self, dedup_conn_id: str | None = None, *, sqlite_path: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.dedup_conn_id = dedup_conn_id or _airflow_conf("dedup_conn_id", DEFAULT_DEDUP_CONN_ID)
        self._explicit = dedup_conn_id is not None and dedup_conn_id != DEFAULT_DEDUP_CONN_ID
        self._sqlite_path = sqlite_path

    def _lookup(self, conn_id: str):
        """The connection, from the Task SDK (tasks) or, in server processes such as the API server
        that serves the UI page, from Airflow's secrets backends including the metadata DB."""
        try:
            return self.get_connection(conn_id)
        except AirflowNotFoundException:
            try:
                from airflow.models.connection import Connection as ServerConnection

                return ServerConnection.get_connection_from_secrets(conn_id)
            except Exception:
                raise AirflowNotFoundException(f"The conn_id `{conn_id}` isn't defined") from None

    @cached_property
    def connection(self):
        """The Airflow connection, or None for the embedded SQLite default."""
        if self._sqlite_path:
            return None
        try:
            return self._lookup(self.dedup_conn_id)
        except AirflowNotFoundException:
            if self._explicit:
                raise
            return None

    @cached_property
    def backend(self) -> tuple[str, str]:
        """``("mysql", conn_id)`` or ``("sqlite", path)``; resolved once, without opening anything."""
        if self._sqlite_path:
            return "sqlite", str(Path(self._sqlite_path).expanduser())
        conn = self.connection
        if conn is None:
            path = default_sqlite_path()
            log.info("dedup connection %r not defined: using embedded SQLite %s", self.dedup_conn_id, path)
            return "sqlite", str(path)
        kind = (conn.conn_type or "").lower()
        if kind in {"mysql", "mariadb"}:
            return "mysql", self.dedup_conn_id
        if kind == "sqlite":
            path = conn.host or conn.schema
            if not path:
                raise AirflowException(f"sqlite connection {self.dedup_conn_id!r} needs the file path in host")
            return "sqlite", str(Path(path).expanduser())
        raise AirflowException(
            f"dedup connection {self.dedup_conn_id!r} has type {conn.conn_type!r}: use mysql or sqlite"
        )

    def describe(self) -> str:
        kind, where = self.backend
        return f"{kind}:{where}"

    def get_conn(self) -> Any:
        """A new DB-API connection (caller closes it)."""
        kind, where = self.backend
        if kind == "mysql":
            from airflow.providers.mysql.hooks.mysql import MySqlHook

            return MySqlHook(mysql_conn_id=where, connection=self.connection).get_conn()
        Path(where).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(where, timeout=60, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def open_store(self, conn: Any | None = None, *, create: bool = False):
        """The engine's SQL dedup store over ``conn`` (a new connection when None)."""
        from overlaybd_provider.engine.dedup import SqlDedupStore

        owns = conn is None
        conn = conn if conn is not None else self.get_conn()
        store = SqlDedupStore(conn, owns=owns, label=self.describe())
        if create:
            store.create_tables()
        return store

    def conversion_log(self, conn: Any | None = None, *, create: bool = False) -> ConversionLog:
        conn = conn if conn is not None else self.get_conn()
        logbook = ConversionLog(conn)
        if create:
            logbook.create_table()
        return logbook

    def create_tables(self) -> None:
        """Create upstream's dedup tables and ``overlaybd_conversions`` if missing."""
        conn = self.get_conn()
        try:
            self.open_store(conn, create=True)
            self.conversion_log(conn, create=True)
        finally:
            conn.close()


def mysql_init_sql() -> str:
    """Every table of the dedup database as one MySQL script (docker/mysql-init/01-overlaybd.sql)."""
    from overlaybd_provider.engine.dedup.sql import MYSQL
    from overlaybd_provider.hooks.conversion_log import create_table_sql

    statements = [*MYSQL.create, create_table_sql("mysql")]
    header = (
        "-- Dedup database of airflow-provider-overlaybd, run once by the mysql image against\n"
        "-- MYSQL_DATABASE. overlaybd_layers / overlaybd_manifests are upstream's convertor tables\n"
        "-- (shared with `ctr obdconv --db-str`); *_formats mark rows this converter may reuse;\n"
        "-- overlaybd_conversions is the log the Airflow UI page reads.\n"
        "-- Generated by overlaybd_provider.hooks.dedup.mysql_init_sql(); a test keeps it in sync.\n"
    )
    return header + "".join(f"\n{s.strip()};\n" for s in statements)
