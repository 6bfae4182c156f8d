"""End to end through a real Airflow (api-server + scheduler + dag-processor, LocalExecutor).

One Airflow for the module: trigger overlaybd_convert over REST and check the converted image in
the registry (its exported ext4 stack passes ``e2fsck -fn``); backfill the nightly DAG with
``airflow backfill create``; read the plugin page's API with and without a token.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from airflow_live import LiveAirflow
from support.fsjudge import assert_e2fsck_clean, export_stack
from support.registry import push_layout

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import demo_image  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
FORMAT = {"algorithm": "zstd", "block_size_kb": 8}
ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture(scope="module")
def source_image(registry, tmp_path_factory) -> str:
    layout = tmp_path_factory.mktemp("e2e-source")
    demo_image.make_image(layout, "latest", demo_image.demo_layers("e2e-app", base="e2e"))
    push_layout(layout, registry.ref("src/e2e-app"), registry.options())
    return registry.ref("src/e2e-app")


@pytest.fixture(scope="module")
def live(registry, source_image, tmp_path_factory) -> Iterator[LiveAirflow]:
    home = tmp_path_factory.mktemp("live-airflow")
    images = [{"source": source_image, "destination": registry.ref("obd/e2e-app", "obd")}]
    airflow = LiveAirflow(
        home / "home",
        extra_env={
            "AIRFLOW_CONN_REG_E2E": json.dumps(
                {"conn_type": "oci_registry", "host": registry.host, "extra": {"plain_http": True}}
            ),
            "AIRFLOW_CONN_OVERLAYBD_DEDUP": json.dumps(
                {"conn_type": "sqlite", "host": str(home / "dedup.db")}
            ),
            "AIRFLOW_VAR_OVERLAYBD_IMAGES": json.dumps(images),
            "AIRFLOW__OVERLAYBD__WORK_DIR": str(home / "work"),
        },
    )
    try:
        airflow.start()
        airflow.wait_dag("overlaybd_convert")
        airflow.wait_dag("overlaybd_nightly")
        yield airflow
    finally:
        airflow.stop()


def test_trigger_convert_over_rest_and_check_the_image(live, registry, source_image, tmp_path):
    bad = live.api(
        "POST",
        "/api/v2/dags/overlaybd_convert/dagRuns",
        json={"logical_date": None, "conf": {"source": source_image, "algorithm": "gzip"}},
    )
    assert bad.status_code == 400  # the Params form rejects it before anything runs
    live.unpause("overlaybd_convert")
    run_id = live.trigger(
        "overlaybd_convert",
        {
            "source": source_image,
            "destination": registry.ref("obd/e2e-app", "obd"),
            "src_registry_conn_id": "reg_e2e",
            "dst_registry_conn_id": "reg_e2e",
            **FORMAT,
        },
    )
    assert live.wait_run("overlaybd_convert", run_id) == "success", live.logs()
    summary = live.xcom("overlaybd_convert", run_id, "convert")
    assert summary["layers_built"] == 2 and summary["target"] == registry.ref("obd/e2e-app", "obd")
    log = live.task_log("overlaybd_convert", run_id, "convert")
    assert "convert: [linux/amd64] layer 1/2" in log and "/s)" in log and "converted " in log
    assert log.count("layer 1/2") == 1  # one line per layer, not one per logger
    links = live.api(
        "GET", f"/api/v2/dags/overlaybd_convert/dagRuns/{run_id}/taskInstances/convert/links"
    ).json()["extra_links"]
    # the extra link opens the overlaybd page filtered on the converted image ([api] base_url is set)
    link = links.get("overlaybd image", "")
    assert link.startswith(f"{live.url}/plugin/overlaybd?image="), link
    [image] = parse_qs(urlsplit(link).query)["image"]
    shown = live.api("GET", "/overlaybd/api/conversions", params={"image": image}).json()
    assert [c["target_digest"] for i in shown["images"] for c in i["conversions"]] == [summary["target_digest"]]

    got = requests.get(f"{registry.url}/v2/obd/e2e-app/manifests/obd", headers={"Accept": ACCEPT}, timeout=10)
    assert got.status_code == 200 and got.headers["Docker-Content-Digest"] == summary["target_digest"]
    blobs = []
    for i, layer in enumerate(got.json()["layers"]):
        path = tmp_path / f"layer-{i}.blob"
        with requests.get(
            f"{registry.url}/v2/obd/e2e-app/blobs/{layer['digest']}", stream=True, timeout=30
        ) as r:
            r.raise_for_status()
            with open(path, "wb") as out:
                for chunk in r.iter_content(1 << 20):
                    out.write(chunk)
        blobs.append(path)
    raw = export_stack(blobs, tmp_path / "stack.raw")
    assert_e2fsck_clean(raw)


def test_plugin_page_requires_a_token_and_shows_the_conversion(live, source_image):
    api = f"{live.url}/overlaybd/api/conversions"
    assert requests.get(api, timeout=10).status_code == 401
    assert requests.get(api, headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 403
    data = requests.get(api, cookies={"_token": live.token()}, timeout=10).json()
    assert data["totals"]["conversions"] >= 1
    assert any(i["source"] == source_image for i in data["images"])
    # the page itself is a React app of the Airflow UI; /overlaybd/ sends the browser there
    moved = requests.get(f"{live.url}/overlaybd/", allow_redirects=False, timeout=10)
    assert moved.status_code == 307 and moved.headers["location"] == "../plugin/overlaybd"
    assert requests.get(f"{live.url}/plugin/overlaybd", timeout=10).status_code == 200
    plugins = live.api("GET", "/api/v2/plugins").json()["plugins"]
    apps = [a for p in plugins for a in p["react_apps"] if a["url_route"] == "overlaybd"]
    assert len(apps) == 1 and apps[0]["category"] == "browse"
    script = requests.get(f"{live.url}/{apps[0]['bundle_url']}", timeout=10)  # .../overlaybd-page.js?v=<hash>
    assert script.status_code == 200 and "globalThis.AirflowPlugin" in script.text


def test_backfill_nightly_runs_through_the_scheduler(live):
    live.unpause("overlaybd_nightly")
    args = (
        "backfill",
        "create",
        "--dag-id",
        "overlaybd_nightly",
        "--from-date",
        "2026-11-20",
        "--to-date",
        "2026-11-21",
        "--max-active-runs",
        "2",
        # same format as the converted image → served by the manifest cache
        "--dag-run-conf",
        json.dumps({"src_registry_conn_id": "reg_e2e", "dst_registry_conn_id": "reg_e2e", **FORMAT}),
    )
    for attempt in range(3):
        try:
            live.cli(*args)
            break
        except RuntimeError as exc:
            # four processes on one SQLite file: a write can lose a lock race ("database is
            # locked"); creating the backfill is one transaction, so retry unless it went through
            created = live.api("GET", "/api/v2/backfills", params={"dag_id": "overlaybd_nightly"}).json()
            if created.get("total_entries"):
                break
            if "database is locked" not in str(exc) or attempt == 2:
                raise
    deadline = time.monotonic() + 300
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = [r for r in live.runs("overlaybd_nightly") if r["run_type"] == "backfill"]
        if len(runs) == 2 and all(r["state"] in ("success", "failed") for r in runs):
            break
        time.sleep(2)
    assert sorted(r["state"] for r in runs) == ["success", "success"], live.logs()
    for run in runs:  # the image was converted by the first test: served by the manifest cache
        record = live.xcom("overlaybd_nightly", run["dag_run_id"], "convert.record", 0)
        assert record["manifests_cached"] == 1 and record["layers_built"] == 0
