"""Operators called directly (``execute(context)``, no scheduler): real conversions between OCI layouts."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
from overlaybd_provider.operators import (
    Ext4LayerBuildOperator,
    OverlaybdConvertOperator,
    OverlaybdPullOperator,
    OverlaybdPushOperator,
    OverlaybdRecordOperator,
)
from overlaybd_provider.operators.failures import OverlaybdRetryPolicy, TaskError

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


class Worker:
    """One Celery worker's private directories (nothing shared with another Worker)."""

    def __init__(self, root: Path, name: str, monkeypatch) -> None:
        self.home = root / f"worker-{name}"
        self.monkeypatch = monkeypatch

    def __enter__(self) -> Worker:
        self.monkeypatch.setenv("AIRFLOW__OVERLAYBD__WORK_DIR", str(self.home / "work"))
        self.monkeypatch.setenv("AIRFLOW__OVERLAYBD__BLOB_CACHE", str(self.home / "blobs"))
        return self

    def __exit__(self, *exc) -> None:
        work = self.home / "work"
        assert not work.exists() or not any(work.iterdir()), list(work.iterdir())  # scratch removed


def xcom(value):
    """What the next task gets: the JSON round trip of the previous task's return value."""
    text = json.dumps(value)
    assert len(text) < 32 * 1024  # XCom carries facts, never blobs
    return json.loads(text)


def test_stages_hand_over_through_xcom_and_the_destination(source, dedup_db, tmp_path, monkeypatch):
    target = tmp_path / "dst"
    with Worker(tmp_path, "a", monkeypatch):
        pulled = xcom(OverlaybdPullOperator(
            task_id="pull", source=source, destination=f"oci:{target}:obd", dedup_conn_id="unit_dedup",
            algorithm="zstd", block_size_kb="16",
        ).execute(context("pull")))
    assert pulled["layers_to_build"] == 2 and pulled["connections"]["dedup_conn_id"] == "unit_dedup"
    state = StateStore()
    with Worker(tmp_path, "b", monkeypatch):
        built = xcom(Ext4LayerBuildOperator(task_id="build", conversion=pulled).execute(context("build", state)))
    assert [b["dedup"] for b in built["built"]] == ["miss", "miss"] and built["image"] == source
    assert sorted(state.data["layers"]) == sorted(b["chain_id"] for b in built["built"])
    with Worker(tmp_path, "c", monkeypatch):  # a retry of build elsewhere keeps what the first try did
        again = xcom(Ext4LayerBuildOperator(task_id="build", conversion=pulled).execute(context("build", state)))
    assert [b["digest"] for b in again["built"]] == [b["digest"] for b in built["built"]]
    with Worker(tmp_path, "d", monkeypatch):
        push_op = OverlaybdPushOperator(task_id="push", conversion=built)
        pushed = xcom(push_op.execute(context("push")))
    assert pushed["pushed"]["digest"] == _index_digest(target, "obd")
    # the extra link: the overlaybd page filtered on the pushed image
    assert push_op.image_url == "plugin/overlaybd?" + urlencode({"image": pushed["pushed"]["target"]})
    with Worker(tmp_path, "e", monkeypatch):
        summary = xcom(OverlaybdRecordOperator(task_id="record", conversion=pushed).execute(context("record")))
    assert summary["target_digest"] == pushed["pushed"]["digest"] and summary["layers_built"] == 2
    assert summary["seconds"] >= pulled["elapsed"]
    rows = sqlite3.connect(dedup_db).execute("SELECT run_key, layers_built FROM overlaybd_conversions").fetchall()
    assert rows == [("unit_dag|manual__unit|record|0", 2)]


