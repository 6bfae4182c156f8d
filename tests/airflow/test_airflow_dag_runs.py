"""`dag.test()` runs of both DAGs against a real registry and a real MariaDB dedup database.

* overlaybd_convert: one image, registry → registry, dedup + conversions row in MariaDB.
* overlaybd_nightly: a mapped run over three images sharing their base layer (after the first
  image was converted alone): dedup hits in the record XComs; a rerun is served by the manifest
  cache; a push that fails mid-way (registry fault) succeeds on the Airflow retry without
  duplicate rows.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from support.registry import push_layout

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import demo_image  # noqa: E402

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def env_vars() -> Iterator[dict[str, str]]:
    added: dict[str, str] = {}
    yield added
    for key in added:
        os.environ.pop(key, None)


def setenv(env: dict[str, str], key: str, value: str) -> None:
    env[key] = value
    os.environ[key] = value


@pytest.fixture(scope="module")
def dags(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(REPO / "dags"))
    assert not bag.import_errors
    return bag.dags


def connect(env, mariadb, registry_host: str, *, name: str = "reg_test", **extra) -> None:
    setenv(
        env,
        f"AIRFLOW_CONN_{name.upper()}",
        json.dumps(
            {"conn_type": "oci_registry", "host": registry_host, "extra": {"plain_http": True, **extra}}
        ),
    )
    setenv(
        env,
        "AIRFLOW_CONN_DEDUP_MARIA",
        json.dumps(
            {
                "conn_type": "mysql",
                "host": mariadb.host,
                "port": mariadb.port,
                "login": mariadb.user,
                "password": mariadb.password,
                "schema": mariadb.database,
            }
        ),
    )


def push_demo(tmp_path: Path, registry, repo: str, name: str, base: str | None = None) -> str:
    """Push a two-layer image; images with the same ``base`` share their bottom layer."""
    layout = tmp_path / f"layout-{name}"
    demo_image.make_image(layout, "latest", demo_image.demo_layers(name, base=base or name))
    push_layout(layout, registry.ref(repo), registry.options())
    return registry.ref(repo)


def xcom(run, task_id: str, map_index: int = -1):
    """The ``return_value`` XCom of one task instance of ``run``."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        entry = session.scalars(
            XComModel.get_many(
                run_id=run.run_id,
                key="return_value",
                dag_ids=run.dag_id,
                task_ids=task_id,
                map_indexes=map_index,
            )
        ).first()
        assert entry is not None, f"no XCom for {task_id}[{map_index}]"
        return XComModel.deserialize_value(entry)


def manifest(registry, repo: str, ref: str = "latest") -> requests.Response:
    accept = ", ".join(
        [
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ]
    )
    return requests.get(f"{registry.url}/v2/{repo}/manifests/{ref}", headers={"Accept": accept}, timeout=10)


def test_convert_dag_registry_to_registry_with_mariadb_dedup(dags, registry, mariadb, env_vars, tmp_path):
    source = push_demo(tmp_path, registry, "src/convert-app", "convert-app")
    connect(env_vars, mariadb, registry.host)
    dag = dags["overlaybd_convert"]
    run = dag.test(
        run_conf={
            "source": source,
            "destination": registry.ref("obd/convert-app", "obd"),
            "src_registry_conn_id": "reg_test",
            "dst_registry_conn_id": "reg_test",
            "dedup_conn_id": "dedup_maria",
        }
    )
    assert str(run.state) == "success"
    summary = xcom(run, "convert")
    assert summary["layers_built"] == 2 and summary["layers_reused"] == 0
    got = manifest(registry, "obd/convert-app", "obd")
    assert got.status_code == 200 and got.headers["Docker-Content-Digest"] == summary["target_digest"]
    rows = mariadb.query("SELECT source, target_digest, layers_built, dag_id FROM overlaybd_conversions")
    assert rows == [(source, summary["target_digest"], 2, "overlaybd_convert")]
    assert mariadb.query("SELECT COUNT(*) FROM overlaybd_layers")[0][0] >= 2


def _nightly(dags, images: list[dict], env_vars):
    setenv(env_vars, "AIRFLOW_VAR_OVERLAYBD_IMAGES", json.dumps(images))
    dag = dags["overlaybd_nightly"]
    started = time.monotonic()
    run = dag.test(
        run_conf={
            "src_registry_conn_id": "reg_test",
            "dst_registry_conn_id": "reg_test",
            "dedup_conn_id": "dedup_maria",
        }
    )
    return run, time.monotonic() - started


