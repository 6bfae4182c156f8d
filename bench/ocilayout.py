"""An OCI image layout of corpus layers (gzip level 6, mtime 0: bit-for-bit reproducible)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

from layertar import Layer


def _blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _gzip_blob(layout: Path, layer: Layer) -> dict:
    tmp = layout / "blobs/sha256/.part"
    h = hashlib.sha256()
    with (layer.path.open("rb") as src, tmp.open("wb") as raw,
          gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz):
        while chunk := src.read(1 << 20):
            gz.write(chunk)
    with tmp.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    size = tmp.stat().st_size
    tmp.replace(layout / "blobs/sha256" / h.hexdigest())
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": f"sha256:{h.hexdigest()}",
            "size": size}


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build_layout(layout: Path, images: dict[str, tuple[Layer, ...]]) -> Path:
    """OCI image layout with one tag per image; gzip layers (level 6, mtime 0) like a real registry."""
    if (layout / "index.json").exists():
        return layout
    tmp = layout.with_name(layout.name + ".part")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "blobs/sha256").mkdir(parents=True)
    (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    gz: dict[Path, dict] = {}
    manifests = []
    for tag, layers in images.items():
        for layer in layers:
            if layer.path not in gz:
                gz[layer.path] = _gzip_blob(tmp, layer)
        config = {
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/bash"], "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created_by": f"bench layer {layer.name}"} for layer in layers],
        }
        cfg = {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(tmp, _dumps(config))}
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": cfg, "layers": [gz[layer.path] for layer in layers]}
        desc = _blob(tmp, _dumps(manifest))
        manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", **desc,
                          "annotations": {"org.opencontainers.image.ref.name": tag}})
    (tmp / "index.json").write_bytes(_dumps({"schemaVersion": 2, "manifests": manifests}))
    if layout.exists():
        shutil.rmtree(layout)
    tmp.rename(layout)
    return layout