def test_convert_operator_is_deterministic_and_cleans_its_work_dir(source, dedup_db, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__OVERLAYBD__WORK_DIR", str(tmp_path / "work"))
    target = tmp_path / "dst"
    op = OverlaybdConvertOperator(task_id="convert", source=source, destination=f"oci:{target}:obd",
                                  dedup_conn_id="unit_dedup")
    first = op.execute(context("convert", map_index=-1))
    again = op.execute(context("convert", map_index=-1))  # a rerun of a finished task
    assert first["target_digest"] == again["target_digest"] == _index_digest(target, "obd")
    assert first["layers_built"] == 2 and first["platforms"] == ["linux/amd64"]
    assert not any((tmp_path / "work" / "convert").iterdir())
    rows = sqlite3.connect(dedup_db).execute("SELECT COUNT(*) FROM overlaybd_conversions").fetchone()
    assert rows == (1,)  # same task instance → same row, updated in place
    # the extra link filters the overlaybd page on exactly what the row records as the target
    [stored] = sqlite3.connect(dedup_db).execute("SELECT target FROM overlaybd_conversions").fetchone()
    assert stored.endswith("dst:obd") and op.image_url == "plugin/overlaybd?" + urlencode({"image": stored})
    assert op.queue == "overlaybd" and isinstance(op.retry_policy, OverlaybdRetryPolicy)


def test_bad_options_fail_when_the_dag_is_parsed(source, tmp_path):
    with pytest.raises(ValueError, match=r"convert: block_size_kb 3: expected one of 4, 8, 16, 32"):
        OverlaybdConvertOperator(task_id="convert", source=source, destination="x/y:z", block_size_kb=3)
    with pytest.raises(ValueError, match=r"block_size_kb 64 is not offered.*use block_size_kb 32 or less"):
        OverlaybdPullOperator(task_id="pull", source=source, destination="x/y:z", block_size_kb=64)
    with pytest.raises(ValueError, match="algorithm 'gzip'"):
        OverlaybdConvertOperator(task_id="convert", source=source, destination="x/y:z", algorithm="gzip")
    with pytest.raises(ValueError, match=r"pull: flatten 'sometimes': expected true or false"):
        OverlaybdPullOperator(task_id="pull", source=source, destination="x/y:z", flatten="sometimes")
    assert OverlaybdPullOperator(task_id="pull", source=source, destination="x/y:z", flatten="true").convert_options().flatten
    assert not OverlaybdPullOperator(task_id="pull", source=source, destination="x/y:z").convert_options().flatten
    templated = OverlaybdConvertOperator(task_id="convert", source=source, destination=f"oci:{tmp_path / 'd'}",
                                         algorithm="{{ params.algorithm }}", use_dedup=False)
    templated.algorithm = "gzip"  # what the template rendered to
    with pytest.raises(TaskError) as err:
        templated.execute(context("convert"))
    assert not err.value.retryable and "algorithm 'gzip'" in str(err.value)


def test_permanent_errors_fail_at_once_and_transient_ones_retry(tmp_path, monkeypatch):
    from overlaybd_provider.oci.errors import AuthError, NotFoundError, RegistryUnavailableError

    monkeypatch.setenv("AIRFLOW__OVERLAYBD__WORK_DIR", str(tmp_path / "work"))
    missing = OverlaybdConvertOperator(task_id="convert", source=f"oci:{tmp_path / 'nowhere'}",
                                       destination=f"oci:{tmp_path / 'dst'}", use_dedup=False)
    with pytest.raises(TaskError) as err:
        missing.execute(context("convert"))
    assert str(err.value).startswith("convert oci:") and "\n" not in str(err.value)
    assert not any((tmp_path / "work" / "convert").iterdir())  # failed for good: work dir removed
    policy = OverlaybdRetryPolicy()
    assert policy.evaluate(err.value, 1, 3).action.value == "fail"
    for exc, action in ((AuthError("denied", status=401), "fail"), (NotFoundError("gone", status=404), "fail"),
                        (RegistryUnavailableError("503 after 5 attempts", status=503, retry_after=7.0), "retry"),
                        (RuntimeError("a bug"), "default")):
        decision = policy.evaluate(exc, 1, 3)
        assert decision.action.value == action, exc
    assert policy.evaluate(RegistryUnavailableError("x", retry_after=7.0), 1, 3).retry_delay.total_seconds() == 7.0


def test_a_registry_connection_is_found_by_host(auth_registry, tmp_path, monkeypatch):
    """No connection named: the one called oci_registry_<host> is used (plain HTTP + htpasswd)."""
    from overlaybd_provider.hooks.registry import conn_id_for_registry

    layout = tmp_path / "src"
    demo_image.make_image(layout, "latest", demo_image.demo_layers("byhost", base="byhost"))
    conn_id = conn_id_for_registry(auth_registry.host)
    host, port = auth_registry.host.rsplit(":", 1)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "oci_registry", "host": host, "port": int(port), "login": auth_registry.username,
        "password": auth_registry.password, "extra": {"plain_http": True}}))
    monkeypatch.setenv("AIRFLOW__OVERLAYBD__WORK_DIR", str(tmp_path / "work"))
    summary = OverlaybdConvertOperator(task_id="convert", source=f"oci:{layout}",
                                       destination=auth_registry.ref("byhost/app", "obd"),
                                       use_dedup=False).execute(context("convert"))
    assert summary["target_digest"].startswith("sha256:") and summary["layers_built"] == 2


def test_template_fields_cover_what_users_template():
    assert {"source", "destination", "platforms", "algorithm", "block_size_kb", "dedup_conn_id"} <= set(
        OverlaybdConvertOperator.template_fields)
    assert set(Ext4LayerBuildOperator.template_fields) >= {"conversion", "platform"}
    assert "conversion" in OverlaybdRecordOperator.template_fields