def test_nightly_mapped_over_images_sharing_layers(dags, registry, mariadb, env_vars, tmp_path):
    connect(env_vars, mariadb, registry.host)
    images = [
        {
            "source": push_demo(tmp_path, registry, f"src/night-{n}", f"night-{n}", base="nightly"),
            "destination": registry.ref(f"obd/night-{n}", "obd"),
            "platforms": [],
        }
        for n in ("a", "b", "c")
    ]
    first, _ = _nightly(dags, images[:1], env_vars)
    assert str(first.state) == "success"
    assert xcom(first, "convert.record", 0)["layers_built"] == 2

    run, _ = _nightly(dags, images, env_vars)
    assert str(run.state) == "success"
    records = [xcom(run, "convert.record", i) for i in range(3)]
    assert [r["source"] for r in records] == [i["source"] for i in images]
    assert records[0]["dedup"] == {"cache": 2} and records[0]["manifests_cached"] == 1
    for rec in records[1:]:  # the shared base layer is mounted from night-a's repository
        assert rec["dedup"] == {"miss": 1, "mount": 1}, rec
        assert rec["layers_reused"] == 1 and rec["reused_bytes"] > 0
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        labels = {
            ti.rendered_map_index
            for ti in session.query(TaskInstance).filter_by(run_id=run.run_id, task_id="convert.record")
        }
    assert labels == {i["source"] for i in images}

    rerun, seconds = _nightly(dags, images, env_vars)
    assert str(rerun.state) == "success"
    assert all(xcom(rerun, "convert.record", i)["dedup"] == {"cache": 2} for i in range(3))
    assert seconds < 60
    counts = mariadb.query(
        "SELECT COUNT(*), COUNT(DISTINCT run_key) FROM overlaybd_conversions WHERE source LIKE %s",
        (f"{registry.host}/src/night-%",),
    )
    assert counts == [(7, 7)]


def test_push_fails_midway_and_succeeds_on_airflow_retry(
    dags, registry, fault_proxy, mariadb, env_vars, tmp_path
):
    source = push_demo(tmp_path, registry, "src/retry-app", "retry-app")
    connect(env_vars, mariadb, fault_proxy.host, max_retries=0)
    connect(env_vars, mariadb, registry.host, name="reg_direct")
    dest = f"{fault_proxy.host}/obd/retry-app:obd"
    # the first manifest PUT fails (after the layer blobs went up); the retry must finish the push
    fault = fault_proxy.inject("status", 1, method="PUT", path=r"/manifests/", status=500)
    dag = dags["overlaybd_nightly"]
    for task in dag.tasks:
        task.retry_delay = timedelta(seconds=0)
    setenv(env_vars, "AIRFLOW_VAR_OVERLAYBD_IMAGES", json.dumps([{"source": source, "destination": dest}]))
    run = dag.test(
        run_conf={
            "src_registry_conn_id": "reg_direct",
            "dst_registry_conn_id": "reg_test",
            "dedup_conn_id": "dedup_maria",
        }
    )
    assert fault.fired == 1
    assert str(run.state) == "success"
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        push = session.query(TaskInstance).filter_by(run_id=run.run_id, task_id="convert.push").one()
        assert push.try_number == 2 and str(push.state) == "success"
    record = xcom(run, "convert.record", 0)
    tags = requests.get(f"{registry.url}/v2/obd/retry-app/tags/list", timeout=10).json()["tags"]
    assert tags == ["obd"]
    assert (
        manifest(registry, "obd/retry-app", "obd").headers["Docker-Content-Digest"] == record["target_digest"]
    )
    assert mariadb.query(
        "SELECT COUNT(*) FROM overlaybd_conversions WHERE target_digest = %s", (record["target_digest"],)
    ) == [(1,)]
    layer_rows = mariadb.query(
        "SELECT chain_id, COUNT(*) FROM overlaybd_layers WHERE repo = 'obd/retry-app' GROUP BY chain_id"
    )
    assert len(layer_rows) == 2 and all(n == 1 for _, n in layer_rows)


def remove_conversion_rows(mariadb, repos) -> None:
    """Drop the conversions rows of these source repositories, so tests of other modules that
    count the whole table see the session database as they left it."""
    import pymysql

    for repo in repos:
        try:
            mariadb.query("DELETE FROM overlaybd_conversions WHERE source LIKE %s", (f"%/{repo}:%",))
        except pymysql.err.ProgrammingError:  # no table yet: the test failed before any row
            return
