"""Small pieces of the Airflow layer: image list, report summary, progress, errors, DAG parsing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from overlaybd_provider.operators.base import as_platforms
from overlaybd_provider.operators.image_list import ImageListError, parse_image_list
from overlaybd_provider.operators.links import image_link, registry_ui_link
from overlaybd_provider.operators.progress import ProgressLog
from overlaybd_provider.operators.summary import conversion_row, summarize

REPO = Path(__file__).resolve().parents[2]


def test_image_list_flatten_key_and_run_default():
    images = parse_image_list("- {source: a, destination: b, flatten: true}\n- {source: c, destination: d}\n",
                              defaults={"flatten": False})
    assert [i["flatten"] for i in images] == [True, False]
    with pytest.raises(ImageListError, match=r"entry 0 \(a\): flatten 'maybe': expected true or false"):
        parse_image_list("- {source: a, destination: b, flatten: maybe}\n")


def test_image_list_yaml_json_and_errors():
    text = (REPO / "dags" / "overlaybd_images.yaml").read_text()
    images = parse_image_list(text)
    assert images and all({"source", "destination", "platforms"} <= set(i) for i in images)
    parsed = parse_image_list(
        '[{"source": "a/b:1", "destination": "c/d:1", "platforms": "linux/arm64,linux/amd64"}]',
        defaults={"algorithm": "zstd", "src_registry_conn_id": "run_default"},
    )
    assert parsed[0]["platforms"] == ["linux/amd64", "linux/arm64"]
    assert parsed[0]["algorithm"] == "zstd" and parsed[0]["src_registry_conn_id"] == "run_default"
    own = parse_image_list("- {source: a, destination: b, src_registry_conn_id: private, block_size_kb: 16}\n",
                           defaults={"src_registry_conn_id": "run_default", "block_size_kb": 4})
    assert own[0]["src_registry_conn_id"] == "private" and own[0]["block_size_kb"] == 16
    with pytest.raises(ImageListError, match="entry 0: source and destination"):
        parse_image_list("- source: a/b:1\n")
    with pytest.raises(ImageListError, match="unknown key"):
        parse_image_list("- {source: a, destination: b, tag: x}\n")
    with pytest.raises(ImageListError, match="appears twice"):
        parse_image_list("- {source: a, destination: b}\n- {source: c, destination: b}\n")
    with pytest.raises(ImageListError, match="not valid YAML"):
        parse_image_list("- [unclosed")
    with pytest.raises(ImageListError, match=r"entry 0 \(a\): block_size_kb 64 is not offered"):
        parse_image_list("- {source: a, destination: b, block_size_kb: 64}\n")


def test_platforms_and_links():
    assert as_platforms("linux/arm64, linux/amd64\nlinux/amd64") == ["linux/amd64", "linux/arm64"]
    assert as_platforms(None) == as_platforms("") == as_platforms([]) == []



def test_image_link_opens_the_page_or_the_configured_registry_ui(monkeypatch):
    """No template: the overlaybd page filtered on the image (relative to the UI, or absolute
    with [api] base_url); with [overlaybd] registry_ui_url_template: the registry's web UI."""
    digest = "sha256:" + "a" * 64
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    monkeypatch.delenv("AIRFLOW__OVERLAYBD__REGISTRY_UI_URL_TEMPLATE", raising=False)
    assert image_link("127.0.0.1:5000/obd/app:1", digest, plain_http=True) == (
        "plugin/overlaybd?image=127.0.0.1%3A5000%2Fobd%2Fapp%3A1"
    )
    assert image_link("oci:/tmp/layout:tag", None) == "plugin/overlaybd?image=oci%3A%2Ftmp%2Flayout%3Atag"
    assert image_link(None, None) is None
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/prefix/")
    assert image_link("r.example.com/obd/app:1", digest) == (
        "https://airflow.example.com/prefix/plugin/overlaybd?image=r.example.com%2Fobd%2Fapp%3A1"
    )
    template = "https://{registry}/harbor/projects/{namespace}/repositories/{name}/artifacts/{digest}?t={tag}"
    monkeypatch.setenv("AIRFLOW__OVERLAYBD__REGISTRY_UI_URL_TEMPLATE", template)
    assert image_link("harbor.example.com/team/app:1.2", digest) == (
        f"https://harbor.example.com/harbor/projects/team/repositories/app/artifacts/{digest}?t=1.2"
    )
    # an OCI layout has no registry UI: back to the page
    assert image_link("oci:/tmp/layout:tag", None).startswith("https://airflow.example.com/prefix/plugin/")
    assert registry_ui_link("https://{host}/x", "r.example.com/a:1", None) is None  # unknown placeholder
    assert registry_ui_link("https://quay.io/repository/{repository}", "quay.io/org/app:1", None) == (
        "https://quay.io/repository/org/app"
    )


