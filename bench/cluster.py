"""Scale-out benchmark: the nightly DAG converts the same batch of images on a CeleryExecutor
cluster (``scripts/cluster.sh``) with 1 and then 2 workers; prints images per hour and the speed-up.

    .venv/bin/python bench/cluster.py [--images 6] [--layer-mib 48] [--workers 1,2]

Each run starts a fresh cluster (its own metadata and dedup databases, purged afterwards), so
nothing is reused between runs: every image is converted from scratch. The images are independent
(no shared layers). Wall time is from the REST trigger to the run's success; it includes the
scheduler's and Celery's latencies, which is what a nightly run costs. On a 2-core machine the
second worker adds no CPU: the speed-up shows how well the stages overlap (one worker's build
while another's downloads and pushes), not more cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests" / "airflow"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo_image  # noqa: E402
from airflow_live import RemoteAirflow, free_port  # noqa: E402
from registry import local_registry, push_layout  # noqa: E402


def image_layers(n: int, mib: int) -> list[dict]:
    """Two layers of their own per image: ``mib`` MiB of half-compressible data and a small one."""
    seed = hashlib.sha256(f"bench-cluster-{n}".encode()).digest()
    chunk = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(16384))  # 512 KiB
    text = (f"image {n} line\n" * 32768).encode()[: 1 << 19]
    big = {f"data/{i:03d}.bin": chunk if i % 2 else text for i in range(mib * 2)}
    return [big, {f"app/{n}/README": f"image {n}\n".encode()}]


def run_cluster(workers: int, sources: list[str], registry: str, root: Path, timeout: float) -> dict:
    name = f"obd_bench_w{workers}_{os.getpid()}"
    host, port = registry.rsplit(":", 1)
    conn = {"conn_type": "oci_registry", "host": host, "port": int(port), "extra": {"plain_http": True}}
    extra = [f"AIRFLOW_CONN_OCI_REGISTRY_{registry.replace('.', '_').replace(':', '_')}={json.dumps(conn)}",
             f"OVERLAYBD_MAX_PARALLEL={2 * workers}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "OVERLAYBD_CLUSTER_DIR": str(root / f"cluster-{workers}"), "OVERLAYBD_WORKERS": str(workers),
        "OVERLAYBD_CLUSTER_PORT": str(free_port()), "OVERLAYBD_CLUSTER_LOG_PORT": str(free_port()),
        "OVERLAYBD_CLUSTER_TRIGGER_LOG_PORT": str(free_port()), "OVERLAYBD_CLUSTER_NAME": name,
        "OVERLAYBD_CLUSTER_REDIS": f"redis://127.0.0.1:6379/{6 + workers}",
        "OVERLAYBD_CLUSTER_ENV": "\n".join(extra),
    })
    script = ["bash", str(REPO / "scripts" / "cluster.sh")]
    subprocess.run([*script, "up"], env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        values = dict(line.split("=", 1) for line in (root / f"cluster-{workers}" / "env").read_text().splitlines())
        rest = RemoteAirflow(url=values["AIRFLOW_URL"], user=values["AIRFLOW_USER"],
                             password=values["AIRFLOW_PASSWORD"], log_dir=root / f"cluster-{workers}" / "logs")
        rest.wait_dag("overlaybd_nightly", timeout=180)
        images = [{"source": src, "destination": f"{registry}/bench-w{workers}/img{i}:obd"}
                  for i, src in enumerate(sources)]
        r = rest.api("POST", "/api/v2/variables", json={"key": "overlaybd_images", "value": json.dumps(images)})
        r.raise_for_status()
        rest.unpause("overlaybd_nightly")
        started = time.monotonic()
        run_id = rest.trigger("overlaybd_nightly", {})
        state = rest.wait_run("overlaybd_nightly", run_id, timeout=timeout)
        wall = time.monotonic() - started
        if state != "success":
            raise SystemExit(f"{workers} worker(s): the run ended {state}\n{rest.logs()}")
        tis = rest.task_instances("overlaybd_nightly", run_id)
        builds = [t for t in tis if t["task_id"] == "convert.build"]
        return {"workers": workers, "images": len(sources), "wall": wall,
                "hosts": sorted({t["hostname"] for t in tis if t["task_id"].startswith("convert.")}),
                "build_seconds": sum(float(t.get("duration") or 0) for t in builds)}
    finally:
        subprocess.run([*script, "down", "--purge"], env=env, cwd=REPO, stdout=subprocess.DEVNULL, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--layer-mib", type=int, default=48)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp, local_registry(Path(tmp)) as registry:
        root = Path(tmp)
        sources = []
        for n in range(args.images):
            layout = root / f"src-{n}"
            demo_image.make_image(layout, "v1", image_layers(n, args.layer_mib))
            push_layout(layout, "v1", f"{registry}/bench-src/img{n}:v1")
            sources.append(f"{registry}/bench-src/img{n}:v1")
        results = [run_cluster(w, sources, registry, root, args.timeout) for w in counts]
    load = os.getloadavg()
    print(f"\nnightly DAG, {args.images} independent images of ~{args.layer_mib} MiB, CeleryExecutor "
          f"(scripts/cluster.sh), {os.cpu_count()} cores, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
    print(f"{'workers':>7} {'wall s':>8} {'images/hour':>12} {'speed-up':>9} {'build task s':>13}  hosts")
    base = results[0]["wall"]
    for r in results:
        print(f"{r['workers']:>7} {r['wall']:>8.1f} {3600 * r['images'] / r['wall']:>12.0f} "
              f"{base / r['wall']:>8.2f}x {r['build_seconds']:>13.1f}  {', '.join(r['hosts'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
