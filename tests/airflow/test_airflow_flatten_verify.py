"""``dag.test()`` of the nightly DAG with ``flatten`` and its verify stage (push → verify → record),
against a real registry and MariaDB.

* ``flatten: true``: the ten-layer image (whiteouts, opaque dirs, hard links across layers,
  xattrs) becomes one layer, verify passes, the record XCom and the overlaybd page row carry the
  layer-count change and the verify result.
* A deliberately wrong image: a poisoned dedup row hands the build another image's top layer;
  verify catches it and fails once (no retry), with the summary line on the page, and record
  never runs.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from overlaybd_provider.engine.dedup import open_dedup
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.engine.plan.chain import chain_ids
from support.flatimage import compress_flags, history, write_ten_layers
from support.imagegen import write_image
from support.obdimages import tar_layout
from support.registry import push_layout
from test_airflow_dag_runs import connect, dags, env_vars, manifest, remove_conversion_rows, xcom  # noqa: F401 - fixtures shared

pytestmark = pytest.mark.timeout(600)

#: this module's source repositories: their conversions rows are removed after each test, so tests
#: of other modules that count the whole table see the session database as they left it
SOURCES = ("src/flat-ten", "src/verify-good", "src/verify-other", "src/convert-flat")


@pytest.fixture(autouse=True)
def _own_rows_removed(mariadb):
    yield
    remove_conversion_rows(mariadb, SOURCES)


def _ti(run, task_id: str):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(TaskInstance).filter_by(run_id=run.run_id, task_id=task_id).one_or_none()


def test_nightly_flatten_converts_and_verifies(dags, registry, mariadb, env_vars, tmp_path: Path) -> None:  # noqa: F811
    connect(env_vars, mariadb, registry.host)
    tars = write_ten_layers(tmp_path / "tars")
    tar_layout(tmp_path / "src", "latest", tars, compress=compress_flags(), config_extra={"history": history()})
    source = registry.ref("src/flat-ten")
    push_layout(tmp_path / "src", source, registry.options())
    dest = registry.ref("obd/flat-ten", "obd")
    setenv_images(env_vars, [{"source": source, "destination": dest}])
    run = dags["overlaybd_nightly"].test(run_conf={
        "src_registry_conn_id": "reg_test", "dst_registry_conn_id": "reg_test", "dedup_conn_id": "dedup_maria",
        "flatten": True,
    })
    assert str(run.state) == "success"
    verified = xcom(run, "convert.verify", 0)["verified"]
    assert verified["identical"] is True and verified["differences"] == 0
    assert verified["summary"].startswith("0 differences: the image matches its source (")
    assert "@sha256:" in verified["destination"]  # the digest push wrote, not the tag
    record = xcom(run, "convert.record", 0)
    assert record["flatten"]["source_layers"] == 10 and record["flatten"]["layers"] == 1
    assert record["layers_total"] == 1 and record["verify"]["identical"] is True
    got = manifest(registry, "obd/flat-ten", "obd")
    assert got.headers["Docker-Content-Digest"] == record["target_digest"]
    assert len(got.json()["layers"]) == 1
    (details,) = mariadb.query("SELECT details FROM overlaybd_conversions WHERE target_digest = %s",
                               (record["target_digest"],))[0]
    details = json.loads(details)
    assert details["verify"] == {"identical": True, "differences": 0, "summary": verified["summary"]}
    assert details["flatten"]["source_layers"] == 10


def setenv_images(env: dict[str, str], images: list[dict]) -> None:
    import os

    env["AIRFLOW_VAR_OVERLAYBD_IMAGES"] = json.dumps(images)
    os.environ["AIRFLOW_VAR_OVERLAYBD_IMAGES"] = env["AIRFLOW_VAR_OVERLAYBD_IMAGES"]


def _config_of(layout: Path) -> dict:
    index = json.loads((layout / "index.json").read_text())
    manifest_doc = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    return json.loads((layout / "blobs" / "sha256" / manifest_doc["config"]["digest"][7:]).read_bytes())


def test_a_wrong_image_fails_the_verify_task_once(dags, registry, mariadb, env_vars, tmp_path: Path) -> None:  # noqa: F811
    connect(env_vars, mariadb, registry.host)
    base = {"etc/os-release": b"NAME=verify\n", "bin/tool": bytes(range(256)) * 64}
    write_image(tmp_path / "good", "latest", [base, {"app/main": b"print('good')\n"}])
    write_image(tmp_path / "other", "latest", [base, {"app/main": b"print('evil')\n"}])
    good, other = registry.ref("src/verify-good"), registry.ref("src/verify-other")
    push_layout(tmp_path / "good", good, registry.options())
    push_layout(tmp_path / "other", other, registry.options())
    dest = registry.ref("obd/verify-wrong", "obd")
    for task in dags["overlaybd_nightly"].tasks:
        task.retry_delay = timedelta(seconds=0)
    conf = {"src_registry_conn_id": "reg_test", "dst_registry_conn_id": "reg_test", "dedup_conn_id": "dedup_maria",
            "flatten": False, "verify": True}  # explicit: dag.test() keeps an earlier run's conf in the params

    # the other image converted into the destination repository: its top layer blob is there
    setenv_images(env_vars, [{"source": other, "destination": dest}])
    first = dags["overlaybd_nightly"].test(run_conf=conf)
    assert str(first.state) == "success"
    other_top = xcom(first, "convert.verify", 0)
    assert other_top["verified"]["identical"] is True
    other_layer = other_top["plan"]["images"][0]["layers"][1]

    # poison: the good image's top chain id recorded as the other image's top layer blob
    diff_ids = _config_of(tmp_path / "good")["rootfs"]["diff_ids"]
    store = open_dedup(mariadb.url)
    try:
        store.record_layer(registry.host, "obd/verify-wrong", chain_ids(diff_ids)[-1], other_layer["digest"],
                           other_layer["size"], ConvertOptions().layer_format_id())
    finally:
        store.close()
    setenv_images(env_vars, [{"source": good, "destination": dest}])
    run = dags["overlaybd_nightly"].test(run_conf=conf)
    assert str(run.state) == "failed"
    verify = _ti(run, "convert.verify")
    assert str(verify.state) == "failed" and verify.try_number == 1  # not retried (retries=2 in the DAG)
    assert _ti(run, "convert.record").state != "success"
    (error,) = mariadb.query("SELECT error FROM overlaybd_conversions WHERE run_key LIKE %s AND status <> 'success'",
                             (f"%{run.run_id}%",))[0]
    assert error.startswith(f"verify {dest}@sha256:")
    assert error.endswith(": 1 difference: 0 mtime, 1 content, 0 size, 0 missing, 0 extra, 0 type, 0 mode, "
                          "0 owner, 0 xattr, 0 symlink, 0 hardlink, 0 device, 0 filesystem")


def test_convert_dag_flatten_and_verify_params(dags, registry, mariadb, env_vars, tmp_path: Path) -> None:  # noqa: F811
    """The one-task DAG: ``flatten`` and ``verify`` (off by default there) reach the operator; the
    XCom summary and the conversions row carry both results."""
    connect(env_vars, mariadb, registry.host)
    base = {"etc/os-release": b"NAME=convert\n", "bin/tool": bytes(range(256)) * 64}
    write_image(tmp_path / "src", "latest", [base, {"app/main": b"print(1)\n"}, {"app/main": b"print(2)\n"}])
    source = registry.ref("src/convert-flat")
    push_layout(tmp_path / "src", source, registry.options())
    run = dags["overlaybd_convert"].test(run_conf={
        "source": source, "destination": registry.ref("obd/convert-flat", "obd"), "src_registry_conn_id": "reg_test",
        "dst_registry_conn_id": "reg_test", "dedup_conn_id": "dedup_maria", "flatten": True, "verify": True,
    })
    assert str(run.state) == "success"
    summary = xcom(run, "convert")
    assert summary["flatten"]["source_layers"] == 3 and summary["flatten"]["layers"] == 1
    assert summary["verify"]["identical"] is True and summary["verify"]["summary"].startswith("0 differences")
    assert len(manifest(registry, "obd/convert-flat", "obd").json()["layers"]) == 1
    (details,) = mariadb.query("SELECT details FROM overlaybd_conversions WHERE target_digest = %s",
                               (summary["target_digest"],))[0]
    assert json.loads(details)["verify"]["identical"] is True
