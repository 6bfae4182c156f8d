"""Test-support plugin: a real MariaDB/MySQL database per test session.

The server is the one at ``$OVERLAYBD_TEST_MYSQL`` (default ``mysql://root@127.0.0.1:3306``).
A database ``obd_test_<random>`` is created for the session and dropped at its end; tests that
want empty tables use ``mariadb_clean``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

DEFAULT_SERVER = "mysql://root@127.0.0.1:3306"


@dataclass(frozen=True)
class MariaDB:
    host: str
    port: int
    user: str
    password: str
    database: str

    @property
    def url(self) -> str:
        auth = f"{self.user}:{self.password}" if self.password else self.user
        return f"mysql://{auth}@{self.host}:{self.port}/{self.database}"

    @property
    def dbstr(self) -> str:
        """Upstream's go-sql-driver form, as ``--dbstr`` takes it."""
        return f"{self.user}:{self.password}@tcp({self.host}:{self.port})/{self.database}"

    def connect(self, database: str | None = None):
        import pymysql

        return pymysql.connect(
            host=self.host, port=self.port, user=self.user, password=self.password,
            database=self.database if database is None else (database or None), autocommit=True,
        )

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """A fresh database on the test server, dropped when the session ends."""
    import pymysql

    url = urlsplit(os.environ.get("OVERLAYBD_TEST_MYSQL", DEFAULT_SERVER))
    db = MariaDB(
        host=url.hostname or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
        password=url.password or "", database=f"obd_test_{secrets.token_hex(4)}",
    )
    try:
        admin = db.connect(database="")
    except pymysql.MySQLError as exc:
        pytest.fail(f"MariaDB not reachable at {db.host}:{db.port} ({exc}): scripts/bootstrap.sh sets it up")
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{db.database}` DEFAULT CHARACTER SET utf8mb4")
        yield db
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{db.database}`")
        admin.close()


@pytest.fixture
def mariadb_clean(mariadb: MariaDB) -> MariaDB:
    """The session database with every table emptied (the schema is kept)."""
    conn = mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            for (table,) in cur.fetchall():
                cur.execute(f"DELETE FROM `{table}`")
    finally:
        conn.close()
    return mariadb
