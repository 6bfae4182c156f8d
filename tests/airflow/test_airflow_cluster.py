"""A real Airflow 3.3 CeleryExecutor cluster (``scripts/cluster.sh``): PostgreSQL metadata, Redis
broker, MariaDB dedup, two Celery workers that share no directory. The nightly DAG's stages of
one image run on both workers; a worker killed with SIGKILL in the middle of a build has its task
retried on the other worker, and the run ends with the digest of an undisturbed conversion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from airflow_live import RemoteAirflow, free_port
from overlaybd_provider.engine.convert import convert_image
from overlaybd_provider.engine.options import ConvertOptions
from support.fsjudge import assert_e2fsck_clean, export_stack
from support.registry import push_layout

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import demo_image  # noqa: E402

WORKER_HOSTS = {"127.0.2.1", "127.0.2.2"}
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


class Cluster:
    """``scripts/cluster.sh`` driven from a test: its directory, environment and REST client."""

    def __init__(self, root: Path, registry) -> None:
        self.root = root
        self.name = f"obd_ct{os.getpid()}"
        conn_id = "OCI_REGISTRY_" + registry.host.replace(".", "_").replace(":", "_")
        host, port = registry.host.rsplit(":", 1)
        extra = {
            # the registry connection is found by host (no conn id in the image list)
            f"AIRFLOW_CONN_{conn_id}": json.dumps({"conn_type": "oci_registry", "host": host, "port": int(port),
                                                    "extra": {"plain_http": True}}),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        }
        self.env = {
            **os.environ,
            "OVERLAYBD_CLUSTER_DIR": str(root / "cluster"),
            "OVERLAYBD_WORKERS": "2",
            "OVERLAYBD_CLUSTER_PORT": str(free_port()),
            "OVERLAYBD_CLUSTER_LOG_PORT": str(free_port()),
            "OVERLAYBD_CLUSTER_TRIGGER_LOG_PORT": str(free_port()),
            "OVERLAYBD_CLUSTER_NAME": self.name,
            "OVERLAYBD_CLUSTER_REDIS": f"redis://127.0.0.1:6379/{8 + os.getpid() % 8}",
            "OVERLAYBD_CLUSTER_ENV": "\n".join(f"{k}={v}" for k, v in extra.items()),
        }
        self.env.pop("AIRFLOW_HOME", None)
        self.env = {k: v for k, v in self.env.items() if not k.startswith("AIRFLOW__") and not k.startswith("AIRFLOW_CONN")}
        self.rest: RemoteAirflow | None = None

    def run(self, *args: str, timeout: float = 600) -> str:
        proc = subprocess.run(["bash", str(REPO / "scripts" / "cluster.sh"), *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args)}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc.stdout

    def up(self) -> RemoteAirflow:
        self.run("up")
        values = dict(line.split("=", 1) for line in (self.root / "cluster" / "env").read_text().splitlines())
        self.rest = RemoteAirflow(url=values["AIRFLOW_URL"], user=values["AIRFLOW_USER"],
                                  password=values["AIRFLOW_PASSWORD"], log_dir=self.root / "cluster" / "logs")
        return self.rest

    def worker_pid(self, host: str) -> int:
        n = host.rsplit(".", 1)[1]
        return int((self.root / "cluster" / "pids" / f"worker-{n}.pid").read_text().split()[0])

    def dedup_query(self, sql: str) -> list[tuple]:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", user="root", database=f"{self.name}_dedup")
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, registry) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("celery"), registry)
    try:
        rest = c.up()
        rest.wait_dag("overlaybd_nightly", timeout=180)
        rest.unpause("overlaybd_nightly")
        yield c
    finally:
        try:
            c.run("down", "--purge", timeout=180)
        except RuntimeError as exc:  # pragma: no cover - only reports
            print(exc)


def push_image(tmp_path: Path, registry, repo: str, layers_by_arch: dict[str, list]) -> str:
    layout = tmp_path / f"layout-{repo.replace('/', '_')}"
    if len(layers_by_arch) == 1:
        (arch, layers), = layers_by_arch.items()
        demo_image.make_image(layout, "v1", layers, arch=arch)
    else:
        demo_image.make_index(layout, "v1", layers_by_arch)
    ref = registry.ref(repo, "v1")
    push_layout(layout, ref, registry.options(), src_ref="v1")
    return ref


def set_images(rest: RemoteAirflow, images: list[dict]) -> None:
    value = json.dumps(images)
    r = rest.api("PATCH", "/api/v2/variables/overlaybd_images", json={"key": "overlaybd_images", "value": value})
    if r.status_code == 404:
        r = rest.api("POST", "/api/v2/variables", json={"key": "overlaybd_images", "value": value})
    assert r.status_code in (200, 201), r.text


def judge_image(registry, repo: str, tag: str, tmp_path: Path) -> int:
    """Export every platform of the converted image with our reader and e2fsck it; returns the count."""
    base = f"{registry.url}/v2/{repo}"
    top = requests.get(f"{base}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}, timeout=30)
    top.raise_for_status()
    doc = top.json()
    manifests = [m["digest"] for m in doc["manifests"]] if "manifests" in doc else [top.headers["Docker-Content-Digest"]]
    for n, digest in enumerate(manifests):
        manifest = requests.get(f"{base}/manifests/{digest}", headers={"Accept": MANIFEST_TYPES}, timeout=30).json()
        blobs = []
        for i, layer in enumerate(manifest["layers"]):
            path = tmp_path / f"{repo.replace('/', '_')}-{n}-{i}.blob"
            path.write_bytes(requests.get(f"{base}/blobs/{layer['digest']}", timeout=60).content)
            blobs.append(path)
        raw = export_stack(blobs, tmp_path / f"{repo.replace('/', '_')}-{n}.raw")
        assert_e2fsck_clean(raw)
        raw.unlink()
    return len(manifests)


def base_layer(tag: str, kib: int) -> dict:
    return demo_image.demo_layers("x", base=tag, base_kib=kib)[0]


def own_layer(name: str) -> dict:
    return demo_image.demo_layers(name)[1]


def test_nightly_on_two_workers_spreads_each_images_stages(cluster, registry, tmp_path):
    rest = cluster.rest
    assert rest is not None
    shared = base_layer("cluster-shared", 2048)
    images = [
        ("src/c-alpha", {"amd64": [shared, own_layer("alpha")]}),
        ("src/c-beta", {"amd64": [shared, own_layer("beta")]}),
        ("src/c-multi", {"amd64": [shared, own_layer("multi-amd64")],
                         "arm64": [base_layer("cluster-arm", 1024), own_layer("multi-arm64")]}),
        ("src/c-gamma", {"amd64": [shared, own_layer("gamma")]}),
    ]
    entries = [{"source": push_image(tmp_path, registry, repo, layers),
                "destination": registry.ref(repo.replace("src/", "obd/"), "obd")} for repo, layers in images]
    set_images(rest, entries)
    run_id = rest.trigger("overlaybd_nightly", {})
    assert rest.wait_run("overlaybd_nightly", run_id, timeout=900) == "success", rest.logs()

    tis = rest.task_instances("overlaybd_nightly", run_id)
    stages = [t for t in tis if t["task_id"].startswith("convert.")]
    assert {t["hostname"] for t in stages} == WORKER_HOSTS, [(t["task_id"], t["hostname"]) for t in stages]
    per_image: dict[int, set[str]] = {}
    for t in stages:
        per_image.setdefault(t["map_index"], set()).add(t["hostname"])
    assert len(per_image) == len(images)
    spread = [i for i, hosts in per_image.items() if len(hosts) == 2]
    assert spread, f"no image had stages on both workers: {per_image}"
    queues = {t["task_id"]: t["queue"] for t in stages}
    assert queues["convert.build"] == "overlaybd" and queues["convert.pull"] == "default"

    platforms = sum(judge_image(registry, repo.replace("src/", "obd/"), "obd", tmp_path) for repo, _ in images)
    assert platforms == 5
    record = rest.xcom("overlaybd_nightly", run_id, "convert.record", map_index=2)
    assert record["platforms"] == ["linux/amd64", "linux/arm64"]
    rows = cluster.dedup_query("SELECT COUNT(DISTINCT chain_id) FROM overlaybd_layers")
    assert rows[0][0] >= 7  # the shared base is one chain, mounted into every repository


def test_a_worker_killed_mid_build_is_retried_on_the_other(cluster, registry, tmp_path):
    rest = cluster.rest
    assert rest is not None
    big = {f"data/chunk-{i:02d}.bin": os.urandom(1 << 20) * 12 for i in range(24)}  # ~300 MiB, compresses
    layers = {"amd64": [base_layer("cluster-kill", 512), big, own_layer("kill")]}
    source = push_image(tmp_path, registry, "src/c-kill", layers)
    # the undisturbed conversion, in this process, for the digests to expect
    undisturbed = convert_image(source, registry.ref("obd/c-kill-ref", "obd"), ConvertOptions(),
                                src_registry=registry.options(), dst_registry=registry.options()).to_json()
    digests = [layer["digest"] for layer in undisturbed["manifests"][0]["layers"]]

    dest = registry.ref("obd/c-kill", "obd")
    set_images(rest, [{"source": source, "destination": dest}])
    run_id = rest.trigger("overlaybd_nightly", {})
    deadline = time.monotonic() + 600
    host = None
    while time.monotonic() < deadline:  # the first layer pushed: the build is now in its big layer
        build = next((t for t in rest.task_instances("overlaybd_nightly", run_id)
                      if t["task_id"] == "convert.build"), None)
        if build and build["state"] == "running" and build["hostname"]:
            head = requests.head(f"{registry.url}/v2/obd/c-kill/blobs/{digests[0]}", timeout=10)
            if head.status_code == 200:
                host = build["hostname"]
                break
        time.sleep(0.5)
    assert host in WORKER_HOSTS, rest.logs()
    leader = cluster.worker_pid(host)
    subprocess.run(["pkill", "-KILL", "-s", str(leader)], check=False)  # the worker's whole session
    try:
        assert rest.wait_run("overlaybd_nightly", run_id, timeout=900) == "success", rest.logs()
        tries = rest.tries("overlaybd_nightly", run_id, "convert.build", map_index=0)
        hosts = [t["hostname"] for t in tries]
        assert len(tries) >= 2 and hosts[0] == host and hosts[-1] in WORKER_HOSTS - {host}, tries
        record = rest.xcom("overlaybd_nightly", run_id, "convert.record", map_index=0)
        assert record["target_digest"] == undisturbed["target"]["digest"]
        for repo, digest in cluster.dedup_query("SELECT repo, data_digest FROM overlaybd_layers"):
            head = requests.head(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=10)
            assert head.status_code == 200, (repo, digest)  # no row points at a missing blob
        judge_image(registry, "obd/c-kill", "obd", tmp_path)
    finally:
        cluster.run("up")  # idempotent: restarts the killed worker


def test_up_names_a_missing_service_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({"OVERLAYBD_CLUSTER_DIR": str(tmp_path / "c"), "OVERLAYBD_CLUSTER_REDIS": f"redis://127.0.0.1:{free_port()}/0",
                "OVERLAYBD_CLUSTER_NAME": f"obd_missing{os.getpid()}"})
    proc = subprocess.run(["bash", str(REPO / "scripts" / "cluster.sh"), "up"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cluster: Redis does not answer at redis://127.0.0.1:"), lines
    assert not (tmp_path / "c" / "pids").exists() or not any((tmp_path / "c" / "pids").iterdir())


def test_down_stops_exactly_what_up_started(cluster):
    """Runs last in this module: every process `up` started is gone, nothing else was touched."""
    pids = {p.stem: int(p.read_text().split()[0]) for p in (cluster.root / "cluster" / "pids").glob("*.pid")}
    assert {"api-server", "scheduler", "dag-processor", "triggerer", "worker-1", "worker-2"} <= set(pids)
    bystander = subprocess.Popen(["sleep", "300"])  # a process of ours that `down` must leave alone
    try:
        cluster.run("down")
        for name, pid in pids.items():
            assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes(), name
        assert bystander.poll() is None
        cluster.run("down")  # idempotent: a second down finds nothing to stop and succeeds
    finally:
        bystander.kill()
