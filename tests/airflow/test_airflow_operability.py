"""Operability on a real Airflow (api-server + scheduler + dag-processor, LocalExecutor) with a
MariaDB dedup database (issue #13): permanent errors fail after one try with one line and no
traceback, transient ones retry and resume, a nightly entry reaches a private registry through a
connection it names, concurrent runs of one new image build each layer once, and the time saved
by a reuse is the recorded build cost."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_live import LiveAirflow
from support.registry import push_layout

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import demo_image  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def conn(registry, **extra) -> str:
    host, port = registry.host.rsplit(":", 1)
    doc = {"conn_type": "oci_registry", "host": host, "port": int(port), "extra": {"plain_http": True, **extra}}
    if registry.username:
        doc.update(login=registry.username, password=registry.password)
    return json.dumps(doc)


@pytest.fixture(scope="module")
def live(registry, auth_registry, fault_proxy_module, mariadb, tmp_path_factory) -> Iterator[LiveAirflow]:
    home = tmp_path_factory.mktemp("ops-airflow")
    proxy_host, proxy_port = fault_proxy_module.host.rsplit(":", 1)
    airflow = LiveAirflow(
        home / "home",
        extra_env={
            "AIRFLOW_CONN_REG_OPS": conn(registry, max_retries=0),
            "AIRFLOW_CONN_PRIVATE_REG": conn(auth_registry),
            "AIRFLOW_CONN_WRONG_PASSWORD": json.dumps({
                "conn_type": "oci_registry", "host": auth_registry.host.rsplit(":", 1)[0],
                "port": int(auth_registry.host.rsplit(":", 1)[1]), "login": auth_registry.username,
                "password": "not-the-password", "extra": {"plain_http": True}}),
            "AIRFLOW_CONN_FLAKY_REG": json.dumps({
                "conn_type": "oci_registry", "host": proxy_host, "port": int(proxy_port),
                "extra": {"plain_http": True, "max_retries": 0}}),
            "AIRFLOW_CONN_OVERLAYBD_DEDUP": f"mysql://{mariadb.user}@{mariadb.host}:{mariadb.port}/{mariadb.database}",
            "AIRFLOW__OVERLAYBD__WORK_DIR": str(home / "work"),
        },
    )
    try:
        airflow.start()
        for dag in ("overlaybd_convert", "overlaybd_nightly"):
            airflow.wait_dag(dag)
            airflow.unpause(dag)
        yield airflow
    finally:
        airflow.stop()


@pytest.fixture(scope="module")
def fault_proxy_module(registry):
    from support.faultproxy import FaultProxy

    proxy = FaultProxy(registry.host).start()
    yield proxy
    proxy.stop()


def push(tmp_path: Path, registry, repo: str, name: str, *, base_kib: int = 256) -> str:
    layout = tmp_path / f"layout-{name}"
    demo_image.make_image(layout, "v1", demo_image.demo_layers(name, base=name, base_kib=base_kib))
    ref = registry.ref(repo, "v1")
    push_layout(layout, ref, registry.options(), src_ref="v1")
    return ref


def convert(live: LiveAirflow, conf: dict, timeout: float = 300) -> tuple[str, str]:
    run_id = live.trigger("overlaybd_convert", conf)
    return run_id, live.wait_run("overlaybd_convert", run_id, timeout=timeout)


def assert_one_clear_line(live: LiveAirflow, run_id: str, needle: str) -> str:
    tries = live.tries("overlaybd_convert", run_id, "convert")
    assert [t["try_number"] for t in tries] == [1] and tries[0]["state"] == "failed", tries  # not retried
    log = live.task_log("overlaybd_convert", run_id, "convert", try_number=1)
    lines = [line for line in log.splitlines() if "(permanent, not retried)" in line]
    assert len(lines) == 1 and lines[0].startswith(needle), log
    assert "Traceback" not in log and 'File "' not in log, log  # one line, no traceback frames
    return lines[0]


def test_not_found_and_refused_credentials_fail_at_once(live, registry, auth_registry, tmp_path):
    started = time.monotonic()
    run_id, state = convert(live, {"source": registry.ref("ops/missing", "v1"),
                                   "destination": registry.ref("ops/missing-obd", "obd"),
                                   "src_registry_conn_id": "reg_ops", "dst_registry_conn_id": "reg_ops"})
    assert state == "failed"
    line = assert_one_clear_line(live, run_id, "convert ")
    assert "404" in line or "not found" in line.lower()

    source = push(tmp_path, auth_registry, "ops/private", "private")
    run_id, state = convert(live, {"source": source, "destination": auth_registry.ref("ops/private-obd", "obd"),
                                   "src_registry_conn_id": "wrong_password",
                                   "dst_registry_conn_id": "wrong_password"})
    assert state == "failed"
    line = assert_one_clear_line(live, run_id, "convert ")
    assert "401" in line and "not-the-password" not in line
    assert time.monotonic() - started < 120  # no retry delays (2 x 15 s each) were waited


def test_a_registry_that_fails_retries_and_resumes(live, registry, fault_proxy_module, tmp_path):
    """The manifest PUT fails after the layers were pushed and recorded: the retry reuses them."""
    source = push(tmp_path, registry, "ops/flaky-src", "flaky")
    fault = fault_proxy_module.inject("status", 1, method="PUT", path=r"/manifests/", status=503)
    run_id, state = convert(live, {"source": source, "destination": f"{fault_proxy_module.host}/ops/flaky:obd",
                                   "src_registry_conn_id": "reg_ops", "dst_registry_conn_id": "flaky_reg"},
                            timeout=400)
    assert fault.fired == 1 and state == "success", live.logs()
    tries = live.tries("overlaybd_convert", run_id, "convert")
    assert len(tries) == 2 and tries[-1]["state"] == "success", tries
    first = live.task_log("overlaybd_convert", run_id, "convert", try_number=1)
    assert "(transient, will retry)" in first
    summary = live.xcom("overlaybd_convert", run_id, "convert")
    assert summary["layers_built"] == 0 and summary["dedup"] == {"hit": 2}  # resumed: nothing rebuilt


def test_a_nightly_entry_reaches_a_private_registry_through_its_connection(live, auth_registry, tmp_path):
    source = push(tmp_path, auth_registry, "ops/nightly-private", "nightly-private")
    images = [{"source": source, "destination": auth_registry.ref("ops/nightly-private-obd", "obd"),
               "src_registry_conn_id": "private_reg", "dst_registry_conn_id": "private_reg",
               "algorithm": "zstd"}]
    r = live.api("POST", "/api/v2/variables", json={"key": "overlaybd_images", "value": json.dumps(images)})
    assert r.status_code in (200, 201), r.text
    run_id = live.trigger("overlaybd_nightly", {})
    assert live.wait_run("overlaybd_nightly", run_id, timeout=400) == "success", live.logs()
    record = live.xcom("overlaybd_nightly", run_id, "convert.record", 0)
    assert record["layers_built"] == 2 and record["target"].endswith("ops/nightly-private-obd:obd")


def test_concurrent_runs_of_one_new_image_build_each_layer_once(live, registry, tmp_path):
    source = push(tmp_path, registry, "ops/twice", "twice", base_kib=24 * 1024)
    conf = {"source": source, "destination": registry.ref("ops/twice-obd", "obd"),
            "src_registry_conn_id": "reg_ops", "dst_registry_conn_id": "reg_ops"}
    runs = [live.trigger("overlaybd_convert", conf) for _ in range(2)]
    assert [live.wait_run("overlaybd_convert", r, timeout=400) for r in runs] == ["success", "success"]
    summaries = [live.xcom("overlaybd_convert", r, "convert") for r in runs]
    assert sum(s["layers_built"] for s in summaries) == 2, summaries  # each of the two layers once
    assert len({s["target_digest"] for s in summaries}) == 1


def test_time_saved_is_the_recorded_cost_of_the_reused_layers(live, registry, mariadb, tmp_path):
    source = push(tmp_path, registry, "ops/saved", "saved", base_kib=16 * 1024)
    first_run, state = convert(live, {"source": source, "destination": registry.ref("ops/saved-a", "obd"),
                                      "src_registry_conn_id": "reg_ops", "dst_registry_conn_id": "reg_ops"})
    assert state == "success"
    first = live.xcom("overlaybd_convert", first_run, "convert")
    again_run, state = convert(live, {"source": source, "destination": registry.ref("ops/saved-b", "obd"),
                                      "src_registry_conn_id": "reg_ops", "dst_registry_conn_id": "reg_ops"})
    assert state == "success"
    again = live.xcom("overlaybd_convert", again_run, "convert")
    assert again["layers_built"] == 0 and first["built_seconds"] > 0
    assert again["seconds_saved"] == pytest.approx(first["built_seconds"], rel=0.10)
    rows = mariadb.query("SELECT seconds_saved FROM overlaybd_conversions WHERE run_id = %s", (again_run,))
    assert rows and rows[0][0] == pytest.approx(again["seconds_saved"], rel=0.01)


def _overlaybd_workers(home: Path) -> list[int]:
    """Compressor / decoder processes started by this Airflow's tasks (their AIRFLOW_HOME is ours)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:  # the command line first: cheap, so a tight poll sees a worker that lives 0.1 s
            if b"zfile_worker" not in (cmdline := (proc / "cmdline").read_bytes()) and b"layerdecode" not in cmdline:
                continue
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if f"AIRFLOW_HOME={home}".encode() in environ:
            found.append(int(proc.name))
    return found


