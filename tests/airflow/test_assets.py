"""Converted images as assets: the ``oci://`` scheme registered with Airflow (normalizer), the
outlet the converting operators declare, and the asset events ``dag.test()`` runs record in the
metadata DB (convert DAG and the mapped push stage of the nightly DAG), with their extras."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from support.registry import push_layout

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import demo_image  # noqa: E402

pytestmark = pytest.mark.timeout(600)


def test_the_oci_scheme_is_normalized_by_airflow():
    from airflow.sdk import Asset

    assert Asset("oci://Registry.Example.com:5000/team/app:v1").uri == "oci://registry.example.com:5000/team/app:v1"
    assert Asset("oci://index.docker.io/alpine:3.20").uri == "oci://docker.io/library/alpine:3.20"
    assert Asset("oci://r.example/team/app").uri == "oci://r.example/team/app"  # a repository (watchers)
    for bad in ("oci://r.example/Team/app:v1", "oci://r.example/", "oci://r.example/a:v1?x=1", "oci://bad host/a"):
        with pytest.raises(ValueError):
            Asset(bad)


def test_operators_declare_the_alias_once():
    from airflow.sdk import Asset
    from overlaybd_provider.operators import OverlaybdConvertOperator, OverlaybdPushOperator
    from overlaybd_provider.operators.assets import CONVERTED_ALIAS, converted_alias

    mine = Asset("oci://r.example/obd/app:1")
    op = OverlaybdConvertOperator(task_id="c", source="a", destination="b", outlets=[mine])
    assert op.outlets == [mine, converted_alias()]
    again = OverlaybdPushOperator(task_id="p", staging="x", outlets=[converted_alias()])
    assert [o.name for o in again.outlets] == [CONVERTED_ALIAS]


@pytest.fixture
def dags(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(REPO / "dags"))
    assert not bag.import_errors
    return bag.dags


@pytest.fixture
def reg_env(registry, sqlite_dedup, tmp_path):
    key = "AIRFLOW_CONN_REG_ASSETS"
    os.environ[key] = json.dumps({"conn_type": "oci_registry", "host": registry.host, "extra": {"plain_http": True}})
    yield
    os.environ.pop(key, None)
    os.environ.pop("AIRFLOW_VAR_OVERLAYBD_IMAGES", None)


def source_image(registry, repo: str, tmp_path: Path) -> str:
    layout = tmp_path / f"layout-{repo.replace('/', '-')}"
    demo_image.make_image(layout, "v1", demo_image.demo_layers(repo.replace("/", "-"), base="assets"))
    return push_layout(layout, registry.ref(repo, "v1"), registry.options()).descriptor.digest


def asset_events(run) -> list[dict]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.query(AssetEvent).filter_by(source_dag_id=run.dag_id, source_run_id=run.run_id).all()
        return [{"uri": e.asset.uri, "extra": e.extra, "task_id": e.source_task_id,
                 "aliases": sorted(a.name for a in e.source_aliases)} for e in events]


def test_a_conversion_emits_its_image_asset_with_the_extras(dags, registry, reg_env, tmp_path):
    digest = source_image(registry, "assets/app", tmp_path)
    run = dags["overlaybd_convert"].test(run_conf={
        "source": registry.ref("assets/app", "v1"), "destination": registry.ref("assets/app", "v1-obd"),
        "src_registry_conn_id": "reg_assets", "dst_registry_conn_id": "reg_assets",
        "dedup_conn_id": "overlaybd_dedup_sqlite", "algorithm": "zstd", "block_size_kb": 8,
    })
    assert str(run.state) == "success"
    (event,) = asset_events(run)
    assert event["uri"] == f"oci://{registry.host}/assets/app:v1-obd" and event["task_id"] == "convert"
    assert event["aliases"] == ["overlaybd_converted"]
    extra = event["extra"]
    assert extra["reference"] == registry.ref("assets/app", "v1-obd") and extra["digest"].startswith("sha256:")
    assert extra["source"] == registry.ref("assets/app", "v1") and extra["source_digest"] == digest
    assert extra["format"] == "overlaybd" and extra["platforms"] == ["linux/amd64"]
    assert extra["options"]["algorithm"] == "zstd" and extra["options"]["block_size_kb"] == 8
    assert [m["platform"] for m in extra["manifests"]] == ["linux/amd64"]


def test_the_nightly_push_stage_emits_one_asset_per_image(dags, registry, reg_env, tmp_path):
    images = [{"source": registry.ref(f"assets/night-{n}", "v1"), "destination": registry.ref(f"assets/night-{n}", "obd")}
              for n in ("a", "b")]
    for n in ("a", "b"):
        source_image(registry, f"assets/night-{n}", tmp_path)
    os.environ["AIRFLOW_VAR_OVERLAYBD_IMAGES"] = json.dumps(images)
    run = dags["overlaybd_nightly"].test(run_conf={
        "src_registry_conn_id": "reg_assets", "dst_registry_conn_id": "reg_assets",
        "dedup_conn_id": "overlaybd_dedup_sqlite",
    })
    assert str(run.state) == "success"
    events = asset_events(run)
    assert sorted(e["uri"] for e in events) == [f"oci://{registry.host}/assets/night-{n}:obd" for n in ("a", "b")]
    assert {e["task_id"] for e in events} == {"convert.push"}
    assert all(e["extra"]["source_digest"].startswith("sha256:") for e in events)
