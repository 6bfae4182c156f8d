"""Operators called directly (``execute(context)``, no scheduler): real conversions between OCI layouts."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
from airflow.sdk.exceptions import AirflowException
from overlaybd_provider.operators import (
    Ext4LayerBuildOperator,
    OverlaybdConvertOperator,
    OverlaybdPullOperator,
    OverlaybdPushOperator,
    OverlaybdRecordOperator,
    ZFileCompressOperator,
)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import demo_image  # noqa: E402


class StateStore:
    """Stands in for ``context["task_state_store"]`` (a dict that survives "retries")."""

    def __init__(self) -> None:
        self.data: dict = {}

    def get(self, key, default=None):
        return self.data.get(key, default)

    def set(self, key, value, **_):
        self.data[key] = json.loads(json.dumps(value))


def context(task_id: str, state: StateStore | None = None, map_index: int = 0) -> dict:
    ti = SimpleNamespace(dag_id="unit_dag", run_id="manual__unit", task_id=task_id, map_index=map_index)
    ctx = {"ti": ti}
    if state is not None:
        ctx["task_state_store"] = state
    return ctx


@pytest.fixture
def source(tmp_path) -> str:
    layout = tmp_path / "src"
    demo_image.make_image(layout, "latest", demo_image.demo_layers("unit-app", base="unit"))
    return f"oci:{layout}"


@pytest.fixture
def dedup_db(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "dedup.db"
    monkeypatch.setenv("AIRFLOW_CONN_UNIT_DEDUP", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return path


def _index_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    return next(
        m["digest"]
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == tag
    )


def test_stages_hand_work_between_workers_through_object_storage(source, dedup_db, tmp_path, monkeypatch):
    """Each stage runs with its own local cache (another worker); the staging area is file:// storage."""
    target = tmp_path / "dst"
    base = f"file://{tmp_path / 'bucket'}"

    def worker(name: str) -> None:
        monkeypatch.setenv("AIRFLOW__OVERLAYBD__STAGING_CACHE", str(tmp_path / f"cache-{name}"))

    worker("a")
    pulled = OverlaybdPullOperator(
        task_id="pull",
        source=source,
        destination=f"oci:{target}:obd",
        staging_base=base,
        dedup_conn_id="unit_dedup",
        algorithm="zstd",
        block_size_kb="16",
    ).execute(context("pull"))
    assert pulled["staging"].startswith(base) and pulled["layers_to_build"] == 2
    worker("b")
    built = Ext4LayerBuildOperator(task_id="build", staging=pulled).execute(context("build"))
    assert built["layers_built"] == 2 and built["image"] == source
    worker("c")
    compressed = ZFileCompressOperator(task_id="compress", staging=built).execute(context("compress"))
    assert len(compressed["layers"]) == 2
    worker("d")
    push_op = OverlaybdPushOperator(task_id="push", staging=compressed)
    pushed = push_op.execute(context("push"))
    assert pushed["digest"] == _index_digest(target, "obd")
    # the extra link: the overlaybd page filtered on the pushed image
    assert push_op.image_url == "plugin/overlaybd?" + urlencode({"image": pushed["target"]})
    worker("e")
    state = StateStore()
    record_op = OverlaybdRecordOperator(task_id="record", staging=pushed, dedup_conn_id="unit_dedup")
    summary = record_op.execute(context("record", state))
    assert summary["target_digest"] == pushed["digest"] and summary["layers_built"] == 2
    assert summary["seconds"] >= pulled["elapsed"]
    for result in (pulled, built, compressed, pushed, summary):
        assert len(json.dumps(result)) < 4096  # XCom carries facts, never blobs
    leftovers = [
        p for p in [*(tmp_path / "bucket").rglob("*"), *tmp_path.glob("cache-*/**/*")] if p.is_file()
    ]
    assert leftovers == []  # record removed the stored area; workers dropped their copies
    # a rerun of record after the staging area is gone returns the stored summary
    assert record_op.execute(context("record", state)) == summary
    rows = (
        sqlite3.connect(dedup_db)
        .execute("SELECT run_key, layers_built FROM overlaybd_conversions")
        .fetchall()
    )
    assert rows == [("unit_dag|manual__unit|record|0", 2)]


def test_convert_operator_is_deterministic_and_idempotent(source, dedup_db, tmp_path):
    target = tmp_path / "dst"
    op = OverlaybdConvertOperator(
        task_id="convert",
        source=source,
        destination=f"oci:{target}:obd",
        dedup_conn_id="unit_dedup",
        staging_base=str(tmp_path / "staging"),
    )
    state = StateStore()
    first = op.execute(context("convert", state, map_index=-1))
    assert state.data["stage"] == "record"
    again = op.execute(context("convert", state, map_index=-1))  # a retry of a finished task
    assert first["target_digest"] == again["target_digest"] == _index_digest(target, "obd")
    assert first["layers_built"] == 2 and first["platforms"] == ["linux/amd64"]
    assert not (tmp_path / "staging" / "unit_dag").exists() or not any(
        (tmp_path / "staging").rglob("plan.json")
    )
    rows = sqlite3.connect(dedup_db).execute("SELECT COUNT(*) FROM overlaybd_conversions").fetchone()
    assert rows == (1,)  # same task instance → same row, updated in place
    # the extra link filters the overlaybd page on exactly what the row records as the target
    [stored] = sqlite3.connect(dedup_db).execute("SELECT target FROM overlaybd_conversions").fetchone()
    assert stored.endswith("dst:obd") and op.image_url == "plugin/overlaybd?" + urlencode({"image": stored})


def test_bad_options_fail_with_one_clear_airflow_error(source, tmp_path):
    op = OverlaybdConvertOperator(
        task_id="convert",
        source=source,
        destination=f"oci:{tmp_path / 'dst'}",
        algorithm="gzip",
        use_dedup=False,
    )
    with pytest.raises(AirflowException, match=r"^conversion options: .*gzip"):
        op.execute(context("convert"))
    missing = OverlaybdConvertOperator(
        task_id="convert",
        source=f"oci:{tmp_path / 'nowhere'}",
        destination=f"oci:{tmp_path / 'dst'}",
        use_dedup=False,
    )
    with pytest.raises(AirflowException, match=r"^convert oci:"):
        missing.execute(context("convert"))


def test_template_fields_cover_what_users_template():
    assert {
        "source",
        "destination",
        "platforms",
        "staging",
        "staging_base",
        "algorithm",
        "block_size_kb",
        "dedup_conn_id",
    } <= set(OverlaybdConvertOperator.template_fields)
    assert set(Ext4LayerBuildOperator.template_fields) >= {"staging", "platform"}
    assert "staging" in OverlaybdRecordOperator.template_fields
