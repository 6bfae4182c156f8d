"""Build one layer of a TurboOCIv1 image: a meta blob over its source, or (a source TurboOCI
cannot read) a native layer over the TurboOCI lowers. The source's digest, size and diff_id are
checked before anything is written (``ext4.turbo``), so no unverified layer is ever recorded."""

from __future__ import annotations

import logging
import time

from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.engine.plan.model import ImagePlan, LayerPlan
from overlaybd_provider.engine.transfer.blobcache import BlobCache
from overlaybd_provider.engine.transfer.workspace import Workspace
from overlaybd_provider.errors import OverlaybdError

__all__ = ["build_turbo_layer", "set_info"]

log = logging.getLogger(__name__)


def set_info(ws: Workspace, layer: LayerPlan, digest: str, size: int) -> None:
    """blob.json with what a TurboOCI layer's documents need besides digest and size."""
    ws.write_json(ws.blob_info_path(layer), {"digest": digest, "size": size, "kind": layer.kind,
                                             "out_diff_id": layer.out_diff_id})


def build_turbo_layer(ws: Workspace, image: ImagePlan, layer: LayerPlan, options: ConvertOptions,
                      cache: BlobCache | None = None):
    """The layer's blob in the workspace; its source is kept (TurboOCI lowers above read it)."""
    from overlaybd_provider.engine.transfer.layerops import LayerStats, build_layer, lower_files
    from overlaybd_provider.ext4.mkfs import MkfsOptions
    from overlaybd_provider.ext4.turbo import apply_turbo_layer
    from overlaybd_provider.formats.gzcheckpoint import NotTurboCapable

    if layer.kind != "turbo":
        return build_layer(ws, image, layer, options, cache=cache)
    started = time.monotonic()
    source, out = ws.source_blob(layer), ws.blob_path(layer)
    try:
        res = apply_turbo_layer(
            [str(p) for p in lower_files(ws, image, layer.index)], source, out,
            source_media_type=layer.source_media_type, expected_digest=layer.source_digest,
            expected_size=layer.source_size, diff_id=layer.diff_id, vsize_gb=options.vsize_gb,
            mkfs_options=MkfsOptions(**options.fstype.mkfs_kwargs()) if options.fstype.mkfs_options else None)
    except NotTurboCapable as exc:
        log.info("[%s] layer %d cannot be TurboOCI (%s): a native overlaybd layer instead", image.label,
                 layer.index, exc)
        layer.kind = "overlaybd"
        return build_layer(ws, image, layer, options, cache=cache)
    except OverlaybdError as exc:
        # a lying or corrupt source (digest, size, diff_id, gzip data): nothing written or recorded;
        # the message names the layer, not the scratch path
        why = str(exc).replace(f"{source}: ", "").replace(str(source), layer.source_digest)
        try:
            renamed = type(exc)(f"[{image.label}] layer {layer.index} ({layer.source_digest[:19]}): {why}")
        except TypeError:
            raise exc from None
        raise renamed from None
    layer.out_diff_id = res.diff_id
    set_info(ws, layer, res.digest, res.size)
    if cache is not None:
        cache.put(out, res.digest, res.size)
    return LayerStats(bytes_in=res.source_size, bytes_out=res.size, seconds=time.monotonic() - started)
