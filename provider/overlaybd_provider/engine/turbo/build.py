"""Build one layer of a TurboOCIv1 image: a meta blob over its source, or (a source TurboOCI
cannot read) a native layer over the TurboOCI lowers. The source's digest, size and diff_id are
checked before anything is written (``ext4.turbo``), so no unverified layer is ever recorded."""

from __future__ import annotations

import logging
import time

from overlaybd_provider.engine.errors import relabel_layer_error
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.engine.plan.model import ImagePlan, LayerPlan
from overlaybd_provider.engine.transfer.blobcache import BlobCache
from overlaybd_provider.engine.transfer.workspace import Workspace
from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.formats.gzworker import InflateJob

__all__ = ["build_both_layers", "build_turbo_layer", "set_info"]

log = logging.getLogger(__name__)


def set_info(ws: Workspace, layer: LayerPlan, digest: str, size: int) -> None:
    """blob.json with what a TurboOCI layer's documents need besides digest and size."""
    ws.write_json(ws.blob_info_path(layer), {"digest": digest, "size": size, "kind": layer.kind,
                                             "out_diff_id": layer.out_diff_id})


def build_turbo_layer(ws: Workspace, image: ImagePlan, layer: LayerPlan, options: ConvertOptions,
                      cache: BlobCache | None = None, inflate: InflateJob | None = None):
    """The layer's blob in the workspace; its source is kept (TurboOCI lowers above read it).
    ``inflate``: the source's inflate, started ahead (``engine.transfer.prefetch``); the caller closes it."""
    from overlaybd_provider.engine.transfer.layerops import LayerStats, build_layer, lower_files
    from overlaybd_provider.ext4.mkfs import MkfsOptions
    from overlaybd_provider.ext4.turbo import apply_turbo_layer
    from overlaybd_provider.formats.gzcheckpoint import NotTurboCapable

    if layer.kind != "turbo":
        return build_layer(ws, image, layer, options, cache=cache, keep_source=True)
    started = time.monotonic()
    source, out = ws.source_blob(layer), ws.blob_path(layer)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        res = apply_turbo_layer(
            [str(p) for p in lower_files(ws, image, layer.index)], source, out,
            source_media_type=layer.source_media_type, expected_digest=layer.source_digest,
            expected_size=layer.source_size, diff_id=layer.diff_id, vsize_gb=options.vsize_gb, inflate=inflate,
            mkfs_options=MkfsOptions(**options.fstype.mkfs_kwargs()) if options.fstype.mkfs_options else None)
    except NotTurboCapable as exc:
        log.info("[%s] layer %d cannot be TurboOCI (%s): a native overlaybd layer instead", image.label,
                 layer.index, exc)
        layer.kind = "overlaybd"
        return build_layer(ws, image, layer, options, cache=cache, keep_source=True)
    except OverlaybdError as exc:
        # a lying or corrupt source (digest, size, diff_id, gzip data): nothing written or recorded
        raise relabel_layer_error(exc, image, layer, source) from None
    layer.out_diff_id = res.diff_id
    set_info(ws, layer, res.digest, res.size)
    if cache is not None:
        cache.put(out, res.digest, res.size)
    return LayerStats(bytes_in=res.source_size, bytes_out=res.size, seconds=time.monotonic() - started)


def build_both_layers(ws: Workspace, image: ImagePlan, n: LayerPlan, twin_image: ImagePlan, t: LayerPlan,
                      options: ConvertOptions, cache: BlobCache | None = None, inflate: InflateJob | None = None):
    """Output ``both``: native layer ``n`` and TurboOCI layer ``t`` of one source from one pass
    (``ext4.dual``); None when the source is not TurboOCI-capable after all (build one by one).
    ``inflate``: the source's inflate, started ahead; the caller closes it."""
    import contextlib
    import os
    import tempfile

    from overlaybd_provider.engine.transfer.layerops import LayerStats, lower_files
    from overlaybd_provider.ext4.dual import apply_both_to_stack
    from overlaybd_provider.ext4.mkfs import MkfsOptions
    from overlaybd_provider.formats.gzcheckpoint import NotTurboCapable
    from overlaybd_provider.formats.stack import LayerStack
    from overlaybd_provider.formats.turbo import open_layer_spec

    started = time.monotonic()
    source = ws.source_blob(n)
    nout, tout = ws.blob_path(n), ws.blob_path(t)
    mkfs = MkfsOptions(**options.fstype.mkfs_kwargs()) if options.fstype.mkfs_options else None
    temps: list[str] = []
    with contextlib.ExitStack() as ctx:
        def stack(img: ImagePlan, layer: LayerPlan):
            opened = [ctx.enter_context(open_layer_spec(p, spool_dir=str(ws.root))) for p in
                      lower_files(ws, img, layer.index)]
            return LayerStack([lf.lsmt for lf in opened], check_chain=False) if opened else None

        def tmp_for(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append(name)
            return ctx.enter_context(os.fdopen(fd, "w+b"))

        try:
            nstack, tstack = stack(image, n), stack(twin_image, t)
            src = ctx.enter_context(open(source, "rb"))
            nf, tf = tmp_for(nout), tmp_for(tout)
            res = apply_both_to_stack(
                nstack, tstack, src, nf, tf, source_media_type=n.source_media_type,
                expected_digest=n.source_digest, expected_size=n.source_size, diff_id=n.diff_id,
                vsize_gb=options.vsize_gb, algorithm=options.algorithm, block_size_kb=options.block_size_kb,
                uuid=n.uuid, parent_uuid=n.parent_uuid or None, mkfs_options=mkfs, spool_dir=str(ws.root),
                name=str(source), inflate=inflate)
            nf.flush()
            tf.flush()
            os.replace(temps[0], nout)
            os.replace(temps[1], tout)
            temps.clear()
        except NotTurboCapable as exc:
            log.info("[%s] layer %d: no one-pass build (%s)", image.label, n.index, exc)
            return None
        except OverlaybdError as exc:
            raise relabel_layer_error(exc, image, n, source) from None
        finally:
            for name in temps:
                with contextlib.suppress(OSError):
                    os.unlink(name)
    seconds = time.monotonic() - started
    ws.set_blob_info(n, res.native.digest, res.native.size)
    t.out_diff_id = res.turbo.diff_id
    set_info(ws, t, res.turbo.digest, res.turbo.size)
    if cache is not None:
        cache.put(nout, res.native.digest, res.native.size)
        cache.put(tout, res.turbo.digest, res.turbo.size)
    half = seconds / 2  # one pass made both: each layer's recorded cost is half of it
    return (LayerStats(bytes_in=n.source_size, bytes_out=res.native.size, seconds=half),
            LayerStats(bytes_in=0, bytes_out=res.turbo.size, seconds=half))
