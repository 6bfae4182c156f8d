"""The conversion split into idempotent stages for orchestrators (docs/engine-stages.md).

``pull → build → compress → push → record``; all state is in the staging directory, results are
small JSON-able dicts with paths relative to it. Every stage can be retried: finished work is
verified and kept, unfinished work redone.
"""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from overlaybd_provider.engine.dedup import DedupStore
from overlaybd_provider.engine.errors import StageError
from overlaybd_provider.engine.options import ConvertOptions, parse_fstype
from overlaybd_provider.engine.plan.model import ImagePlan, Plan
from overlaybd_provider.engine.plan.planner import make_plan, resolve_dedup
from overlaybd_provider.engine.report import Progress, add_stats, build_report, emit
from overlaybd_provider.engine.transfer import layerops, publish
from overlaybd_provider.engine.transfer.blobcache import BlobCache
from overlaybd_provider.engine.transfer.endpoint import Endpoint, open_endpoint
from overlaybd_provider.engine.transfer.workspace import Workspace
from overlaybd_provider.oci.options import RegistryOptions

__all__ = ["build", "cleanup", "compress", "download_inputs", "options_from_plan", "pull", "push", "record", "report",
           "start_downloads"]

log = logging.getLogger(__name__)
DOWNLOADS_PER_IMAGE = 4  # concurrent blob downloads per image


def options_from_plan(plan: Plan) -> ConvertOptions:
    o = plan.options
    return ConvertOptions(
        algorithm=o["algorithm"], block_size_kb=o["block_size_kb"], vsize_gb=o["vsize_gb"],
        fstype=parse_fstype(o["fstype"]), oci=o["oci"], referrer=o["referrer"], platforms=tuple(o["platforms"]),
        concurrency_limit=o["concurrency_limit"], reserve=o["reserve"], no_upload=o["no_upload"],
    )


def _selected(plan: Plan, platform: str | None) -> list[ImagePlan]:
    images = [i for i in plan.images if not i.cached]
    if platform:
        images = [i for i in images if i.platform == platform or i.platform.startswith(platform + "/")]
    return images


def _map(images: list[ImagePlan], limit: int, fn) -> list[Any]:
    if limit <= 1 or len(images) <= 1:
        return [fn(i) for i in images]
    with ThreadPoolExecutor(limit, thread_name_prefix="obd-image") as pool:
        return list(pool.map(fn, images))


def start_downloads(pool: ThreadPoolExecutor, ws: Workspace, plan: Plan, image: ImagePlan, src: Endpoint,
                    dst: Endpoint | None, progress: Progress | None = None,
                    cache: BlobCache | None = None) -> dict[int, Future[int]]:
    """Submit the downloads a build of ``image`` needs: source tars of layers to build, and reused
    blobs that a built layer stands on. Returns ``{layer index: future of bytes fetched}``.

    Each output appears atomically, and a reused blob found in the local blob ``cache`` is
    linked instead of downloaded."""
    builds = [layer.index for layer in image.layers if layer.action == "build" and ws.blob_info(layer) is None]
    last_build = max(builds, default=-1)
    jobs = []
    for layer in image.layers:
        if layer.index in builds and not ws.lsmt_path(layer).exists():
            jobs.append((layer, lambda layer=layer: layerops.fetch_source(ws, src, layer)))
        elif layer.action == "reuse" and layer.index < last_build:
            if dst is None:
                raise StageError("a reused layer must be downloaded but no target store is open")
            jobs.append((layer, lambda layer=layer: layerops.fetch_reused(ws, dst, layer, cache)))

    def run(layer, fetch) -> int:
        started = time.monotonic()
        with ws.layer_lock(layer):
            n = fetch()
        if n:
            add_stats(ws, layer, fetched=n, seconds=time.monotonic() - started)
            emit(progress, image, layer, "downloaded", bytes_in=n, seconds=time.monotonic() - started)
        return n

    return {layer.index: pool.submit(run, layer, fetch) for layer, fetch in jobs}


def download_inputs(ws: Workspace, plan: Plan, image: ImagePlan, src: Endpoint, dst: Endpoint | None,
                    progress: Progress | None = None, cache: BlobCache | None = None) -> int:
    """Every download of :func:`start_downloads`, concurrently; returns the bytes fetched."""
    with ThreadPoolExecutor(DOWNLOADS_PER_IMAGE, thread_name_prefix="obd-fetch") as pool:
        futures = start_downloads(pool, ws, plan, image, src, dst, progress, cache)
        return sum(f.result() for f in futures.values())


