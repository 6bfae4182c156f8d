"""Small synthetic images written as OCI layouts (deterministic bytes), for registry tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from overlaybd_provider.oci.descriptor import Descriptor
from overlaybd_provider.oci.layout import LayoutStore
from overlaybd_provider.oci.mediatypes import MediaType


def tar_layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def write_image(layout_dir: Path, tag: str, layers: list[dict[str, bytes]], *, docker: bool = False,
                arch: str = "amd64", claim_diff_ids: dict[int, str] | None = None) -> Descriptor:
    """Write an image of gzip layers into ``layout_dir`` (created), tagged ``tag``.

    ``claim_diff_ids`` makes the config lie: ``{layer index: diff_id}`` replaces the real
    diff_id of those layers (a poisoning attempt)."""
    store = LayoutStore(layout_dir)
    layer_type = MediaType.DOCKER_LAYER_GZIP if docker else MediaType.OCI_LAYER_GZIP
    layer_descs, diff_ids = [], []
    for files in layers:
        blob = tar_layer(files)
        digest = _put(store, layout_dir, blob)
        layer_descs.append({"mediaType": layer_type.value, "digest": digest, "size": len(blob)})
        diff_ids.append("sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest())
    for index, claimed in (claim_diff_ids or {}).items():
        diff_ids[index] = claimed
    config = json.dumps({
        "architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }, separators=(",", ":")).encode()
    config_digest = _put(store, layout_dir, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": (MediaType.DOCKER_MANIFEST if docker else MediaType.OCI_MANIFEST).value,
        "config": {"mediaType": (MediaType.DOCKER_CONFIG if docker else MediaType.OCI_CONFIG).value,
                   "digest": config_digest, "size": len(config)},
        "layers": layer_descs,
    }
    data = json.dumps(manifest, separators=(",", ":")).encode()
    return store.push_manifest(data, manifest["mediaType"], tag)


def _put(store: LayoutStore, layout_dir: Path, blob: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    tmp = layout_dir.parent / f".blob-{digest[7:19]}"
    layout_dir.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(blob)
    store.push_blob(tmp, digest, len(blob))
    tmp.unlink()
    return digest
