"""The webhook endpoint in-process: real metadata DB (the repository's DAGs synced into it), real
registry for the manifest checks, Airflow's own trigger API creating the runs.

Authentication (401, Harbor's bare header), malformed bodies (400, nothing queued), missing
configuration (503), burst folding and idempotent run ids, non-image artifacts, conf the DAG
rejects, and no token or body content in the logs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from support.registry import push_layout

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "data" / "notifications"
sys.path.insert(0, str(REPO / "scripts"))
import demo_image  # noqa: E402

TOKEN = "whk-test-token-0123456789abcdef"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def dags_in_db(airflow_db):
    """The repository's DAGs serialized into the test metadata DB (as the dag-processor would)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        assert not bag.import_errors
        sync_bag_to_db(bag, bundle.name, bundle.version)
    return True


@pytest.fixture
def webhook_env(monkeypatch, registry):
    monkeypatch.setenv("AIRFLOW_CONN_OVERLAYBD_WEBHOOK", json.dumps({"conn_type": "generic", "password": TOKEN}))
    monkeypatch.setenv("AIRFLOW_CONN_REG_HOOK", json.dumps(
        {"conn_type": "oci_registry", "host": registry.host, "extra": {"plain_http": True}}))
    rules = {
        "fold_seconds": 0.3,
        "defaults": {"src_registry_conn_id": "reg_hook", "dst_registry_conn_id": "reg_hook"},
        "rules": [
            {"name": "per-tag", "repository": "hook/*", "destination": "{registry}/{repo}:{tag}-obd"},
            {"name": "per-digest", "repository": "hook/multi", "destination": "{registry}/{repo}-obd:{digest_short}"},
            {"name": "bad-conf", "repository": "badconf/app", "destination": "{registry}/{repo}:{tag}-x",
             "conf": {"algorithm": "gzip"}},
        ],
    }
    monkeypatch.setenv("AIRFLOW_VAR_OVERLAYBD_PUSH_RULES", json.dumps(rules))
    return rules


@pytest.fixture
def hook(dags_in_db, webhook_env):
    from overlaybd_plugin.webhooks import create_router
    from overlaybd_provider.events.intake import Intake

    intake = Intake()
    app = FastAPI()
    app.include_router(create_router(intake))
    client = TestClient(app)
    client.intake = intake
    yield client
    intake.close()


def runs(dag_id: str = "overlaybd_convert") -> dict[str, dict]:
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return {r.run_id: {"conf": r.conf, "state": str(r.state), "user": r.triggering_user_name,
                           "run_type": str(r.run_type)}
                for r in session.query(DagRun).filter(DagRun.dag_id == dag_id)}


def image(registry, repo: str, tag: str, name: str, tmp_path: Path) -> str:
    layout = tmp_path / f"layout-{name}"
    demo_image.make_image(layout, tag, demo_image.demo_layers(name, base="hook"))
    return push_layout(layout, registry.ref(repo, tag), registry.options()).descriptor.digest


def envelope(registry, repo: str, digest: str, *tags: str, ua: str = "skopeo/1.9.3") -> dict:
    """The captured docker-registry envelope, one manifest-push event per tag."""
    template = json.loads((SAMPLES / "distribution-2.8.2-manifest-push.json").read_text())["events"][0]
    events = []
    for tag in tags:
        event = copy.deepcopy(template)
        event["target"].update(repository=repo, digest=digest, tag=tag,
                               url=f"http://{registry.host}/v2/{repo}/manifests/{digest}")
        event["request"].update(host=registry.host, useragent=ua)
        events.append(event)
    return {"events": events}