def prepare(src: str, dst: str, ws: Workspace, options: ConvertOptions, src_ep: Endpoint, dst_ep: Endpoint,
            dedup: DedupStore | None) -> Plan:
    """Plan + dedup decisions, saved to plan.json (shared by :func:`pull` and ``convert_image``)."""
    ws.root.mkdir(parents=True, exist_ok=True)
    plan = make_plan(src_ep, dst, options, ws)
    if not options.no_upload:
        dst_ep.check_push()  # an unreachable or refusing target fails before downloads and builds
    if dedup is not None and not options.no_upload and dst_ep.is_registry:
        resolve_dedup(plan, dst_ep, dedup, options.oci)
    for image in plan.images:
        for layer in image.layers:
            if layer.action == "build" and ws.blob_info(layer) is not None:
                layer.dedup = "local"  # finished by an earlier run in this staging directory
    ws.save_plan(plan)
    return plan


def pull(src: str, dst: str, staging_dir: str | Path, *, options: ConvertOptions | None = None,
         src_registry: RegistryOptions | None = None, dst_registry: RegistryOptions | None = None,
         dedup: DedupStore | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Resolve, plan, consult dedup, download what the build needs. See docs/engine-stages.md."""
    options = options or ConvertOptions()
    ws = Workspace(staging_dir)
    src_ep = open_endpoint(src, src_registry)
    dst_ep = open_endpoint(dst, dst_registry)
    try:
        plan = prepare(src, dst, ws, options, src_ep, dst_ep, dedup)
        cache = options.blob_cache_store()
        downloaded = _map(_selected(plan, None), options.concurrency_limit,
                          lambda image: download_inputs(ws, plan, image, src_ep, dst_ep, progress, cache))
    finally:
        src_ep.close()
        dst_ep.close()
    layers = [layer for image in plan.images if not image.cached for layer in image.layers]
    return {
        "staging_dir": str(ws.root),
        "plan": "plan.json",
        "source": {"reference": src, "digest": plan.source_digest, "media_type": plan.source_media_type,
                   "size": plan.source_size},
        "target": dst,
        "platforms": [image.platform for image in plan.images],
        "manifests_cached": sum(1 for image in plan.images if image.cached),
        "layers_total": len(layers),
        "layers_to_build": sum(1 for layer in layers if layer.action == "build" and layer.dedup != "local"),
        "layers_reused": sum(1 for layer in layers if layer.action == "reuse" or layer.dedup == "local"),
        "bytes_downloaded": sum(downloaded),
    }


def build(staging_dir: str | Path, *, platform: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Apply every layer still to build, bottom first, straight into its layer blob
    ``layers/<chain>/overlaybd.commit`` (compressed while the tar is applied: no raw LSMT is
    written and read back, docs/engine-stages.md); :func:`compress` then only reports it."""
    ws = Workspace(staging_dir)
    plan = ws.load_plan()
    options = options_from_plan(plan)

    def one(image: ImagePlan) -> tuple[list[dict], int]:
        built, skipped = [], 0
        for layer in image.layers:
            if layer.action != "build" or ws.blob_info(layer) is not None or ws.lsmt_path(layer).exists():
                skipped += 1
                continue
            with ws.layer_lock(layer):
                if ws.blob_info(layer) is not None or ws.lsmt_path(layer).exists():
                    skipped += 1
                    continue
                if not ws.source_blob(layer).exists():
                    raise StageError(f"[{image.label}] layer {layer.index}: source not downloaded: run pull")
                stats = layerops.build_layer(ws, image, layer, options, raw=False)
            add_stats(ws, layer, bytes_in=stats.bytes_in, bytes_out=stats.bytes_out, seconds=stats.seconds)
            emit(progress, image, layer, "built", bytes_in=stats.bytes_in, bytes_out=stats.bytes_out,
                 seconds=stats.seconds)
            built.append({"platform": image.platform, "index": layer.index, "chain_id": layer.chain_id,
                          "path": ws.rel(ws.blob_path(layer)), "size": stats.bytes_out,
                          "seconds": round(stats.seconds, 3)})
        return built, skipped

    results = _map(_selected(plan, platform), options.concurrency_limit, one)
    return {"built": [b for r in results for b in r[0]], "skipped": sum(r[1] for r in results)}


def compress(staging_dir: str | Path, *, platform: str | None = None,
             progress: Progress | None = None) -> dict[str, Any]:
    """List every built layer blob with its digest; a raw ``layer.lsmt`` left by an earlier
    version's build stage is turned into the blob (tar(ZFile(LSMT))) first."""
    ws = Workspace(staging_dir)
    plan = ws.load_plan()
    options = options_from_plan(plan)

    def one(image: ImagePlan) -> tuple[list[dict], int]:
        done, skipped = [], 0
        for layer in image.layers:
            if layer.action != "build":
                continue
            with ws.layer_lock(layer):
                info = ws.blob_info(layer)
                if info is None:
                    if not ws.lsmt_path(layer).exists():
                        raise StageError(f"[{image.label}] layer {layer.index} is not built: run build")
                    stats = layerops.compress_layer(ws, layer, options)
                    add_stats(ws, layer, bytes_out=stats.bytes_out, seconds=stats.seconds)
                    emit(progress, image, layer, "compressed", bytes_in=stats.bytes_in,
                         bytes_out=stats.bytes_out, seconds=stats.seconds)
                    info = ws.blob_info(layer)
                else:
                    skipped += 1
            assert info is not None
            done.append({"platform": image.platform, "index": layer.index, "chain_id": layer.chain_id,
                         "digest": info["digest"], "size": info["size"], "path": ws.rel(ws.blob_path(layer))})
        return done, skipped

    results = _map(_selected(plan, platform), options.concurrency_limit, one)
    return {"layers": [d for r in results for d in r[0]], "skipped": sum(r[1] for r in results)}


def publish_all(ws: Workspace, plan: Plan, dst: Endpoint, *, upload: bool, per_image=None) -> dict[str, Any]:
    """Documents for every image (+ index), pushed when ``upload``; saved as pushed.json."""
    stats = publish.PushStats()
    tag = dst.tag
    results: dict[int, Any] = {}
    manifests = []
    for n, image in enumerate(plan.images):
        if image.cached:
            desc = publish.mf.Descriptor(publish.mf.media_types(plan.options["oci"])["manifest"],
                                         image.cached["digest"], image.cached["size"])
            if upload and not plan.is_index and tag:
                data = dst.get_manifest(desc.digest)  # re-tag (image.md §6)
                ws.put_object(desc.digest, data)
                dst.push_manifest(data, desc.media_type, tag)
        else:
            built = publish.build_image_documents(ws, plan, image)
            desc = built.manifest
            if upload:
                if per_image is not None:
                    per_image(image, built, stats)
                else:
                    publish.push_image(ws, dst, plan, image, built, stats, tag=None if plan.is_index else tag)
        results[image.child if image.child is not None else n] = desc
        manifests.append({"platform": image.platform, "source_digest": image.source_digest,
                          "digest": desc.digest, "size": desc.size, "media_type": desc.media_type,
                          "cached": bool(image.cached)})
    if plan.is_index:
        top = publish.build_index_document(ws, plan, results)
        if upload:
            dst.push_manifest(ws.get_object(top.digest), top.media_type, tag)
    else:
        top = results[next(iter(results))]
    doc = {"target": plan.target, "digest": top.digest, "media_type": top.media_type, "size": top.size,
           "manifests": manifests, "uploaded": upload, "blobs_pushed": stats.pushed,
           "blobs_existing": stats.existing, "bytes_pushed": stats.bytes}
    ws.write_json(ws.root / "pushed.json", doc)
    return doc


def push(staging_dir: str | Path, *, dst_registry: RegistryOptions | None = None,
         progress: Progress | None = None) -> dict[str, Any]:
    """Push layers, configs, manifests and the index; tag the top object."""
    ws = Workspace(staging_dir)
    plan = ws.load_plan()
    dst = open_endpoint(plan.target, dst_registry)
    try:
        doc = publish_all(ws, plan, dst, upload=not plan.options["no_upload"])
    finally:
        dst.close()
    if progress is not None:
        progress({"event": "pushed", **doc})
    return {k: v for k, v in doc.items() if k != "uploaded"}


def record(staging_dir: str | Path, *, dedup: DedupStore | None) -> dict[str, Any]:
    """Record pushed layers and manifests in the dedup store (idempotent)."""
    ws = Workspace(staging_dir)
    plan = ws.load_plan()
    try:
        pushed = ws.read_json(ws.root / "pushed.json")
    except FileNotFoundError:
        raise StageError(f"{ws.root}: nothing pushed yet: run push first") from None
    if dedup is None or not pushed.get("uploaded"):
        doc = {"layers_recorded": 0, "manifests_recorded": 0}
    else:
        dst = open_endpoint(plan.target, None, connect=False)
        layers = manifests = 0
        by_source = {m["source_digest"]: m for m in pushed["manifests"]}
        for image in plan.images:
            if image.cached:
                continue
            for layer in image.layers:
                digest, size = publish.layer_result(ws, layer)
                layers += publish.record_layer(dedup, dst, plan, layer, digest, size)
            m = by_source[image.source_digest]
            manifests += publish.record_image(
                dedup, dst, plan, image, publish.mf.Descriptor(m["media_type"], m["digest"], m["size"])
            )
        doc = {"layers_recorded": layers, "manifests_recorded": manifests}
    ws.write_json(ws.root / "recorded.json", doc)
    return doc


def report(staging_dir: str | Path) -> dict[str, Any]:
    ws = Workspace(staging_dir)
    plan = ws.load_plan()
    try:
        pushed = ws.read_json(ws.root / "pushed.json")
    except FileNotFoundError:
        pushed = None
    return build_report(ws, plan, pushed).to_json()


def cleanup(staging_dir: str | Path) -> dict[str, Any]:
    root = Path(staging_dir)
    existed = root.exists()
    shutil.rmtree(root, ignore_errors=True)
    return {"removed": existed}
