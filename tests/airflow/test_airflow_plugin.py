"""The overlaybd UI page: auth through Airflow's auth manager, real data, and how it looks."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from overlaybd_provider.hooks.conversion_log import ConversionRow
from overlaybd_provider.hooks.dedup import OverlaybdDedupHook

D = "sha256:"


def _digest(ch: str) -> str:
    return D + ch * 64


def seed_rows(hook: OverlaybdDedupHook) -> list[ConversionRow]:
    """Three images, one converted twice (second run served by the manifest cache)."""
    rows = [
        ConversionRow(
            run_key="overlaybd_nightly|scheduled__2026-11-25|convert.record|0",
            source="registry:5000/library/alpine:3.20",
            target="registry:5000/overlaybd/alpine:3.20",
            source_digest=_digest("a"),
            target_digest=_digest("b"),
            recorded_at="2026-11-25T02:00:11+00:00",
            platforms="linux/amd64,linux/arm64",
            layers_total=2,
            layers_built=2,
            source_bytes=7_340_032,
            target_bytes=9_961_472,
            built_source_bytes=7_340_032,
            built_seconds=3.5,
            seconds=6.2,
            dag_id="overlaybd_nightly",
            run_id="scheduled__2026-11-25T00:00:00+00:00",
        ),
        ConversionRow(
            run_key="overlaybd_nightly|scheduled__2026-11-26|convert.record|0",
            source="registry:5000/library/alpine:3.20",
            target="registry:5000/overlaybd/alpine:3.20",
            source_digest=_digest("a"),
            target_digest=_digest("b"),
            recorded_at="2026-11-26T02:00:03+00:00",
            platforms="linux/amd64,linux/arm64",
            layers_total=2,
            layers_reused=2,
            source_bytes=7_340_032,
            target_bytes=9_961_472,
            reused_bytes=9_961_472,
            seconds=0.8,
            seconds_saved=3.5,
            manifest_cached=True,
            dag_id="overlaybd_nightly",
            run_id="scheduled__2026-11-26T00:00:00+00:00",
        ),
        ConversionRow(
            run_key="overlaybd_convert|manual__2026-11-26|convert|-1",
            source="registry:5000/library/debian:bookworm-slim",
            target="registry:5000/overlaybd/debian:bookworm-slim",
            source_digest=_digest("c"),
            target_digest=_digest("d"),
            recorded_at="2026-11-26T09:14:55+00:00",
            platforms="linux/amd64",
            layers_total=3,
            layers_reused=1,
            layers_built=2,
            source_bytes=31_457_280,
            target_bytes=52_428_800,
            reused_bytes=29_360_128,
            built_source_bytes=3_145_728,
            built_seconds=1.9,
            seconds=4.4,
            seconds_saved=16.7,
            dag_id="overlaybd_convert",
            run_id="manual__2026-11-26T09:14:40+00:00",
        ),
        ConversionRow(
            run_key="secret_dag|manual|convert|-1",
            source="registry:5000/internal/secret-app:1",
            target="registry:5000/overlaybd/secret-app:1",
            source_digest=_digest("e"),
            target_digest=_digest("f"),
            recorded_at="2026-11-26T10:00:00+00:00",
            dag_id="secret_dag",
        ),
    ]
    conn = hook.get_conn()
    try:
        store = hook.open_store(conn, create=True)
        store.record_layer(
            "registry:5000", "overlaybd/alpine", _digest("1"), _digest("2"), 4_980_736, "lz4-4k-v64-ext4"
        )
        store.record_layer(
            "registry:5000", "overlaybd/alpine", _digest("3"), _digest("4"), 4_980_736, "lz4-4k-v64-ext4"
        )
        logbook = hook.conversion_log(conn, create=True)
        for row in rows:
            logbook.record(row)
    finally:
        conn.close()
    return rows


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
    assert client.get("/").status_code == 401
    assert client.get("/api/conversions").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    assert client.get("/", headers={"Authorization": f"Bearer {auth['expired']}"}).status_code == 401
    assert client.get("/", headers={"Authorization": f"Bearer {auth['norole']}"}).status_code == 403
    forged = auth["viewer"][:-4] + ("AAAA" if not auth["viewer"].endswith("AAAA") else "BBBB")
    assert client.get("/api/conversions", headers={"Authorization": f"Bearer {forged}"}).status_code == 403


def test_page_shows_conversions_per_image_with_bearer_or_cookie(client, auth):
    page = client.get("/", headers={"Authorization": f"Bearer {auth['viewer']}"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert (
        "registry:5000/library/alpine:3.20" in html and "registry:5000/library/debian:bookworm-slim" in html
    )
    assert "sha256:aaaaaaaaaaaa" in html and "manifest cache" in html
    assert "secret-app" not in html  # recorded by a DAG this user may not read
    client.cookies.set("_token", auth["viewer"])
    data = client.get("/api/conversions").json()
    client.cookies.clear()
    totals = data["totals"]
    assert totals["images"] == 2 and totals["conversions"] == 3
    assert (totals["layers_reused"], totals["layers_built"]) == (3, 4)
    assert totals["bytes_saved"] == 9_961_472 + 29_360_128
    assert (totals["dedup_layers"], totals["dedup_layer_bytes"]) == (2, 2 * 4_980_736)
    by_source = {i["source"]: i for i in data["images"]}
    alpine = by_source["registry:5000/library/alpine:3.20"]["conversions"]
    assert [c["manifest_cached"] for c in alpine] == [True, False]  # newest first
    one = client.get(
        "/api/conversions",
        params={"image": "registry:5000/library/debian:bookworm-slim"},
        headers={"Authorization": f"Bearer {auth['viewer']}"},
    ).json()
    assert [i["source"] for i in one["images"]] == ["registry:5000/library/debian:bookworm-slim"]


def test_page_without_any_conversion_explains_what_to_do(tmp_path, auth):
    from overlaybd_plugin.app import create_app

    empty = OverlaybdDedupHook(sqlite_path=str(tmp_path / "empty.db"))
    page = TestClient(create_app(lambda: empty)).get(
        "/", headers={"Authorization": f"Bearer {auth['viewer']}"}
    )
    assert page.status_code == 200 and "No conversions recorded yet" in page.text


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def screenshot(html_file: Path, png: Path, tmp_path: Path, size: str = "1400,900") -> bytes:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: scripts/bootstrap.sh installs the Debian package")
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--window-size={size}",
            f"--screenshot={png}",
            html_file.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return png.read_bytes()


def test_page_screenshot_is_not_blank(client, auth, tmp_path):
    html = client.get("/", headers={"Authorization": f"Bearer {auth['viewer']}"}).text
    page = tmp_path / "overlaybd.html"
    page.write_text(html)
    data = screenshot(page, tmp_path / "overlaybd.png", tmp_path)
    width, height = _png_size(data)
    assert (width, height) == (1400, 900)
    # A blank page compresses to almost nothing; cards, tables and text do not.
    assert len(data) > 30_000
    pixels = zlib.decompress(
        b"".join(
            data[i + 8 : i + 8 + struct.unpack(">I", data[i : i + 4])[0]] for i in _chunks(data, b"IDAT")
        )
    )
    nonzero = sum(1 for b in pixels[::7] if b) / len(pixels[::7])
    assert nonzero > 0.02, f"screenshot looks blank ({nonzero:.3%} non-zero filtered bytes)"
    if os.environ.get("OVERLAYBD_KEEP_SCREENSHOT"):
        Path(os.environ["OVERLAYBD_KEEP_SCREENSHOT"]).write_bytes(data)


def _chunks(data: bytes, kind: bytes):
    pos = 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        if data[pos + 4 : pos + 8] == kind:
            yield pos
        pos += 12 + length