REPORT = {
    "source": {"reference": "r/src:1", "digest": "sha256:s"},
    "target": {"reference": "r/dst:1", "digest": "sha256:t"},
    "manifests": [
        {
            "platform": "linux/amd64",
            "cached": False,
            "layers": [
                {"chain_id": "c1", "dedup": "hit", "size": 4000, "source_size": 3000, "bytes_in": 0,
                 "seconds": 0.0, "cost": 1.5},
                {"chain_id": "c2", "dedup": "miss", "size": 9000, "source_size": 6000, "bytes_in": 6000,
                 "seconds": 2.0, "cost": 0.0},
                {"chain_id": "c3", "dedup": "wait", "size": 100, "source_size": 50, "bytes_in": 0,
                 "seconds": 0.0, "cost": 0.25},
            ],
        },
        {"platform": "linux/arm64", "cached": True, "layers": [
            {"chain_id": "c9", "dedup": "cache", "size": None, "source_size": 1000, "cost": 7.0}]},
    ],
}


def test_summary_counts_reuse_and_saves_only_recorded_costs():
    s = summarize(REPORT)
    assert (s["layers_total"], s["layers_built"], s["layers_reused"]) == (4, 1, 3)
    assert s["dedup"] == {"cache": 1, "hit": 1, "miss": 1, "wait": 1}
    assert s["manifests_cached"] == 1 and s["platforms"] == ["linux/amd64", "linux/arm64"]
    assert s["source_bytes"] == 10050 and s["built_source_bytes"] == 6000 and s["reused_bytes"] == 5100
    assert s["seconds_saved"] == pytest.approx(1.5 + 0.25 + 7.0)  # recorded costs, nothing estimated
    row = conversion_row(s, run_key="k", recorded_at="2026-01-01T00:00:00+00:00", seconds=3.25)
    assert row.seconds == 3.25 and row.layers_reused == 3 and not row.manifest_cached
    assert row.seconds_saved == pytest.approx(8.75)
    assert row.platforms == "linux/amd64,linux/arm64"
    cached_only = summarize({**REPORT, "manifests": [REPORT["manifests"][1]]})
    assert conversion_row(cached_only, run_key="k", recorded_at="x").manifest_cached
    assert cached_only["seconds_saved"] == 7.0
    assert row.status == "success" and row.error == ""
    row = conversion_row(
        s, run_key="k", recorded_at="x", seconds_saved=1.25, task_id="g.record", map_index=2, try_number=3
    )
    assert (row.seconds_saved, row.task_id, row.map_index, row.try_number) == (1.25, "g.record", 2, 3)


