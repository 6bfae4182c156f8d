"""``convert_image``: the whole conversion in one process (``overlaybd convert``).

Same plan and pipeline as the stages (:mod:`.stages`): each platform runs as one pipeline
(download → build straight to the blob → push → record, layer by layer, :mod:`.pipeline`) and
platforms run in parallel up to ``concurrency_limit``; then configs, manifests and the index are
pushed and recorded. Layers are recorded in the dedup store right after their push, so a run
killed at any point is finished by the next one from what was pushed/recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from overlaybd_provider.engine.dedup import DedupStore
from overlaybd_provider.engine.dedup.lease import LayerLeases
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.engine.pipeline import Pipeline, run_images, run_pairs
from overlaybd_provider.engine.plan.model import ImagePlan, Plan
from overlaybd_provider.engine.plan.planner import fill_costs, prepare
from overlaybd_provider.engine.report import ConvertReport, Progress, build_report
from overlaybd_provider.engine.transfer import publish
from overlaybd_provider.engine.transfer.endpoint import Endpoint, open_endpoint
from overlaybd_provider.engine.transfer.workspace import Workspace
from overlaybd_provider.oci.options import RegistryOptions

__all__ = ["convert_image"]

log = logging.getLogger(__name__)
_OURS = ("plan.json", "pushed.json", "recorded.json", "objects", "layers", "sources", ".lock")


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
            twin_ep = None
            if options.turbo_destination:
                twin_ep = open_endpoint(options.turbo_destination, dst_registry)
                endpoints.callback(twin_ep.close)
            report = _run(ws, src, dst, options, src_ep, dst_ep, dedup, progress, started, twin_ep)
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


def _leases(dedup: DedupStore | None, options: ConvertOptions, ep: Endpoint, plan: Plan) -> LayerLeases | None:
    if dedup is None or options.no_upload or not ep.is_registry:
        return None
    return LayerLeases(dedup, ep.host, plan.layer_format)


def _publish(ws: Workspace, plan: Plan, options: ConvertOptions, src_ep: Endpoint, dst_ep: Endpoint,
             dedup: DedupStore | None) -> dict:
    def push_documents(image: ImagePlan, built: publish.Built, stats: publish.PushStats) -> None:
        publish.push_image(ws, dst_ep, plan, image, built, stats, tag=None if plan.is_index else dst_ep.tag,
                           src=src_ep)
        publish.record_image(dedup, dst_ep, plan, image, built.manifest)

    pushed = publish.publish_all(ws, plan, dst_ep, upload=not options.no_upload, per_image=push_documents)
    log.info("converted %s -> %s: %s (%d bytes)", plan.source, plan.target, pushed["digest"], pushed["size"])
    fill_costs(plan, dedup)
    return pushed


def _run(ws: Workspace, src: str, dst: str, options: ConvertOptions, src_ep: Endpoint, dst_ep: Endpoint,
         dedup: DedupStore | None, progress: Progress | None, started: float,
         twin_ep: Endpoint | None = None) -> ConvertReport:
    """Plan, convert every platform (in parallel), then publish config/manifests/index. Output
    ``both``: the TurboOCI twin is converted in the same pass and published after the native."""
    plan = prepare(src, dst, ws, options, src_ep, dst_ep, dedup, twin_ep)
    twin = plan.twin_plan()
    cache = options.blob_cache_store()
    leases = _leases(dedup, options, dst_ep, plan)
    pipeline = Pipeline(ws, plan, options, src_ep, dst_ep, dedup, progress, cache, leases)
    twin_leases = None
    try:
        if twin is not None:
            assert twin_ep is not None
            twin_leases = _leases(dedup, options, twin_ep, twin)
            pipeline.twin = Pipeline(ws, twin, options, src_ep, twin_ep, dedup, progress, cache, twin_leases)
            run_pairs(pipeline, plan, twin)
        else:
            run_images(pipeline, [image for image in plan.images if not image.cached])
    finally:
        for held in (leases, twin_leases):
            if held is not None:
                held.close()
    pushed = _publish(ws, plan, options, src_ep, dst_ep, dedup)
    turbo_report = None
    if twin is not None:
        assert twin_ep is not None
        twin_pushed = _publish(ws, twin, options, src_ep, twin_ep, dedup)
        turbo_report = build_report(twin, twin_pushed, time.monotonic() - started).to_json()
        plan.twin = twin.to_json()
    ws.save_plan(plan)
    report = build_report(plan, pushed, time.monotonic() - started)
    report.turbo = turbo_report
    if options.dump_manifest:
        digests = [pushed["digest"], *(m["digest"] for m in pushed["manifests"])]
        for image in plan.images:
            if not image.cached:
                digests.append(publish.build_image_documents(ws, plan, image, dst_ep).config.digest)
        report.documents = {d: ws.get_object(d).decode() for d in dict.fromkeys(digests)
                            if ws.object_path(d).exists()}
    return report
