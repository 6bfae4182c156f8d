"""TurboOCI in Airflow: the ``format`` / ``turbo_destination`` params of both DAGs and the
operators (validated at parse time), a ``dag.test()`` run of the convert DAG with
``format=turbo-oci`` and a nightly run with ``format=both`` through the four stages, on a real
registry and MariaDB; the XCom summary and the page rows show the format and the bytes saved."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from support.registry import push_layout
from test_airflow_dag_runs import connect, dags, env_vars, manifest, remove_conversion_rows, setenv, xcom  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from turbo.imagesrc import OCI_GZIP, OCI_TAR, feature_tars, write_layout

pytestmark = pytest.mark.timeout(600)
TURBO_VERSION = "0.1.0-turbo.ociv1"
#: this module's source repositories: their conversions rows are removed after each test, so tests
#: of other modules that count the whole table see the session database as they left it
SOURCES = ("src/turbo-app", "src/turbo-night")


@pytest.fixture(autouse=True)
def _own_rows_removed(mariadb):
    yield
    remove_conversion_rows(mariadb, SOURCES)


def push_source(tmp_path: Path, registry, repo: str) -> str:
    layout = tmp_path / f"layout-{repo.replace('/', '_')}"
    write_layout(layout, "v1", feature_tars(), [OCI_GZIP, OCI_GZIP, OCI_TAR])
    push_layout(layout, registry.ref(repo, "v1"), registry.options())
    return registry.ref(repo, "v1")


def test_operators_refuse_bad_format_options_at_parse_time():
    from overlaybd_provider.operators import OverlaybdConvertOperator, OverlaybdPullOperator

    with pytest.raises(ValueError, match="turbo_destination"):
        OverlaybdConvertOperator(task_id="c", source="a/b:c", destination="a/d:e", format="both")
    with pytest.raises(ValueError, match="fstype erofs with format=turbo-oci is not supported yet"):
        OverlaybdPullOperator(task_id="p", source="a/b:c", destination="a/d:e", format="turbo-oci", fstype="erofs")
    with pytest.raises(ValueError, match="format"):
        OverlaybdPullOperator(task_id="p", source="a/b:c", destination="a/d:e", format="estargz")
    with pytest.raises(ValueError, match="flatten cannot be combined with format=turbo-oci"):
        OverlaybdConvertOperator(task_id="c", source="a/b:c", destination="a/d:e", format="turbo-oci", flatten=True)
    op = OverlaybdPullOperator(task_id="p", source="a/b:c", destination="a/d:e", format="both",
                               turbo_destination="a/t:e")
    assert op.convert_options().output == "both"
    assert "format" in op.template_fields and "turbo_destination" in op.template_fields


def test_convert_dag_with_format_turbo_oci(dags, registry, mariadb, env_vars, tmp_path):  # noqa: F811
    source = push_source(tmp_path, registry, "src/turbo-app")
    connect(env_vars, mariadb, registry.host)
    run = dags["overlaybd_convert"].test(run_conf={
        "source": source, "destination": registry.ref("obd/turbo-app", "turbo"), "format": "turbo-oci",
        "src_registry_conn_id": "reg_test", "dst_registry_conn_id": "reg_test", "dedup_conn_id": "dedup_maria",
    })
    assert str(run.state) == "success"
    summary = xcom(run, "convert")
    assert summary["format"] == "turbo-oci" and summary["layers_built"] == 3
    assert 0 < summary["meta_bytes"] < summary["source_bytes"]
    assert summary["bytes_saved"] == summary["source_bytes"] - summary["meta_bytes"]
    got = manifest(registry, "obd/turbo-app", "turbo")
    assert got.status_code == 200 and got.headers["Docker-Content-Digest"] == summary["target_digest"]
    layers = got.json()["layers"]
    assert all(layer["annotations"]["containerd.io/snapshot/overlaybd/version"] == TURBO_VERSION for layer in layers)
    (details,) = mariadb.query("SELECT details FROM overlaybd_conversions WHERE target_digest = %s",
                               (summary["target_digest"],))[0:1]
    details = json.loads(details[0])
    assert details["format"] == "turbo-oci" and details["bytes_saved"] == summary["bytes_saved"]

    from overlaybd_plugin.summary import row_json
    from overlaybd_provider.hooks.conversion_log import ConversionRow

    row = ConversionRow(run_key="k", source=source, target="t", source_digest="", target_digest="",
                        recorded_at="2026-01-01T00:00:00Z", details=details)
    page = row_json(row)
    assert page["format"] == "turbo-oci" and page["bytes_saved"] == summary["bytes_saved"]


def test_nightly_with_format_both_through_the_stages(dags, registry, mariadb, env_vars, tmp_path):  # noqa: F811
    source = push_source(tmp_path, registry, "src/turbo-night")
    connect(env_vars, mariadb, registry.host)
    setenv(env_vars, "AIRFLOW_VAR_OVERLAYBD_IMAGES", json.dumps([{
        "source": source, "destination": registry.ref("obd/night-native", "obd"),
        "turbo_destination": registry.ref("obd/night-turbo", "obd")}]))
    run = dags["overlaybd_nightly"].test(run_conf={
        "format": "both", "src_registry_conn_id": "reg_test", "dst_registry_conn_id": "reg_test",
        "dedup_conn_id": "dedup_maria"})
    assert str(run.state) == "success"
    record = xcom(run, "convert.record", 0)
    assert record["format"] == "both"
    assert record["turbo"]["target"] == registry.ref("obd/night-turbo", "obd")
    assert record["turbo"]["bytes_saved"] > 0
    turbo = manifest(registry, "obd/night-turbo", "obd")
    native = manifest(registry, "obd/night-native", "obd")
    assert turbo.status_code == 200 and native.status_code == 200
    assert turbo.headers["Docker-Content-Digest"] == record["turbo"]["target_digest"]
    assert "turbo-oci/target-digest" in json.dumps(turbo.json())
    assert "turbo-oci" not in json.dumps(native.json())