def test_progress_is_one_line_per_layer_in_binary_units(caplog):
    logger = logging.getLogger("test.progress")
    progress = ProgressLog(logger, "build")
    layer = {"event": "layer", "platform": "linux/amd64", "index": 1, "count": 3,
             "chain_id": "sha256:0123456789abcdef"}
    with caplog.at_level(logging.INFO, logger="test.progress"):
        progress({**layer, "what": "downloaded", "bytes_in": 3 << 20, "seconds": 0.1})
        progress({**layer, "what": "built", "bytes_in": 12 << 20, "bytes_out": 5 << 19, "seconds": 0.8})
        progress({**layer, "what": "reused", "dedup": "mount"})
        progress({**layer, "index": 0, "what": "built", "bytes_in": 700, "bytes_out": 300, "seconds": 0.01})
    lines = caplog.text.strip().splitlines()
    assert len(lines) == 3  # the download is counted, not printed
    assert "build: [linux/amd64] layer 2/3 0123456789ab: built 12.0 MiB → 2.5 MiB in 0.80 s (15.0 MiB/s)" in lines[0]
    assert lines[1].endswith("layer 2/3 0123456789ab: reused (mount)")
    assert "built 700 B → 300 B in 0.01 s" in lines[2]  # small layers are not "0.0 MB"
    assert progress.fetched() == "1 download(s), 3.0 MiB"


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
    # 64 KiB blocks are refused: upstream's reader cannot read incompressible 64 KiB blocks
    assert params.get_param("block_size_kb").schema["enum"] == [4, 8, 16, 32]
    # optional fields carry "null" in their type, so the trigger form shows no required star
    for name in ("platforms", "src_registry_conn_id", "dst_registry_conn_id", "dedup_conn_id"):
        assert "null" in params.get_param(name).schema["type"], name
    for name in ("algorithm", "block_size_kb", "vsize_gb"):
        assert params.get_param(name).description, name
    assert set(params.get_param("block_size_kb").schema["values_display"]) == {"4", "8", "16", "32"}
    assert {p.schema.get("section") for p in params.values() if hasattr(p, "schema")} == {
        "Image",
        "Output format",
        "Connections",
    }
    from airflow.sdk.exceptions import ParamValidationError

    platforms = params.get_param("platforms")
    assert platforms.resolve(None) is None and platforms.resolve([]) == []  # both mean "all"
    assert platforms.resolve(["linux/arm64/v8"]) == ["linux/arm64/v8"]
    with pytest.raises(ParamValidationError):
        params.get_param("block_size_kb").resolve(64)
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
        "convert.push",
        "convert.verify",
        "convert.record",
    ]
    assert tasks["convert.build"].max_active_tis_per_dagrun == 2
    assert tasks["convert.build"].queue == "overlaybd" and tasks["convert.pull"].queue == "default"
    assert all(t.retry_policy is not None for t in nightly.tasks if t.task_id.startswith("convert."))
    assert all(tasks[f"convert.{t}"].map_index_template == "{{ image }}" for t in ("pull", "build", "record"))
    # push -> verify -> record: a wrong image is never recorded; verify on by default here, off in convert
    assert tasks["convert.verify"].upstream_task_ids == {"convert.push"}
    assert tasks["convert.record"].upstream_task_ids == {"convert.verify"}
    assert nightly.params.get_param("verify").value is True and convert.params.get_param("verify").value is False
    assert nightly.params.get_param("flatten").value is False and convert.params.get_param("flatten").value is False
    assert "flatten" in tasks["convert.pull"].template_fields and "enabled" in tasks["convert.verify"].template_fields
    assert {"flatten", "verify"} <= set(convert.get_task("convert").template_fields)
    assert set(tasks["convert.pull"].template_fields) >= {"source", "destination", "platforms", "block_size_kb"}
    assert nightly.doc_md and "On call" in nightly.doc_md


def test_error_hints_name_the_connection_extra_in_airflow_and_the_flag_in_the_cli(tls_registry):
    """A TLS mismatch says what to change where the user is: the CLI flag, or the connection extra."""
    import logging

    from overlaybd_provider.engine.options import ConvertOptions, OptionsError
    from overlaybd_provider.errors import message_for
    from overlaybd_provider.oci.errors import TLSError
    from overlaybd_provider.oci.options import RegistryOptions
    from overlaybd_provider.oci.store import open_store
    from overlaybd_provider.operators.failures import TaskError, engine_errors

    plain = RegistryOptions(plain_http=False, max_retries=0)
    store, ref = open_store(f"{tls_registry.host.replace('127.0.0.1', 'localhost')}/x/y:1", plain)
    try:
        with pytest.raises(TLSError) as err:
            store.resolve(ref.target)
    finally:
        store.close()
    assert "pass --tlscacert" in message_for(err.value, "cli")
    airflow_text = message_for(err.value, "airflow")
    assert "extra ca_cert" in airflow_text and "--tlscacert" not in airflow_text
    with pytest.raises(TaskError) as task_err, engine_errors(logging.getLogger("t"), "pull x"):
        raise err.value
    assert "extra ca_cert" in str(task_err.value) and not task_err.value.retryable
    with pytest.raises(OptionsError) as opt:
        ConvertOptions(block_size_kb=64)
    assert message_for(opt.value, "cli").startswith("--bs 64 is not offered")
    assert message_for(opt.value, "airflow").startswith("block_size_kb 64 is not offered")
    assert "use block_size_kb 32 or less" in message_for(opt.value, "airflow")
