"""``convert_image``: the whole conversion in one process (``overlaybd convert``).

Same plan and per-layer operations as :mod:`.stages`, but each platform runs as one pipeline
(download → build straight to the blob → push → record, layer by layer) and platforms run in
parallel up to ``concurrency_limit``. Layers are recorded in the dedup store right after their
push, so a run killed at any point is finished by the next one from what was pushed/recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from overlaybd_provider.engine.dedup import DedupStore
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.engine.plan.model import ImagePlan, Plan
from overlaybd_provider.engine.report import ConvertReport, Progress, add_stats, build_report, emit
from overlaybd_provider.engine.stages import DOWNLOADS_PER_IMAGE, prepare, publish_all, start_downloads
from overlaybd_provider.engine.transfer import layerops, publish
from overlaybd_provider.engine.transfer.endpoint import Endpoint, open_endpoint
from overlaybd_provider.engine.transfer.workspace import Workspace
from overlaybd_provider.oci.options import RegistryOptions

__all__ = ["convert_image"]

log = logging.getLogger(__name__)
_OURS = ("plan.json", "pushed.json", "recorded.json", "objects", "layers", ".lock")


@contextlib.contextmanager
def _work_dir(options: ConvertOptions) -> Iterator[tuple[Path, bool]]:
    """The explicit ``--work-dir`` (locked: one conversion at a time uses it) or a fresh temp dir.

    A temporary directory never outlives the conversion, failed or not (it can hold gigabytes and
    nothing would ever reuse it); ``--reserve`` keeps it and says where. A named ``--work-dir``
    is kept after a failure: the rerun resumes there."""
    if options.work_dir is None:
        root = Path(tempfile.mkdtemp(prefix="overlaybd-convert-"))
        try:
            yield root, True
        except BaseException:
            if options.reserve:
                log.warning("work directory kept (--reserve): %s", root)
            else:
                shutil.rmtree(root, ignore_errors=True)
            raise
        return
    root = Path(options.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield root, False
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _convert_one(ws: Workspace, plan: Plan, image: ImagePlan, options: ConvertOptions, src: Endpoint,
                 dst: Endpoint, dedup: DedupStore | None, progress: Progress | None) -> None:
    """One platform: every layer to build is downloaded, built, pushed and recorded in order.

    Downloads run concurrently from the start, and layer *i* is built as soon as the downloads
    of layers 0..*i* are done (not all of them). The push (+ record) of layer *i* runs on one
    background thread while layer *i+1* is built; at most one push is in flight, pushes and
    records keep layer order, and a download or push error stops the build loop and is raised
    here (nothing is tagged: documents are pushed after this returns)."""
    cache = options.blob_cache_store()
    stats = publish.PushStats()
    with (ThreadPoolExecutor(DOWNLOADS_PER_IMAGE, thread_name_prefix="obd-fetch") as fetcher,
          ThreadPoolExecutor(1, thread_name_prefix="obd-push") as uploader):
        downloads = start_downloads(fetcher, ws, plan, image, src, dst if not options.no_upload else None,
                                    progress, cache)
        pending: Future[None] | None = None
        try:
            for layer in image.layers:
                if pending is not None and pending.done():
                    pending.result()  # a failed push stops the conversion before more work
                for index in sorted(i for i in downloads if i <= layer.index):
                    downloads.pop(index).result()  # this layer's source and its lowers are here
                if layer.action == "reuse":
                    emit(progress, image, layer, "reused")
                    continue
                with ws.layer_lock(layer):
                    info = ws.blob_info(layer)
                    if info is None:
                        result = layerops.build_layer(ws, image, layer, options, raw=False, cache=cache)
                        add_stats(ws, layer, bytes_in=result.bytes_in, bytes_out=result.bytes_out,
                                  seconds=result.seconds)
                        emit(progress, image, layer, "built", bytes_in=result.bytes_in, bytes_out=result.bytes_out,
                             seconds=result.seconds)
                        info = ws.blob_info(layer)
                    else:
                        emit(progress, image, layer, "already built")
                assert info is not None
                if options.no_upload:
                    continue
                if pending is not None:
                    pending.result()  # bounded: one push in flight
                pending = uploader.submit(_push_and_record, ws, dst, dedup, plan, layer, info, stats)
            if pending is not None:
                pending.result()
            for future in downloads.values():
                future.result()  # downloads no build needed (none in practice): still verified
        except BaseException:
            if pending is not None:
                pending.cancel()
            for future in downloads.values():
                future.cancel()
            raise


def _push_and_record(ws: Workspace, dst: Endpoint, dedup: DedupStore | None, plan: Plan, layer, info: dict,
                     stats: publish.PushStats) -> None:
    """Recorded only after the push succeeded (a killed run re-pushes, never trusts a missing blob)."""
    publish.push_layer(ws, dst, layer, stats)
    publish.record_layer(dedup, dst, plan, layer, info["digest"], info["size"])


def convert_image(
    src: str,
    dst: str,
    options: ConvertOptions | None = None,
    *,
    src_registry: RegistryOptions | None = None,
    dst_registry: RegistryOptions | None = None,
    dedup: DedupStore | None = None,
    progress: Progress | None = None,
) -> ConvertReport:
    """Convert ``src`` (registry reference or ``oci:DIR[:TAG]``) to overlaybd at ``dst``."""
    options = options or ConvertOptions()
    started = time.monotonic()
    with _work_dir(options) as (root, temporary):
        ws = Workspace(root)
        with contextlib.ExitStack() as endpoints:
            src_ep = open_endpoint(src, src_registry)
            endpoints.callback(src_ep.close)
            dst_ep = open_endpoint(dst, dst_registry)
            endpoints.callback(dst_ep.close)
            report = _run(ws, src, dst, options, src_ep, dst_ep, dedup, progress, started)
        if options.reserve:
            log.info("work directory kept (--reserve): %s", root)
        else:
            if temporary:
                shutil.rmtree(root, ignore_errors=True)
            else:
                for name in _OURS[:-1]:
                    path = root / name
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
        return report


def _run(ws: Workspace, src: str, dst: str, options: ConvertOptions, src_ep: Endpoint, dst_ep: Endpoint,
         dedup: DedupStore | None, progress: Progress | None, started: float) -> ConvertReport:
    """Plan, convert every platform (in parallel), then publish config/manifests/index."""
    plan = prepare(src, dst, ws, options, src_ep, dst_ep, dedup)
    todo = [image for image in plan.images if not image.cached]

    def run(image: ImagePlan) -> None:
        _convert_one(ws, plan, image, options, src_ep, dst_ep, dedup, progress)

    if len(todo) > 1 and options.concurrency_limit > 1:
        with ThreadPoolExecutor(options.concurrency_limit, thread_name_prefix="obd-image") as pool:
            for future in [pool.submit(run, image) for image in todo]:
                future.result()
    else:
        for image in todo:
            run(image)

    def push_documents(image: ImagePlan, built: publish.Built, stats: publish.PushStats) -> None:
        publish.push_image(ws, dst_ep, plan, image, built, stats, tag=None if plan.is_index else dst_ep.tag)
        publish.record_image(dedup, dst_ep, plan, image, built.manifest)

    pushed = publish_all(ws, plan, dst_ep, upload=not options.no_upload, per_image=push_documents)
    log.info("converted %s -> %s: %s (%d bytes)", src, dst, pushed["digest"], pushed["size"])
    report = build_report(ws, plan, pushed, time.monotonic() - started)
    if options.dump_manifest:
        digests = [pushed["digest"], *(m["digest"] for m in pushed["manifests"])]
        for image in plan.images:
            if not image.cached:
                digests.append(publish.build_image_documents(ws, plan, image).config.digest)
        report.documents = {d: ws.get_object(d).decode() for d in dict.fromkeys(digests)
                            if ws.object_path(d).exists()}
    return report