def post(client, doc, token: str | None = TOKEN, *, bearer: bool = True, content_type: str | None = None):
    headers = {"Content-Type": content_type or "application/vnd.docker.distribution.events.v1+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}" if bearer else token
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return client.post("/webhook", content=data, headers=headers)


def test_a_push_creates_one_run_with_the_rule_conf_and_a_repeat_is_absorbed(hook, registry, tmp_path, caplog):
    from overlaybd_provider.events.planner import push_run_id

    caplog.set_level(logging.DEBUG)
    digest = image(registry, "hook/app", "v1", "app", tmp_path)
    before = set(runs())
    r = post(hook, envelope(registry, "hook/app", digest, "v1"))
    assert r.status_code == 202, r.text
    body = r.json()
    destination = f"{registry.host}/hook/app:v1-obd"
    run_id = push_run_id(digest, destination)
    assert body["queued"] == [{"source": f"{registry.host}/hook/app:v1", "digest": digest, "rule": "per-tag",
                               "destination": destination, "dag_id": "overlaybd_convert", "run_id": run_id}]
    assert hook.intake.drain(30)
    created = {k: v for k, v in runs().items() if k not in before}
    assert list(created) == [run_id]
    assert created[run_id]["conf"] == {
        "source": f"{registry.host}/hook/app@{digest}",
        "destination": destination,
        "src_registry_conn_id": "reg_hook",
        "dst_registry_conn_id": "reg_hook",
    }
    assert created[run_id]["state"] == "queued" and created[run_id]["user"] == "overlaybd-webhook"
    # the registry redelivers (or a second worker gets it): same run id, no second run
    assert post(hook, envelope(registry, "hook/app", digest, "v1")).status_code == 202
    assert hook.intake.drain(30)
    assert {k for k in runs() if k not in before} == {run_id}
    outcomes = [d["outcome"] for d in hook.intake.recent() if d.get("run_id") == run_id]
    assert outcomes[:2] == ["exists", "queued"] and "created" in outcomes
    assert not any(TOKEN in rec.getMessage() for rec in caplog.records)


def test_three_tags_of_one_digest_fold_per_destination(hook, registry, tmp_path):
    digest = image(registry, "hook/multi", "v1", "multi", tmp_path)
    before = set(runs())
    r = post(hook, envelope(registry, "hook/multi", digest, "v1", "v1.0", "latest"))
    assert r.status_code == 202 and len(r.json()["queued"]) == 6  # 3 tags x 2 rules
    assert hook.intake.drain(30)
    created = {k: v["conf"]["destination"] for k, v in runs().items() if k not in before}
    short = digest.split(":")[1][:12]
    assert sorted(created.values()) == sorted([
        f"{registry.host}/hook/multi-obd:{short}",  # one run for the digest-addressed destination
        f"{registry.host}/hook/multi:v1-obd", f"{registry.host}/hook/multi:v1.0-obd",
        f"{registry.host}/hook/multi:latest-obd",
    ])


def test_wrong_or_missing_token_is_401_and_triggers_nothing(hook, registry, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    digest = "sha256:" + hashlib.sha256(b"never").hexdigest()
    before, history = runs(), hook.intake.recent()
    for token, bearer in (("wrong-token-0123456789", True), (None, True), (TOKEN[:-1], False), ("", True)):
        r = post(hook, envelope(registry, "hook/app", digest, "v9"), token, bearer=bearer)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert hook.intake.drain(5) and runs() == before and hook.intake.recent() == history
    assert not any("wrong-token" in rec.getMessage() for rec in caplog.records)
    # Harbor sends its "Auth Header" value as is: a bare token is accepted
    ok = post(hook, json.loads((SAMPLES / "harbor-default-push.json").read_text()), TOKEN, bearer=False)
    assert ok.status_code == 202 and ok.json()["ignored"] == [
        {"what": "hub.harbor.com/test-webhook/debian:latest", "reason": "no rule matches"}
    ]


def test_malformed_bodies_are_400_and_nothing_is_logged_from_them(hook, caplog):
    caplog.set_level(logging.DEBUG)
    history = hook.intake.recent()
    secret_marker = "s3cr3t-in-the-body"
    for raw in (b"{", json.dumps({"events": [{"action": "push", "target": {"repository": secret_marker}}]}).encode(),
                json.dumps({"unexpected": secret_marker}).encode()):
        r = post(hook, raw)
        assert r.status_code == 400, r.text
    assert post(hook, b"{}", content_type="text/plain").status_code == 400
    assert post(hook, b"x" * ((1 << 20) + 1)).status_code == 413
    assert hook.intake.recent() == history
    assert not any(secret_marker in rec.getMessage() for rec in caplog.records)


def test_unconfigured_token_or_broken_rules_are_503(hook, registry, monkeypatch):
    doc = envelope(registry, "hook/app", "sha256:" + "0" * 64, "v1")
    monkeypatch.setenv("AIRFLOW_VAR_OVERLAYBD_PUSH_RULES", "rules: [{repository: a}]")
    r = post(hook, doc)
    assert r.status_code == 503 and "destination" in r.json()["detail"]
    monkeypatch.setenv("AIRFLOW_CONN_OVERLAYBD_WEBHOOK", json.dumps({"conn_type": "generic", "password": "short"}))
    assert post(hook, doc, "short").status_code == 503
    monkeypatch.delenv("AIRFLOW_CONN_OVERLAYBD_WEBHOOK")
    assert post(hook, doc).status_code == 503


def test_own_pushes_signatures_and_charts_start_nothing(hook, registry, tmp_path):
    from overlaybd_provider.oci.store import open_store

    before = set(runs())
    digest = image(registry, "hook/app", "v2", "app2", tmp_path)
    r = post(hook, {"events": [
        *envelope(registry, "hook/app", digest, "v2", ua="overlaybd-provider")["events"],
        *envelope(registry, "hook/app", digest, "v2-obd")["events"],
        *envelope(registry, "hook/app", digest, "sha256-" + digest[7:] + ".sig")["events"],
    ]})
    assert r.status_code == 202 and r.json()["queued"] == []
    assert [i["reason"] for i in r.json()["ignored"]] == [
        "pushed by the overlaybd converter (its user agent)",
        "matches the destination of rule 'per-tag' (converter output)",
        "a signature/attestation/SBOM tag (sha256-<digest>.*)",
    ]
    # a Helm chart pushed for real under an ordinary tag: only its manifest tells
    store, _ = open_store(registry.ref("hook/chart", "0.1.0"), registry.options())
    config, layer = tmp_path / "config.json", tmp_path / "chart.tgz"
    config.write_bytes(b'{"name":"mychart","version":"0.1.0","apiVersion":"v2"}')
    layer.write_bytes(b"\x1f\x8b" + b"\0" * 64)
    descs = []
    for path in (config, layer):
        d = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        store.push_blob(path, d, path.stat().st_size)
        descs.append({"digest": d, "size": path.stat().st_size})
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", **descs[0]},
        "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", **descs[1]}],
    }).encode()
    chart = store.push_manifest(manifest, "application/vnd.oci.image.manifest.v1+json", "0.1.0").digest
    store.close()
    r = post(hook, envelope(registry, "hook/chart", chart, "0.1.0"))
    assert r.status_code == 202 and len(r.json()["queued"]) == 1
    assert hook.intake.drain(30)
    decision = next(d for d in hook.intake.recent() if d["digest"] == chart and d["outcome"] != "queued")
    assert decision["outcome"] == "ignored"
    assert decision["reason"] == "not a container image (config application/vnd.cncf.helm.config.v1+json)"
    assert set(runs()) == before


