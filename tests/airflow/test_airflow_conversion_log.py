"""The conversions log: failure rows from task callbacks, and the schema migration of old tables.

Real databases only: SQLite files and the MariaDB server of tests/support/mariadb.py (a private
database per test, and a least-privilege user without ALTER for the degraded path).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from overlaybd_provider.hooks import conversion_log
from overlaybd_provider.hooks.conversion_failure import (
    conversion_run_key,
    failure_row,
    one_line,
    record_failure,
)
from overlaybd_provider.hooks.conversion_log import ADDED_COLUMNS, ConversionLog, ConversionRow
from overlaybd_provider.hooks.dedup import OverlaybdDedupHook
from overlaybd_provider.operators.summary import conversion_row

# The table as the first release created it (before status, error, task_id, map_index, try_number).
OLD_SQLITE = """CREATE TABLE overlaybd_conversions (
  id INTEGER PRIMARY KEY AUTOINCREMENT, run_key TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
  target TEXT NOT NULL, source_digest TEXT NOT NULL, target_digest TEXT NOT NULL,
  platforms TEXT NOT NULL DEFAULT '', layers_total INTEGER NOT NULL DEFAULT 0,
  layers_reused INTEGER NOT NULL DEFAULT 0, layers_built INTEGER NOT NULL DEFAULT 0,
  source_bytes INTEGER NOT NULL DEFAULT 0, target_bytes INTEGER NOT NULL DEFAULT 0,
  reused_bytes INTEGER NOT NULL DEFAULT 0, built_source_bytes INTEGER NOT NULL DEFAULT 0,
  built_seconds REAL NOT NULL DEFAULT 0, seconds REAL NOT NULL DEFAULT 0,
  seconds_saved REAL NOT NULL DEFAULT 0, manifest_cached INTEGER NOT NULL DEFAULT 0,
  dag_id TEXT NOT NULL DEFAULT '', run_id TEXT NOT NULL DEFAULT '', recorded_at TEXT NOT NULL,
  details TEXT)"""
OLD_MYSQL = """CREATE TABLE `overlaybd_conversions` (
  `id` bigint NOT NULL AUTO_INCREMENT, `run_key` varchar(512) NOT NULL, `source` varchar(512) NOT NULL,
  `target` varchar(512) NOT NULL, `source_digest` varchar(255) NOT NULL,
  `target_digest` varchar(255) NOT NULL, `platforms` varchar(512) NOT NULL DEFAULT '',
  `layers_total` int NOT NULL DEFAULT 0, `layers_reused` int NOT NULL DEFAULT 0,
  `layers_built` int NOT NULL DEFAULT 0, `source_bytes` bigint NOT NULL DEFAULT 0,
  `target_bytes` bigint NOT NULL DEFAULT 0, `reused_bytes` bigint NOT NULL DEFAULT 0,
  `built_source_bytes` bigint NOT NULL DEFAULT 0, `built_seconds` double NOT NULL DEFAULT 0,
  `seconds` double NOT NULL DEFAULT 0, `seconds_saved` double NOT NULL DEFAULT 0,
  `manifest_cached` tinyint NOT NULL DEFAULT 0, `dag_id` varchar(250) NOT NULL DEFAULT '',
  `run_id` varchar(250) NOT NULL DEFAULT '', `recorded_at` varchar(40) NOT NULL, `details` text,
  PRIMARY KEY (`id`), UNIQUE KEY `uq_overlaybd_conversions_run_key` (`run_key`(255))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
OLD_ROW = (
    "INSERT INTO overlaybd_conversions (run_key, source, target, source_digest, target_digest, "
    "layers_total, layers_built, dag_id, run_id, recorded_at, details) VALUES "
    "('overlaybd_convert|manual__1|convert|-1', 'r/app:1', 'r/obd:1', 'sha256:1', 'sha256:2', 2, 2, "
    "'overlaybd_convert', 'manual__1', '2026-01-01T00:00:00+00:00', '{}')"
)


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    """``warn_once`` remembers per process: every test starts with none said."""
    monkeypatch.setattr(conversion_log, "_warned", set())


def _context(*, task_id="convert", map_index=-1, try_number=1, group=None, **task_attrs):
    ti = SimpleNamespace(
        dag_id="overlaybd_convert",
        run_id="manual__2026-12-01T10:00:00+00:00",
        task_id=task_id,
        map_index=map_index,
        try_number=try_number,
    )
    task = SimpleNamespace(task_id=task_id, task_group=SimpleNamespace(group_id=group), **task_attrs)
    return {"ti": ti, "task": task, "params": {"source": "from/params:1", "destination": "to/params:1"}}


def _sqlite_hook(tmp_path: Path) -> OverlaybdDedupHook:
    return OverlaybdDedupHook(sqlite_path=str(tmp_path / "dedup.db"))


def _rows(hook: OverlaybdDedupHook, **kwargs) -> list[ConversionRow]:
    conn = hook.get_conn()
    try:
        return ConversionLog(conn).recent(**kwargs)
    finally:
        conn.close()


def _success(context, target="reg/obd/app:1"):
    summary = {
        "source": "reg/library/app:1",
        "target": target,
        "source_digest": "sha256:s",
        "target_digest": "sha256:t",
        "layers_total": 2,
        "layers_reused": 1,
        "layers_built": 1,
        "seconds_saved": 0.8,
    }
    from overlaybd_provider.hooks.conversion_failure import task_fields

    return conversion_row(
        summary,
        run_key=conversion_run_key(context, "x"),
        recorded_at="2026-12-01T10:05:00+00:00",
        seconds=4.0,
        **task_fields(context),
    )


# -- failure rows --------------------------------------------------------------------------------
def test_failure_is_recorded_then_replaced_by_the_successful_retry(tmp_path):
    hook = _sqlite_hook(tmp_path)
    context = _context(source="reg/library/app:1", destination="reg/obd/app:1", try_number=1)
    error = RuntimeError("pull reg/library/app:1: 503 Service Unavailable\nTraceback (most recent call last):")
    assert record_failure(hook, context, error, status="up_for_retry")
    context["ti"].try_number = 2
    assert record_failure(hook, context, error)
    [row] = _rows(hook)
    assert (row.status, row.error) == ("failed", "pull reg/library/app:1: 503 Service Unavailable")
    assert (row.source, row.target, row.source_digest) == ("reg/library/app:1", "reg/obd/app:1", "")
    assert (row.dag_id, row.task_id, row.map_index, row.try_number) == ("overlaybd_convert", "convert", -1, 2)
    assert row.run_id == "manual__2026-12-01T10:00:00+00:00" and row.recorded_at.endswith("+00:00")
    assert row.run_key == "overlaybd_convert|manual__2026-12-01T10:00:00+00:00|convert|-1"
    assert _rows(hook, status="failed") == [row] and _rows(hook, status="success") == []

    context["ti"].try_number = 3
    conn = hook.get_conn()
    try:
        assert ConversionLog(conn).record(_success(context))  # what log_conversion writes
    finally:
        conn.close()
    [row] = _rows(hook)
    assert (row.status, row.error, row.try_number, row.seconds_saved) == ("success", "", 3, 0.8)


def test_stage_tasks_of_a_mapped_group_share_the_row_of_their_image():
    """A failed build stage and the record stage of the same image write the same row."""
    staging = {"staging": "/s", "image": "reg/library/redis:7"}
    build = _context(task_id="convert.build", map_index=2, group="convert", staging=staging)
    record = _context(task_id="convert.record", map_index=2, group="convert", staging=staging)
    assert conversion_run_key(build, "x") == conversion_run_key(record, "y")
    assert conversion_run_key(build, "x").endswith("|convert|2")
    row = failure_row(build, ValueError("bad layer"))
    assert (row.source, row.task_id, row.map_index) == ("reg/library/redis:7", "convert.build", 2)
    # unrendered templates are not image names: the run's params are used instead
    raw = _context(source="{{ params.source }}", destination="{{ params.destination }}")
    assert (failure_row(raw, "x").source, failure_row(raw, "x").target) == ("from/params:1", "to/params:1")
    assert conversion_run_key({}, "fallback") == "manual|fallback"


def test_error_line_is_one_trimmed_line():
    assert one_line("\n\n  first   line \n second") == "first line"
    assert one_line(KeyError()) == "KeyError"
    assert one_line("x" * 5000) == "x" * 999 + "…"


def test_record_failure_never_raises_and_warns_once(tmp_path, caplog):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    hook = OverlaybdDedupHook(sqlite_path=str(blocked / "dedup.db"))  # cannot be created
    with caplog.at_level(logging.WARNING):
        assert record_failure(hook, _context(source="a", destination="b"), "boom") is False
        assert record_failure(hook, {}, None) is False  # no task instance at all
        assert record_failure(_sqlite_hook(tmp_path), _context(), "x", status="exploded") is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, [r.getMessage() for r in warnings]
    assert all("could not record the" in r.getMessage() for r in warnings)
    assert "status must be one of" in warnings[2].getMessage()


def test_record_failure_takes_a_connection_id_or_a_dbapi_connection(tmp_path, monkeypatch):
    path = tmp_path / "by-id.db"
    monkeypatch.setenv("AIRFLOW_CONN_DEDUP_BY_ID", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    assert record_failure("dedup_by_id", _context(source="a", destination="b"), "e1")
    conn = sqlite3.connect(tmp_path / "raw.db")
    try:
        assert record_failure(conn, _context(source="a", destination="b"), "e2")
        assert ConversionLog(conn).recent()[0].error == "e2"  # the caller's connection stays open
    finally:
        conn.close()
    assert _rows(OverlaybdDedupHook(sqlite_path=str(path)))[0].error == "e1"


# -- MySQL / MariaDB -----------------------------------------------------------------------------
@pytest.fixture
def mysql_db(mariadb) -> Iterator[dict]:
    """A private database and a least-privilege user (SELECT, INSERT, UPDATE: no CREATE, no ALTER)."""
    name = f"obd_page_{secrets.token_hex(4)}"
    user, password = f"obd_ro_{secrets.token_hex(3)}", secrets.token_hex(8)
    admin = mariadb.connect(database="")
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` DEFAULT CHARACTER SET utf8mb4")
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
        cur.execute(f"GRANT SELECT, INSERT, UPDATE ON `{name}`.* TO '{user}'@'%'")
    try:
        yield {"server": mariadb, "database": name, "user": user, "password": password}
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        admin.close()


def _mysql_hook(monkeypatch, db: dict, conn_id: str, *, limited: bool) -> OverlaybdDedupHook:
    server = db["server"]
    login = (db["user"], db["password"]) if limited else (server.user, server.password)
    spec = {
        "conn_type": "mysql",
        "host": server.host,
        "port": server.port,
        "login": login[0],
        "password": login[1],
        "schema": db["database"],
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(spec))
    return OverlaybdDedupHook(conn_id)


def test_mysql_failure_row_and_successful_rerun(monkeypatch, mysql_db):
    hook = _mysql_hook(monkeypatch, mysql_db, "dedup_page_admin", limited=False)
    context = _context(task_id="convert.pull", map_index=0, group="convert", source="m/app:1", destination="m/obd:1")
    assert record_failure(hook, context, "pull m/app:1: manifest unknown")
    [row] = _rows(hook)
    assert (row.status, row.error, row.task_id, row.map_index) == (
        "failed",
        "pull m/app:1: manifest unknown",
        "convert.pull",
        0,
    )
    conn = hook.get_conn()
    try:
        assert type(conn).__module__.startswith("MySQLdb")  # the connection's own driver, via MySqlHook
        assert ConversionLog(conn).record(_success(context, target="m/obd:1"))
    finally:
        conn.close()
    [row] = _rows(hook, source="m/obd:1")  # the image filter matches the target too
    assert row.status == "success" and row.error == ""


def test_mysql_old_table_is_migrated_and_least_privilege_users_degrade(monkeypatch, mysql_db, caplog):
    server, name = mysql_db["server"], mysql_db["database"]
    admin = server.connect(database=name)
    with admin.cursor() as cur:
        cur.execute(OLD_MYSQL)
        cur.execute(OLD_ROW)
    limited = _mysql_hook(monkeypatch, mysql_db, "dedup_page_limited", limited=True)

    # No ALTER: one warning saying what to run; successes still recorded, failures skipped.
    with caplog.at_level(logging.WARNING):
        conn = limited.get_conn()
        try:
            logbook = limited.conversion_log(conn, create=True)
            assert set(logbook.missing_columns()) == set(ADDED_COLUMNS)
            assert logbook.record(_success(_context(), target="r/obd:2"))
            assert limited.conversion_log(conn, create=True).missing_columns()  # no second warning
        finally:
            conn.close()
        assert record_failure(limited, _context(source="r/app:3", destination="r/obd:3"), "boom") is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "cannot be added" in warnings[0] and "ALTER TABLE overlaybd_conversions ADD COLUMN" in warnings[0]
    assert "no status column" in warnings[1]
    rows = _rows(limited)
    assert [r.status for r in rows] == ["success", "success"] and rows[1].task_id == ""

    # An admin (or the next writer with ALTER) migrates; old rows read as succeeded.
    owner = _mysql_hook(monkeypatch, mysql_db, "dedup_page_owner", limited=False)
    conn = owner.get_conn()
    try:
        assert owner.conversion_log(conn, create=True).missing_columns() == []
    finally:
        conn.close()
    assert record_failure(limited, _context(source="r/app:3", destination="r/obd:3"), "boom")
    statuses = {r.source: (r.status, r.error, r.map_index) for r in _rows(limited)}
    assert statuses["r/app:1"] == ("success", "", -1)
    assert statuses["r/app:3"] == ("failed", "boom", -1)
    with admin.cursor() as cur:
        cur.execute("SHOW COLUMNS FROM overlaybd_conversions LIKE 'status'")
        assert "success" in str(cur.fetchone())  # the default that describes old rows
    admin.close()


# -- SQLite migration ----------------------------------------------------------------------------
def test_sqlite_old_table_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(OLD_SQLITE)
    conn.execute(OLD_ROW)
    conn.commit()
    logbook = ConversionLog(conn)
    assert set(logbook.missing_columns()) == set(ADDED_COLUMNS)
    assert [r.status for r in logbook.recent()] == ["success"]  # readable before migrating
    assert logbook.recent(status="failed") == []
    logbook.create_table()
    assert logbook.missing_columns() == []
    assert ConversionLog(conn).migrate() == []  # idempotent
    [old] = logbook.recent()
    assert (old.status, old.error, old.task_id, old.map_index, old.try_number) == ("success", "", "", -1, 0)
    conn.close()
    hook = OverlaybdDedupHook(sqlite_path=str(path))
    assert record_failure(hook, _context(source="r/app:9", destination="r/obd:9"), "boom")
    assert {r.status for r in _rows(hook)} == {"success", "failed"}


def test_sqlite_read_only_database_degrades_with_one_warning(tmp_path, caplog):
    """The SQLite stand-in for a user without ALTER: a database opened read-only."""
    path = tmp_path / "ro.db"
    conn = sqlite3.connect(path)
    conn.execute(OLD_SQLITE)
    conn.execute(OLD_ROW)
    conn.commit()
    conn.close()
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        with caplog.at_level(logging.WARNING):
            assert ConversionLog(ro).migrate() == list(ADDED_COLUMNS)
            assert ConversionLog(ro).migrate() == list(ADDED_COLUMNS)
        [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "readonly" in warning.lower() and "status" in warning
        assert [r.source for r in ConversionLog(ro).recent()] == ["r/app:1"]
    finally:
        ro.close()
    assert os.path.getsize(path) > 0


def test_ready_made_callbacks_find_the_dedup_connection_and_the_exception(tmp_path, monkeypatch):
    from overlaybd_provider.hooks.conversion_failure import on_conversion_failure, on_conversion_retry

    path = tmp_path / "callbacks.db"
    monkeypatch.setenv("AIRFLOW_CONN_DEDUP_CB", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    # the record stage has a (rendered) dedup_conn_id field; a build stage only has the run's params
    record = _context(task_id="convert.record", map_index=0, group="convert", dedup_conn_id="dedup_cb",
                      staging={"image": "reg/app:1"})
    build = _context(task_id="convert.build", map_index=1, group="convert", staging={"image": "reg/db:2"})
    build["params"]["dedup_conn_id"] = "dedup_cb"
    on_conversion_retry({**record, "exception": RuntimeError("push reg/obd/app:1: 503")})
    on_conversion_failure({**build, "exception": ValueError("layer 2/3: tar header checksum mismatch")})
    rows = {r.source: r for r in _rows(OverlaybdDedupHook(sqlite_path=str(path)))}
    assert (rows["reg/app:1"].status, rows["reg/app:1"].error) == ("up_for_retry", "push reg/obd/app:1: 503")
    assert (rows["reg/db:2"].status, rows["reg/db:2"].map_index) == ("failed", 1)
    assert rows["reg/db:2"].error == "layer 2/3: tar header checksum mismatch"


def test_docs_list_the_upgrade_statements_for_row_access_users():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "dedup.md").read_text()
    for name, (mysql_type, _) in ADDED_COLUMNS.items():
        assert f"ALTER TABLE overlaybd_conversions ADD COLUMN {name} {mysql_type};" in docs
