"""Per-layer work shared by ``convert_image`` and the build stage: fetch and build.

Each function is idempotent: finished output (verified) is kept, anything else is redone, and
outputs appear atomically (temp file + rename).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from overlaybd_provider.engine.errors import EngineError, relabel_layer_error
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.engine.plan.model import ImagePlan, LayerPlan
from overlaybd_provider.engine.transfer.blobcache import BlobCache
from overlaybd_provider.engine.transfer.endpoint import Endpoint
from overlaybd_provider.engine.transfer.workspace import Workspace

if TYPE_CHECKING:
    from overlaybd_provider.ext4.layerdecode import DecodeJob

__all__ = ["LayerStats", "build_layer", "fetch_reused", "fetch_source", "lower_files", "sources_present"]

log = logging.getLogger(__name__)


@dataclass
class LayerStats:
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0


def fetch_source(ws: Workspace, src: Endpoint, layer: LayerPlan, cache: BlobCache | None = None) -> int:
    """Download the source layer (digest/size verified by the store); returns bytes fetched.
    A flattened layer fetches each of its source layers (``layer.parts``).

    A valid entry of this machine's blob ``cache`` is linked instead (0 bytes fetched), and a
    download is added to it: a retry of the build on this machine, or another image sharing
    the layer, does not download it again."""
    if layer.parts is not None:
        return sum(_fetch_blob(ws.part_blob(layer, n), src, part["digest"], int(part["size"]), cache)
                   for n, part in enumerate(layer.parts))
    with ws.source_lock(layer):  # one download when two plans (native + TurboOCI) need it
        return _fetch_blob(ws.source_blob(layer), src, layer.source_digest, layer.source_size, cache)


def sources_present(ws: Workspace, layer: LayerPlan) -> bool:
    """Every source blob ``layer`` is built from is in the work directory."""
    if layer.parts is not None:
        return all(ws.part_blob(layer, n).exists() for n in range(len(layer.parts)))
    return ws.source_blob(layer).exists()


def _fetch_blob(path: Path, src: Endpoint, digest: str, size: int, cache: BlobCache | None) -> int:
    if path.exists() and path.stat().st_size == size:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    if cache is not None and cache.get(digest, size, path):
        return 0
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.part")
    src.fetch_blob(digest, size, tmp)
    os.replace(tmp, path)
    if cache is not None:
        cache.put(path, digest, size)
    return size


def fetch_reused(ws: Workspace, dst: Endpoint, layer: LayerPlan, cache: BlobCache | None = None) -> int:
    """Download a reused converted blob: a later layer is built on it (image.md §6).

    A valid entry of the local blob ``cache`` is linked instead (0 bytes fetched); a download
    (digest/size verified by the store) is added to the cache."""
    if ws.blob_info(layer) is not None:
        return 0
    assert layer.digest is not None and layer.size is not None
    path = ws.blob_path(layer)
    path.parent.mkdir(parents=True, exist_ok=True)
    if cache is not None and cache.get(layer.digest, layer.size, path):
        ws.set_blob_info(layer, layer.digest, layer.size)
        return 0
    tmp = path.with_name(f".commit.{os.getpid()}.{threading.get_ident()}.part")
    dst.fetch_blob(layer.digest, layer.size, tmp)
    os.replace(tmp, path)
    ws.set_blob_info(layer, layer.digest, layer.size)
    if cache is not None:
        cache.put(path, layer.digest, layer.size)
    return layer.size


def lower_files(ws: Workspace, image: ImagePlan, upto: int) -> list[Path | str]:
    """Blobs of layers ``0..upto-1``, bottom first; a TurboOCI lower is ``turbo:META,SOURCE``."""
    out: list[Path | str] = []
    for lower in image.layers[:upto]:
        if ws.blob_info(lower) is None:
            raise EngineError(f"[{image.label}] layer {lower.index} is not available as a lower for layer {upto}")
        if lower.kind == "turbo":
            source = ws.source_blob(lower)
            if not source.is_file():
                raise EngineError(f"[{image.label}] layer {lower.index}: its source layer is not here (a TurboOCI "
                                  f"lower of layer {upto})")
            out.append(f"turbo:{ws.blob_path(lower)},{source}")
        else:
            out.append(ws.blob_path(lower))
    return out


def build_layer(ws: Workspace, image: ImagePlan, layer: LayerPlan, options: ConvertOptions,
                cache: BlobCache | None = None, keep_source: bool = False, decode: DecodeJob | None = None
                ) -> LayerStats:
    """Apply the source tar on the lowers straight into the finished layer blob (one pass), the
    content checked against the layer's diff_id; the blob goes into the blob ``cache``. A
    flattened layer applies every source tar, each checked against its own diff_id, onto one
    upper layer sealed once. ``decode``: the source's decode, started ahead
    (``engine.transfer.prefetch``; the caller closes it)."""
    from overlaybd_provider.ext4.apply import apply_layers
    from overlaybd_provider.ext4.errors import DiffIdMismatchError, Ext4Error
    from overlaybd_provider.ext4.mkfs import MkfsOptions

    started = time.monotonic()
    lowers = lower_files(ws, image, layer.index)
    if layer.parts is not None:
        sources = [ws.part_blob(layer, n) for n in range(len(layer.parts))]
        tars = [(path, part["diff_id"], part["digest"]) for path, part in zip(sources, layer.parts, strict=True)]
    else:
        sources = [ws.source_blob(layer)]
        tars = [(sources[0], layer.diff_id, layer.source_digest)]
    out = ws.blob_path(layer)
    out.parent.mkdir(parents=True, exist_ok=True)
    mkfs = MkfsOptions(**options.fstype.mkfs_kwargs()) if options.fstype.mkfs_options else None
    try:
        result = apply_layers(
            lowers, tars, out,
            vsize_gb=options.vsize_gb, algorithm=options.algorithm, block_size_kb=options.block_size_kb,
            uuid=layer.uuid, parent_uuid=layer.parent_uuid or None, mkfs_options=mkfs,
            trim=layer.parts is not None and not lowers,  # flattened: dead blocks left out
            decode_jobs=[decode] if decode is not None and layer.parts is None else (),
        )  # writes a temporary name and renames it on success
    except DiffIdMismatchError as exc:
        # The config lied about this layer (dedup poisoning, docs/dedup.md): nothing was written.
        raise DiffIdMismatchError(f"[{image.label}] layer {layer.index}: {exc}") from None
    except Ext4Error as exc:  # a corrupt or unsupported source (gzip data, tar, entries): nothing written
        if layer.parts is not None:
            raise  # flattened: the error names the source layer already
        raise relabel_layer_error(exc, image, layer, sources[0]) from None
    stats = LayerStats(bytes_in=sum(p.stat().st_size for p in sources), bytes_out=result.size,
                       seconds=time.monotonic() - started)
    ws.set_blob_info(layer, result.digest, result.size)
    if cache is not None:
        cache.put(out, result.digest, result.size)
    if not options.reserve and not keep_source:
        for path in sources:
            path.unlink(missing_ok=True)
    return stats
