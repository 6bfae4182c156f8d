"""What a TurboOCIv1 image's documents need beyond a native one: per-layer descriptors with
upstream's turbo annotations, the config diff_id of each meta blob (sha256 of its tar), and the
source layers its meta blobs read from, made present in the destination (docs/turbo-oci.md §7)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import zlib
from pathlib import Path
from typing import Any

from overlaybd_provider.engine.documents import gotypes
from overlaybd_provider.engine.documents import manifests as mf
from overlaybd_provider.engine.plan.model import ImagePlan, LayerPlan
from overlaybd_provider.engine.transfer.endpoint import Endpoint
from overlaybd_provider.engine.transfer.workspace import Workspace
from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.formats.turbo import (
    TurboBlobInfo,
    target_media_type,
    turbo_annotations,
    turbo_capability,
    turbo_layer_media_type,
)
from overlaybd_provider.oci.errors import DigestMismatchError, NotFoundError

__all__ = ["SourceLayerMissing", "config_diff_id", "ensure_sources", "layer_descriptor", "meta_diff_id"]

log = logging.getLogger(__name__)


class SourceLayerMissing(OverlaybdError):
    """A source layer a TurboOCI meta blob reads from cannot be put into the destination."""

    retryable = False


def meta_diff_id(path: Path) -> str:
    """sha256 of the uncompressed meta tar (upstream's diff_id of a TurboOCI layer)."""
    h = hashlib.sha256()
    d = zlib.decompressobj(31)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(d.decompress(chunk))
    h.update(d.flush())
    return "sha256:" + h.hexdigest()


def config_diff_id(ws: Workspace, dst: Endpoint | None, layer: LayerPlan) -> str:
    """The config's diff_id for ``layer``: its digest (native) or its meta tar's sha256, read
    from the workspace blob or, for a reused layer, from the (small) meta blob in ``dst``."""
    assert layer.digest is not None and layer.size is not None
    if layer.kind != "turbo":
        return layer.digest
    if layer.out_diff_id is None:
        info = ws.blob_info(layer)
        path = ws.blob_path(layer)
        if info is None or info["digest"] != layer.digest:
            if dst is None:
                raise OverlaybdError(f"layer {layer.index}: meta blob {layer.digest} is not here")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".meta.{os.getpid()}.{threading.get_ident()}.part")
            dst.fetch_blob(layer.digest, layer.size, tmp)  # verified by digest and size
            os.replace(tmp, path)
            ws.write_json(ws.blob_info_path(layer), {"digest": layer.digest, "size": layer.size})
        layer.out_diff_id = meta_diff_id(path)
    return layer.out_diff_id


def layer_descriptor(layer: LayerPlan, *, oci: bool, fs_type: str | None) -> dict[str, Any]:
    """The manifest's descriptor of one layer of a TurboOCIv1 image (``UploadLayer``)."""
    assert layer.digest is not None and layer.size is not None
    if layer.kind != "turbo":
        return mf.layer_descriptor(layer.digest, layer.size, oci=oci, fs_type=fs_type)
    is_gzip = turbo_capability(layer.source_media_type)[1] == "gzip"
    blob = TurboBlobInfo(layer.digest, layer.size, layer.out_diff_id or "", 0)
    d = gotypes.zero(gotypes.DESCRIPTOR)
    d.update(mediaType=turbo_layer_media_type(oci), digest=layer.digest, size=layer.size,
             annotations=turbo_annotations(blob, layer.source_digest,
                                           target_media_type(layer.source_media_type, is_gzip)))
    return d


def ensure_sources(ws: Workspace, src: Endpoint | None, dst: Endpoint, image: ImagePlan) -> int:
    """Every source layer a meta blob of ``image`` reads from is in ``dst``: already there,
    mounted from the source repository (same registry), or copied (another registry, an OCI
    layout, a refused mount). Returns how many were mounted or copied."""
    n = 0
    for layer in image.layers:
        if layer.kind != "turbo" or dst.has_blob(layer.source_digest):
            continue
        local = ws.source_blob(layer)
        try:
            if local.is_file() and local.stat().st_size == layer.source_size and not _same_registry(src, dst):
                dst.push_blob_file(local, layer.source_digest, layer.source_size)
            elif src is not None:
                dst.store.mount_blob(layer.source_digest, layer.source_size, src.store)
            else:
                raise NotFoundError(f"{layer.source_digest}: no source endpoint")
        except (NotFoundError, DigestMismatchError) as exc:
            if local.is_file() and local.stat().st_size == layer.source_size:
                dst.push_blob_file(local, layer.source_digest, layer.source_size)  # verified when built
            else:
                raise SourceLayerMissing(
                    f"[{image.label}] layer {layer.index}: source layer {layer.source_digest} (read by its TurboOCI "
                    f"meta blob) is not in {dst.text} and cannot be had from {src.text if src else 'the source'}: "
                    f"{exc}") from None
        n += 1
    return n


def _same_registry(src: Endpoint | None, dst: Endpoint) -> bool:
    return src is not None and src.is_registry and dst.is_registry and src.host == dst.host
