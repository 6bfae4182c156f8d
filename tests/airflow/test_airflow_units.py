"""Small pieces of the Airflow layer: staging sync, image list, report summary, progress, DAG parsing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from overlaybd_provider.operators.base import as_platforms, staging_location
from overlaybd_provider.operators.image_list import ImageListError, parse_image_list
from overlaybd_provider.operators.links import image_link
from overlaybd_provider.operators.progress import ProgressLog, rate
from overlaybd_provider.operators.staging import StagingArea, staging_key
from overlaybd_provider.operators.summary import conversion_row, seconds_saved, summarize

REPO = Path(__file__).resolve().parents[2]


def test_object_storage_staging_moves_work_between_workers(tmp_path, monkeypatch):
    """Stage 1 on worker A writes; stage 2 on worker B (other local cache) sees it and adds."""
    store = tmp_path / "bucket"
    area = StagingArea.for_task(f"file://{store}", staging_key("dag", "run:1", "0-oci_src"))
    assert area.remote and area.location.startswith(f"file://{store}/dag/run_1/")
    monkeypatch.setenv("AIRFLOW__OVERLAYBD__STAGING_CACHE", str(tmp_path / "worker-a"))
    with area.stage() as work_a:
        (work_a / "layers" / "c1").mkdir(parents=True)
        (work_a / "layers" / "c1" / "layer.lsmt").write_bytes(b"L" * 100_000)
        (work_a / "plan.json").write_text("{}")
    assert (store / "dag" / "run_1" / "0-oci_src" / "layers" / "c1" / "layer.lsmt").stat().st_size == 100_000
    assert not work_a.exists()  # the worker's copy is dropped once stored
    monkeypatch.setenv("AIRFLOW__OVERLAYBD__STAGING_CACHE", str(tmp_path / "worker-b"))
    with area.stage() as work_b:
        assert work_b != work_a
        assert (work_b / "layers" / "c1" / "layer.lsmt").read_bytes() == b"L" * 100_000
        (work_b / "layers" / "c1" / "overlaybd.commit").write_bytes(b"Z" * 10)
        assert area.upload(work_b) == 1  # only the new file; the others are there with the same size
    area.cleanup()
    assert not (store / "dag" / "run_1" / "0-oci_src").exists() and not work_b.exists()


def test_local_staging_is_used_in_place(tmp_path):
    area = StagingArea.for_task(str(tmp_path / "base"), "d/r/x")
    with area.stage() as work:
        assert work == tmp_path / "base" / "d" / "r" / "x"


def test_image_list_yaml_json_and_errors():
    text = (REPO / "dags" / "overlaybd_images.yaml").read_text()
    images = parse_image_list(text)
    assert images and all({"source", "destination", "platforms"} == set(i) for i in images)
    assert parse_image_list(
        '[{"source": "a/b:1", "destination": "c/d:1", "platforms": "linux/arm64,linux/amd64"}]'
    ) == [{"source": "a/b:1", "destination": "c/d:1", "platforms": ["linux/amd64", "linux/arm64"]}]
    with pytest.raises(ImageListError, match="entry 0: source and destination"):
        parse_image_list("- source: a/b:1\n")
    with pytest.raises(ImageListError, match="unknown key"):
        parse_image_list("- {source: a, destination: b, tag: x}\n")
    with pytest.raises(ImageListError, match="appears twice"):
        parse_image_list("- {source: a, destination: b}\n- {source: c, destination: b}\n")
    with pytest.raises(ImageListError, match="not valid YAML"):
        parse_image_list("- [unclosed")


def test_platforms_staging_and_links():
    assert as_platforms("linux/arm64, linux/amd64\nlinux/amd64") == ["linux/amd64", "linux/arm64"]
    assert as_platforms(None) == as_platforms("") == as_platforms([]) == []
    assert staging_location({"staging": "/x", "image": "i"}) == "/x"
    assert staging_location("s3://b/p") == "s3://b/p" and staging_location(None) is None
    assert image_link("127.0.0.1:5000/obd/app:1", "sha256:" + "a" * 64, plain_http=True) == (
        "http://127.0.0.1:5000/v2/obd/app/manifests/sha256:" + "a" * 64
    )
    assert image_link("oci:/tmp/layout:tag", None).startswith("file:///tmp/layout")


REPORT = {
    "source": {"reference": "r/src:1", "digest": "sha256:s"},
    "target": {"reference": "r/dst:1", "digest": "sha256:t"},
    "manifests": [
        {
            "platform": "linux/amd64",
            "cached": False,
            "layers": [
                {"chain_id": "c1", "dedup": "hit", "size": 4000, "bytes_in": 0, "seconds": 0.0},
                {"chain_id": "c2", "dedup": "miss", "size": 9000, "bytes_in": 20000, "seconds": 2.0},
            ],
        },
        {"platform": "linux/arm64", "cached": True, "layers": []},
    ],
}
PLANNED = [
    {"platform": "linux/amd64", "chain_id": "c1", "source_size": 3000, "cached": False},
    {"platform": "linux/amd64", "chain_id": "c2", "source_size": 6000, "cached": False},
    {"platform": "linux/arm64", "chain_id": "c9", "source_size": 1000, "cached": True},
]


def test_summary_counts_reuse_including_manifest_cache_layers():
    s = summarize(REPORT, PLANNED)
    assert (s["layers_total"], s["layers_built"], s["layers_reused"]) == (3, 1, 2)
    assert s["dedup"] == {"cache": 1, "hit": 1, "miss": 1}
    assert s["manifests_cached"] == 1 and s["platforms"] == ["linux/amd64", "linux/arm64"]
    assert s["source_bytes"] == 10000 and s["reused_bytes"] == 4000 + 1000
    assert seconds_saved(s) == pytest.approx(4000 / (6000 / 2.0), abs=1e-3)
    row = conversion_row(s, run_key="k", recorded_at="2026-01-01T00:00:00+00:00", seconds=3.25)
    assert row.seconds == 3.25 and row.layers_reused == 2 and not row.manifest_cached
    assert row.platforms == "linux/amd64,linux/arm64" and row.details == {
        "dedup": {"cache": 1, "hit": 1, "miss": 1}
    }
    cached_only = summarize({**REPORT, "manifests": [REPORT["manifests"][1]]}, PLANNED[2:])
    assert conversion_row(cached_only, run_key="k", recorded_at="x").manifest_cached
    assert seconds_saved(cached_only, history_rate=500.0) == 2.0  # 1000 bytes at 500 B/s


def test_progress_lines_show_layer_position_sizes_and_speed(caplog):
    logger = logging.getLogger("test.progress")
    progress = ProgressLog(logger, "build")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        progress(
            {
                "event": "layer",
                "platform": "linux/amd64",
                "index": 1,
                "count": 3,
                "chain_id": "sha256:0123456789abcdef",
                "what": "built",
                "bytes_in": 12_300_000,
                "seconds": 0.8,
            }
        )
        progress(
            {
                "event": "pushed",
                "target": "r/x:1",
                "digest": "sha256:d",
                "blobs_pushed": 2,
                "blobs_existing": 1,
            }
        )
    assert "build: layer 2/3 linux/amd64 0123456789ab built: 12.3 MB in 0.80 s (15.4 MB/s)" in caplog.text
    assert "2 blob(s) pushed, 1 already present" in caplog.text
    assert rate(0, 0) == "0.0 MB in 0.00 s (0.0 MB/s)"


def test_dag_files_parse_fast_without_database_or_engine_work(tmp_path):
    """Parsing must not touch the metadata DB, Variables or the network: use a DB that cannot exist."""
    env = {
        **os.environ,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/missing/dir/none.db",
        "AIRFLOW_HOME": str(tmp_path),
    }
    code = (
        "import time; t=time.monotonic()\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"b = DagBag({str(REPO / 'dags')!r})\n"
        "assert not b.import_errors, b.import_errors\n"
        "print(sorted(b.dags), round(time.monotonic() - t, 2))\n"
    )
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "['overlaybd_convert', 'overlaybd_nightly', 'overlaybd_on_converted', 'overlaybd_watch']" in out.stdout
    assert time.monotonic() - started < 60


def test_dag_structure_params_and_limits():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(REPO / "dags"))
    convert, nightly = bag.dags["overlaybd_convert"], bag.dags["overlaybd_nightly"]
    assert convert.schedule is None and type(convert.timetable).__name__ == "NullTimetable"
    params = convert.params
    assert params.get_param("algorithm").schema["enum"] == ["lz4", "zstd"]
    assert params.get_param("block_size_kb").schema["enum"] == [4, 8, 16, 32, 64]
    assert {
        "source",
        "destination",
        "platforms",
        "vsize_gb",
        "oci",
        "referrer",
        "src_registry_conn_id",
        "dst_registry_conn_id",
        "dedup_conn_id",
    } <= set(params.keys())
    assert not nightly.catchup and nightly.max_active_runs == 1
    tasks = {t.task_id: t for t in nightly.tasks}
    assert list(tasks) == [
        "list_images",
        "convert.pull",
        "convert.build",
        "convert.compress",
        "convert.push",
        "convert.record",
    ]
    assert tasks["convert.build"].max_active_tis_per_dagrun == 2
    assert all(tasks[f"convert.{t}"].map_index_template == "{{ image }}" for t in ("pull", "build", "record"))
    assert tasks["convert.record"].upstream_task_ids == {"convert.push"}
    assert set(tasks["convert.pull"].template_fields) >= {"source", "destination", "platforms", "staging"}