def test_a_task_marked_failed_stops_its_workers_and_cleans_up(live, registry, tmp_path):
    big = {f"data/{i:02d}.bin": bytes([i]) * (1 << 20) + (b"x" * 4096) * 64 for i in range(160)}
    big.update({f"small/{i // 1000:02d}/{i:05d}": b"%d" % i for i in range(40_000)})  # a longer build
    layout = tmp_path / "layout-kill"
    demo_image.make_image(layout, "v1", [big, {"app/x": b"x"}])
    source = registry.ref("ops/killed", "v1")
    push_layout(layout, source, registry.options(), src_ref="v1")
    run_id = live.trigger("overlaybd_convert", {"source": source, "destination": registry.ref("ops/killed-obd", "obd"),
                                                "src_registry_conn_id": "reg_ops", "dst_registry_conn_id": "reg_ops"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (workers := _overlaybd_workers(live.home)):
        time.sleep(0.01)  # the build is under way once its compressor process runs
    assert workers, live.logs()
    for pid in workers:  # a stuck compressor: the build now waits for it, however fast the machine
        os.kill(pid, signal.SIGSTOP)
    r = live.api("PATCH", f"/api/v2/dags/overlaybd_convert/dagRuns/{run_id}/taskInstances/convert",
                 json={"new_state": "failed"})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _overlaybd_workers(live.home):
        time.sleep(0.5)
    assert not _overlaybd_workers(live.home)  # on_kill stopped them
    assert live.wait_run("overlaybd_convert", run_id) == "failed"
    work = live.home.parent / "work" / "convert"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and work.exists() and any(work.iterdir()):
        time.sleep(0.5)
    assert not work.exists() or not any(work.iterdir()), list(work.iterdir())
    tagged = urllib.request.Request(f"{registry.url}/v2/ops/killed-obd/manifests/obd", method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(tagged, timeout=10)  # stopped mid-build: nothing was tagged
    assert missing.value.code == 404
