"""Hooks: oci_registry connection → RegistryOptions; dedup connection → engine store + conversions log."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException
from overlaybd_provider.hooks.conversion_log import ConversionLog, ConversionRow
from overlaybd_provider.hooks.dedup import OverlaybdDedupHook, mysql_init_sql
from overlaybd_provider.hooks.registry import OciRegistryHook

PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ0VSVA==\n-----END CERTIFICATE-----"


@pytest.fixture
def conn_env() -> Iterator[dict[str, str]]:
    """Set AIRFLOW_CONN_* variables for one test."""
    added: dict[str, str] = {}
    yield added
    for key in added:
        os.environ.pop(key, None)


def _set_conn(env: dict[str, str], conn_id: str, value: dict) -> None:
    key = f"AIRFLOW_CONN_{conn_id.upper()}"
    env[key] = json.dumps(value)
    os.environ[key] = env[key]


def test_registry_hook_maps_fields_and_writes_inline_pem_privately(conn_env, tmp_path, caplog):
    key_path = tmp_path / "client.key"
    key_path.write_text("KEY")
    _set_conn(
        conn_env,
        "reg_tls",
        {
            "conn_type": "oci_registry",
            "host": "registry.example.com",
            "port": 5443,
            "login": "robot",
            "password": "s3cr3t-pa55",
            "extra": {
                "plain_http": "false",
                "insecure": True,
                "ca_cert": PEM,
                "client_cert": PEM,
                "client_key": str(key_path),
                "docker_config": "~/.docker/config.json",
                "max_retries": "0",
                "timeout": 7.5,
            },
        },
    )
    hook = OciRegistryHook(oci_registry_conn_id="reg_tls")
    assert hook.registry == "registry.example.com:5443"
    with caplog.at_level(logging.DEBUG):
        opts = hook.registry_options
    assert (opts.username, opts.password) == ("robot", "s3cr3t-pa55")
    assert opts.plain_http is False and opts.skip_verify is True
    assert opts.ca_file.read_text().strip() == PEM
    assert stat.S_IMODE(opts.ca_file.stat().st_mode) == 0o600
    assert opts.key_file == key_path
    assert opts.docker_config == Path("~/.docker/config.json").expanduser()
    assert (opts.max_retries, opts.timeout) == (0, 7.5)
    assert "s3cr3t-pa55" not in caplog.text and "s3cr3t-pa55" not in repr(opts)
    assert "robot" in hook.describe() and "s3cr3t" not in hook.describe()
    assert hook.registry_options is opts  # cached


def test_registry_hook_rejects_bad_extras(conn_env, tmp_path):
    _set_conn(
        conn_env, "reg_bad_bool", {"conn_type": "oci_registry", "host": "r", "extra": {"plain_http": "maybe"}}
    )
    with pytest.raises(AirflowException, match="plain_http"):
        OciRegistryHook("reg_bad_bool").get_conn()
    _set_conn(
        conn_env, "reg_half_tls", {"conn_type": "oci_registry", "host": "r", "extra": {"client_cert": PEM}}
    )
    with pytest.raises(AirflowException, match="go together"):
        OciRegistryHook("reg_half_tls").get_conn()
    _set_conn(
        conn_env,
        "reg_missing_ca",
        {"conn_type": "oci_registry", "host": "r", "extra": {"ca_cert": str(tmp_path / "nope.pem")}},
    )
    with pytest.raises(AirflowException, match="not found"):
        OciRegistryHook("reg_missing_ca").get_conn()


def test_registry_hook_is_lazy():
    hook = OciRegistryHook(oci_registry_conn_id="does_not_exist")  # no lookup in __init__
    with pytest.raises(AirflowNotFoundException):
        hook.get_conn()


def test_dedup_hook_default_falls_back_to_embedded_sqlite(airflow_home):
    hook = OverlaybdDedupHook()
    kind, where = hook.backend
    assert kind == "sqlite" and Path(where) == airflow_home / "overlaybd" / "dedup.db"
    with pytest.raises(AirflowNotFoundException):
        OverlaybdDedupHook("explicit_but_missing").describe()


def test_dedup_hook_sqlite_connection_creates_all_tables(sqlite_dedup):
    hook = OverlaybdDedupHook("overlaybd_dedup_sqlite")
    assert hook.backend == ("sqlite", str(sqlite_dedup))
    hook.create_tables()
    conn = hook.get_conn()
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        store = hook.open_store(conn)
        store.record_layer("reg", "repo", "sha256:" + "a" * 64, "sha256:" + "b" * 64, 123, "lz4-4k-v64-ext4")
        row = store.find_layer("reg", "repo", "sha256:" + "a" * 64, "lz4-4k-v64-ext4")
    finally:
        conn.close()
    assert {"overlaybd_layers", "overlaybd_manifests", "overlaybd_conversions"} <= tables
    assert row is not None and row.size == 123


def test_dedup_hook_mysql_goes_through_mysqlhook(conn_env, mariadb):
    _set_conn(
        conn_env,
        "dedup_maria",
        {
            "conn_type": "mysql",
            "host": mariadb.host,
            "port": mariadb.port,
            "login": mariadb.user,
            "password": mariadb.password,
            "schema": mariadb.database,
        },
    )
    hook = OverlaybdDedupHook("dedup_maria")
    assert hook.backend == ("mysql", "dedup_maria")
    hook.create_tables()
    conn = hook.get_conn()
    try:
        assert type(conn).__module__.startswith("MySQLdb")  # MySqlHook's default driver
        logbook = hook.conversion_log(conn)
        row = ConversionRow(
            run_key="hooks-test|k1",
            source="hooks-test-source",
            target="t",
            source_digest="sha256:1",
            target_digest="sha256:2",
            recorded_at="2026-01-01T00:00:00+00:00",
        )
        logbook.record(row)
        logbook.record(ConversionRow(**{**vars(row), "layers_built": 3}))  # retry: same key
        rows = logbook.recent(source="hooks-test-source")
        assert len(rows) == 1 and rows[0].layers_built == 3
    finally:
        conn.close()
    tables = {r[0] for r in mariadb.query("SHOW TABLES")}
    assert {"overlaybd_layers", "overlaybd_manifests", "overlaybd_conversions"} <= tables


def test_conversion_log_sqlite_order_and_upsert(tmp_path):
    import sqlite3

    conn = sqlite3.connect(tmp_path / "log.db")
    logbook = ConversionLog(conn)
    logbook.create_table()
    base = dict(source="a", target="t", source_digest="sha256:1", target_digest="sha256:2")
    logbook.record(
        ConversionRow(
            run_key="r1",
            recorded_at="2026-01-01T00:00:00+00:00",
            built_source_bytes=10_000_000,
            built_seconds=2.0,
            **base,
        )
    )
    logbook.record(
        ConversionRow(
            run_key="r2", recorded_at="2026-01-02T00:00:00+00:00", details={"dedup": {"hit": 2}}, **base
        )
    )
    logbook.record(
        ConversionRow(
            run_key="r1",
            recorded_at="2026-01-01T00:00:00+00:00",
            built_source_bytes=10_000_000,
            built_seconds=2.0,
            **base,
        )
    )
    rows = logbook.recent()
    assert [r.run_key for r in rows] == ["r2", "r1"]
    assert rows[0].details == {"dedup": {"hit": 2}}
    assert logbook.recent(source="nope") == []


def test_compose_mysql_init_script_is_the_generated_schema():
    repo = Path(__file__).resolve().parents[2]
    assert (repo / "docker" / "mysql-init" / "01-overlaybd.sql").read_text() == mysql_init_sql()


def test_registry_hook_test_connection_checks_credentials(conn_env, auth_registry):
    base = {"conn_type": "oci_registry", "host": auth_registry.host, "login": auth_registry.username}
    _set_conn(
        conn_env, "reg_good", {**base, "password": auth_registry.password, "extra": {"plain_http": True}}
    )
    _set_conn(conn_env, "reg_wrong", {**base, "password": "wrong-password", "extra": {"plain_http": True}})
    assert OciRegistryHook("reg_good").test_connection() == (True, f"Connected to {auth_registry.host}")
    ok, message = OciRegistryHook("reg_wrong").test_connection()
    assert not ok and "wrong-password" not in message


def test_dedup_hook_finds_metadata_db_connections_outside_tasks(airflow_db, tmp_path):
    """The API server (UI page) is no task: connections defined in the UI must still be found."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        session.add(Connection(conn_id="dedup_in_metadb", conn_type="sqlite", host=str(tmp_path / "ui.db")))
    assert OverlaybdDedupHook("dedup_in_metadb").backend == ("sqlite", str(tmp_path / "ui.db"))
