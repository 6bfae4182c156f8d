"""``overlaybd convert --flatten`` next to the native conversion of the same images (issue #17).

Images (OCI layouts of gzip layers, deterministic):

* ``ten-features``: the ten-layer test image (tests/support/flatimage.py: whiteouts, opaque dirs,
  hard links across layers, xattrs, devices; a 3 MiB file deleted by layer 7);
* ``N-layers-churn`` (``--layers N``, default 30): each layer adds 40 small files and a 2 MB
  random file and deletes the one the layer below added (the build-step churn of images with
  tens of layers).

For each: convert natively and with ``--flatten`` (fresh processes, no dedup, no blob cache),
then ``overlaybd verify`` the flattened image against the N-layer source.

    .venv/bin/python bench/flatten.py [--layers N] [--runs R]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import random
import shutil
import statistics
import sys
import tarfile
import tempfile
from pathlib import Path

from measure import overlaybd_cli, run_once

REPO = Path(__file__).resolve().parents[1]
MB = 1_000_000


def _layout(layout: Path, tars: list[Path]) -> str:
    """A gzip-layer OCI layout of ``tars`` (bottom first), tag ``v1``."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return "sha256:" + digest, len(data)

    layers, diff_ids = [], []
    for tar in tars:
        raw = tar.read_bytes()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        digest, size = put(gzip.compress(raw, compresslevel=1, mtime=0))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size})
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created_by": f"RUN step {n}"} for n in range(len(tars))]}
    cdigest, csize = put(json.dumps(config, sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest,
                           "size": csize}, "layers": layers}
    mdigest, msize = put(json.dumps(manifest, sort_keys=True).encode())
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": manifest["mediaType"], "digest": mdigest, "size": msize,
         "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))
    return f"oci:{layout}:v1"


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"") -> None:
    ti = tarfile.TarInfo(name)
    ti.mtime, ti.mode, ti.size = 1_700_000_000, 0o644, len(data)
    tf.addfile(ti, io.BytesIO(data))


def churn_layers(work: Path, count: int) -> list[Path]:
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(17)
    out = []
    for n in range(count):
        path = work / f"churn-{n:03d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
            if n:
                _add(tf, f"cache/.wh.blob-{n - 1:03d}.bin")
            _add(tf, f"cache/blob-{n:03d}.bin", rng.randbytes(2 * MB))
            for i in range(40):
                _add(tf, f"etc/step-{n:03d}/file-{i:02d}.conf", f"step {n} value {i}\n".encode() * (1 + i % 7))
        out.append(path)
    return out


def ten_layers(work: Path) -> list[Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from support.flatimage import write_ten_layers

    return write_ten_layers(work)


def _report(path: Path) -> dict:
    m = json.loads(path.read_text())["manifests"][0]
    return {"layers": len(m["layers"]), "bytes": sum(int(la["size"] or 0) for la in m["layers"]),
            "source_bytes": sum(int(la["source_size"]) for la in m["layers"]), "flatten": m.get("flatten")}


def measure(case: str, src: str, work: Path, runs: int) -> dict:
    times: dict[str, list[float]] = {"native": [], "flatten": [], "verify": []}
    sizes: dict[str, dict] = {}
    for _ in range(runs):
        for mode in ("native", "flatten"):
            out = work / f"{case}-{mode}"
            shutil.rmtree(out, ignore_errors=True)
            rep = work / f"{case}-{mode}.json"
            cmd = [*overlaybd_cli(), "convert", src, f"oci:{out}:v1", "--db-url", "none", "--blob-cache", "none",
                   "--output-json", str(rep)] + (["--flatten"] if mode == "flatten" else [])
            times[mode].append(run_once(cmd).seconds)
            sizes[mode] = _report(rep)
        ver = run_once([*overlaybd_cli(), "verify", src, f"oci:{work / f'{case}-flatten'}:v1"], check=False)
        if ver.returncode != 0:
            raise SystemExit(f"verify {case} (flattened) failed ({ver.returncode}):\n{ver.stderr}")
        times["verify"].append(ver.seconds)
    src_layers = sizes["flatten"]["flatten"]["source_layers"]
    src_bytes = sizes["flatten"]["flatten"]["source_bytes"]
    return {"case": case, "source": f"{src_layers} layers, {src_bytes / MB:.2f} MB",
            "native": f"{sizes['native']['layers']} layers, {sizes['native']['bytes'] / MB:.2f} MB",
            "flattened": f"{sizes['flatten']['layers']} layer, {sizes['flatten']['bytes'] / MB:.2f} MB",
            "native s": f"{statistics.median(times['native']):.2f}",
            "flatten s": f"{statistics.median(times['flatten']):.2f}",
            "verify flat s": f"{statistics.median(times['verify']):.2f}"}


def table(rows: list[dict]) -> str:
    head = list(rows[0])
    cells = [head] + [[r[k] for k in head] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=30, help="layers of the churn image")
    parser.add_argument("--runs", type=int, default=1, help="conversions per image (median)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-flatten-"))
    try:
        cases = [("ten-features", _layout(work / "ten", ten_layers(work / "ten-tars"))),
                 (f"{args.layers}-layers-churn", _layout(work / "churn", churn_layers(work / "churn-tars",
                                                                                      args.layers)))]
        rows = [measure(case, src, work, args.runs) for case, src in cases]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    print("(sizes: converted layer blobs; source: the gzip layer blobs; times: wall seconds of fresh processes, "
          "median of --runs; verify: the flattened image against the N-layer source, e2fsck included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
