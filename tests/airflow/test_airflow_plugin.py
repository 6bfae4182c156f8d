"""The overlaybd page's server side: auth through Airflow's auth manager, the JSON API over real
rows (successes, failures, retries), links to Airflow's pages, the plugin registration.

How the page looks and behaves in a browser: test_airflow_page_browser.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from overlaybd_provider.hooks.dedup import OverlaybdDedupHook
from page_rows import seed_rows


@pytest.fixture
def seeded_hook(tmp_path: Path) -> OverlaybdDedupHook:
    hook = OverlaybdDedupHook(sqlite_path=str(tmp_path / "dedup.db"))
    seed_rows(hook)
    return hook


class _OnlySomeDags:
    """Wrap the real auth manager to deny one DAG (simple auth manager has no per-DAG rules)."""

    def __init__(self, inner, denied: set[str]):
        self.inner, self.denied = inner, denied

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def filter_authorized_dag_ids(self, *, dag_ids, user, method="GET", team_name=None):
        allowed = self.inner.filter_authorized_dag_ids(dag_ids=dag_ids, user=user, method=method)
        return allowed - self.denied


@pytest.fixture
def auth(monkeypatch, airflow_db):
    """The real SimpleAuthManager (users from conftest), wrapped to hide ``secret_dag``."""
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    manager = create_auth_manager()
    manager.init()
    import overlaybd_plugin.auth as plugin_auth

    monkeypatch.setattr(plugin_auth, "_auth_manager", lambda: _OnlySomeDags(manager, {"secret_dag"}))
    return {
        "viewer": manager.generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer")),
        "norole": manager.generate_jwt(SimpleAuthManagerUser(username="ghost", role=None)),
        "expired": manager.generate_jwt(
            SimpleAuthManagerUser(username="viewer", role="viewer"), expiration_time_in_seconds=-60
        ),
    }


@pytest.fixture
def client(seeded_hook, auth) -> TestClient:
    from overlaybd_plugin.app import create_app

    return TestClient(create_app(lambda: seeded_hook))


def test_page_requires_a_valid_airflow_token(client, auth):
    assert client.get("/api/conversions").status_code == 401
    api = "/api/conversions"
    assert client.get(api, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    assert client.get(api, headers={"Authorization": f"Bearer {auth['expired']}"}).status_code == 401
    assert client.get(api, headers={"Authorization": f"Bearer {auth['norole']}"}).status_code == 403
    client.cookies.set("_token", auth["expired"])
    assert client.get(api).status_code == 401
    client.cookies.clear()
    forged = auth["viewer"][:-4] + ("AAAA" if not auth["viewer"].endswith("AAAA") else "BBBB")
    assert client.get("/api/conversions", headers={"Authorization": f"Bearer {forged}"}).status_code == 403


def test_api_lists_conversions_failures_and_links_with_bearer_or_cookie(client, auth):
    client.cookies.set("_token", auth["viewer"])
    data = client.get("/api/conversions").json()
    client.cookies.clear()
    totals = data["totals"]
    assert totals["images"] == 3 and totals["conversions"] == 5  # secret_dag's row is hidden
    assert (totals["succeeded"], totals["failed"], totals["retrying"]) == (3, 1, 1)
    # savings count succeeded conversions only
    assert (totals["layers_reused"], totals["layers_built"]) == (3, 4)
    assert totals["bytes_saved"] == 9_961_472 + 29_360_128
    assert totals["seconds_saved"] == pytest.approx(3.5 + 16.7)
    assert (totals["dedup_layers"], totals["dedup_layer_bytes"]) == (2, 2 * 4_980_736)
    by_source = {i["source"]: i for i in data["images"]}
    assert "registry:5000/internal/secret-app:1" not in by_source
    alpine = by_source["registry:5000/library/alpine:3.20"]["conversions"]
    assert [c["manifest_cached"] for c in alpine] == [True, False]  # newest first
    run = "scheduled__2026-11-26T00%3A00%3A00%2B00%3A00"
    assert alpine[0]["links"] == {
        "dag_run": f"dags/overlaybd_nightly/runs/{run}",
        "task_instance": f"dags/overlaybd_nightly/runs/{run}/tasks/convert.record/mapped/0?try_number=1",
    }
    # a row written before task_id/map_index existed: read from its run_key
    assert (alpine[1]["task_id"], alpine[1]["map_index"]) == ("convert.record", 0)
    assert alpine[1]["links"]["task_instance"].endswith("/tasks/convert.record/mapped/0")

    failures = data["failures"]
    assert [(f["status"], f["source"]) for f in failures] == [
        ("up_for_retry", "registry:5000/library/debian:bookworm-slim"),
        ("failed", "registry:5000/library/redis:7.4"),
    ]
    assert failures[1]["error"].startswith("pull registry:5000/library/redis:7.4: layer")
    assert failures[1]["links"]["task_instance"] == f"dags/overlaybd_nightly/runs/{run}/tasks/convert.pull/mapped/1?try_number=3"
    debian = by_source["registry:5000/library/debian:bookworm-slim"]
    assert [c["status"] for c in debian["conversions"]] == ["up_for_retry", "success"]
    assert debian["failed"] == 0 and by_source["registry:5000/library/redis:7.4"]["failed"] == 1
    assert debian["conversions"][1]["links"]["task_instance"].endswith("/tasks/convert?try_number=1")

    headers = {"Authorization": f"Bearer {auth['viewer']}"}
    one = client.get("/api/conversions", params={"image": "registry:5000/overlaybd/redis:7.4"}, headers=headers)
    assert [i["source"] for i in one.json()["images"]] == ["registry:5000/library/redis:7.4"]  # by target
    failed = client.get("/api/conversions", params={"status": "failed"}, headers=headers).json()
    assert failed["totals"]["conversions"] == 1 and failed["failures"][0]["status"] == "failed"
    assert client.get("/api/conversions", params={"status": "nope"}, headers=headers).status_code == 422


def test_page_entry_redirects_into_the_airflow_ui_and_serves_the_script(client):
    """The page is a React app inside the Airflow UI: /overlaybd/ sends the browser there, and
    the script (code, no data) is served without a token, like Airflow's own assets."""
    moved = client.get("/", params={"image": "r/a:1"}, follow_redirects=False)
    assert moved.status_code == 307 and moved.headers["location"] == "../plugin/overlaybd?image=r%2Fa%3A1"
    script = client.get("/static/overlaybd-page.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "globalThis.AirflowPlugin" in script.text and "overlaybd/api/conversions" in script.text
    assert client.get("/static/overlaybd-icon.svg").headers["content-type"].startswith("image/svg")


def test_plugin_registers_a_react_app_in_the_browse_menu():
    from overlaybd_plugin import OverlaybdPlugin
    from overlaybd_provider.operators.links import PAGE_PATH

    [app] = OverlaybdPlugin.react_apps
    assert (app["destination"], app["category"], app["url_route"]) == ("nav", "browse", "overlaybd")
    assert not app["bundle_url"].startswith("/")  # relative: resolved against the UI's base URL
    assert f"plugin/{app['url_route']}" == PAGE_PATH  # the extra link opens this page
    assert OverlaybdPlugin.fastapi_apps[0]["url_prefix"] == "/overlaybd"


def test_ui_urls_follow_airflow_routes():
    from overlaybd_plugin.urls import dag_run_url, page_url, task_instance_url

    assert dag_run_url("d", "manual__2026-01-01T00:00:00+00:00") == "dags/d/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00"
    assert task_instance_url("d", "r", "g.t", 3, 2) == "dags/d/runs/r/tasks/g.t/mapped/3?try_number=2"
    assert task_instance_url("d", "r", "t") == "dags/d/runs/r/tasks/t"
    assert task_instance_url("d", "", "t") is None and dag_run_url("", "r") is None
    assert page_url() == "plugin/overlaybd" and page_url("a b") == "plugin/overlaybd?image=a+b"


def test_api_without_any_conversion_is_empty(tmp_path, auth):
    from overlaybd_plugin.app import create_app

    empty = OverlaybdDedupHook(sqlite_path=str(tmp_path / "empty.db"))
    data = (
        TestClient(create_app(lambda: empty))
        .get("/api/conversions", headers={"Authorization": f"Bearer {auth['viewer']}"})
        .json()
    )
    assert data["images"] == [] and data["failures"] == [] and data["totals"]["conversions"] == 0


def test_api_rows_carry_the_verify_result_and_the_flatten_change(tmp_path, auth):
    """The verify stage's result and the --flatten layer-count change reach the page (the
    ``verified`` / ``flattened 10 → 1`` badges of a conversion row); a row without them has None."""
    from overlaybd_plugin.app import create_app
    from overlaybd_provider.hooks.conversion_log import ConversionRow

    hook = OverlaybdDedupHook(sqlite_path=str(tmp_path / "page.db"))
    summary = "0 differences: the image matches its source (423 paths, 3.1 MB of content hashed)"
    common = {"source": "registry:5000/app:1", "target": "registry:5000/obd/app:1", "source_digest": "sha256:" + "a" * 64,
              "target_digest": "sha256:" + "b" * 64, "dag_id": "overlaybd_nightly", "run_id": "manual__1"}
    rows = [
        ConversionRow(run_key="overlaybd_nightly|manual__1|convert.record|0", recorded_at="2026-11-27T01:00:00+00:00",
                      layers_total=1, layers_built=1, details={
                          "dedup": {"miss": 1}, "verify": {"identical": True, "differences": 0, "summary": summary},
                          "flatten": {"source_layers": 10, "layers": 1, "source_bytes": 3_200_000, "bytes": 3_300_000}},
                      **common),
        ConversionRow(run_key="overlaybd_nightly|manual__1|convert.record|1", recorded_at="2026-11-27T00:00:00+00:00",
                      layers_total=2, layers_built=2, details={"dedup": {"miss": 2}}, **common),
    ]
    conn = hook.get_conn()
    try:
        logbook = hook.conversion_log(conn, create=True)
        for row in rows:
            logbook.record(row)
    finally:
        conn.close()
    data = (TestClient(create_app(lambda: hook))
            .get("/api/conversions", headers={"Authorization": f"Bearer {auth['viewer']}"}).json())
    newest, older = data["images"][0]["conversions"]
    assert newest["verify"] == {"identical": True, "differences": 0, "summary": summary}
    assert newest["flatten"]["source_layers"] == 10 and newest["flatten"]["layers"] == 1
    assert older["verify"] is None and older["flatten"] is None
    script = TestClient(create_app(lambda: hook)).get("/static/overlaybd-page.js").text
    assert "function VerifyBadge" in script and "r.verify ? h(VerifyBadge" in script and "flattened ${" in script