def test_conf_the_dag_rejects_is_reported_and_starts_nothing(hook, registry, tmp_path):
    digest = image(registry, "badconf/app", "v1", "bad", tmp_path)
    before = set(runs())
    assert post(hook, envelope(registry, "badconf/app", digest, "v1")).status_code == 202
    assert hook.intake.drain(30)
    decision = next(d for d in hook.intake.recent() if d["digest"] == digest and d["outcome"] != "queued")
    assert decision["outcome"] == "failed"
    assert decision["reason"].startswith("DAG 'overlaybd_convert' rejected the conf: Invalid input for param algorithm")
    assert "\n" not in decision["reason"]
    assert set(runs()) == before


def test_the_plugin_app_serves_the_webhook(dags_in_db, webhook_env):
    from overlaybd_plugin.app import create_app

    client = TestClient(create_app(lambda: None))
    assert client.post("/webhook", content=b"{}").status_code == 401
    assert client.get("/webhook/recent").status_code == 401  # Airflow login required


def test_conf_keys_the_dag_does_not_know_yet_are_passed_through(dags_in_db, webhook_env):
    """``format`` / ``turbo_destination`` from a rule reach the run's conf (the DAG ignores keys it
    has no param for, until it gets them)."""
    from overlaybd_provider.events.runs import create_run, run_exists

    conf = {"source": "r.example/a@sha256:" + "a" * 64, "destination": "r.example/a:v1-obd", "format": "both",
            "turbo_destination": "r.example/a:v1-turbo"}
    assert create_run("overlaybd_convert", "push__passthrough", conf) == "created"
    assert run_exists("overlaybd_convert", "push__passthrough")
    assert runs()["push__passthrough"]["conf"] == conf
    assert create_run("overlaybd_convert", "push__passthrough", conf) == "exists"
