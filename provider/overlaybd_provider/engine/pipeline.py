"""The layers of one image, overlapped: fetch → build (straight into the layer blob) → push → record.

Shared by ``convert_image`` (the CLI, one process) and the build stage (Airflow, one task). The
work directory is scratch: everything another process needs afterwards is pushed to the target
and recorded (docs/engine-stages.md), so a retry on any machine resumes from the target and the
dedup database, and this machine's blob cache saves re-downloads.

Downloads start concurrently; layer *i* is built as soon as its own source and its lowers are
here. The push (+ record) of layer *i* runs on one background thread while layer *i+1* is
built: at most one push in flight, pushes and records in layer order, and a layer is recorded
only after its push succeeded. With a dedup store, a layer is built only under its build lease
(engine/dedup/lease.py): when another conversion is building it, this one waits for that
result and reuses it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from overlaybd_provider.engine.dedup import DedupStore
from overlaybd_provider.engine.dedup.lease import LayerLeases
from overlaybd_provider.engine.errors import StageError
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.engine.plan.model import ImagePlan, LayerPlan, Plan
from overlaybd_provider.engine.plan.planner import lookup_layer
from overlaybd_provider.engine.report import Progress, emit
from overlaybd_provider.engine.transfer import layerops, publish
from overlaybd_provider.engine.transfer.blobcache import BlobCache
from overlaybd_provider.engine.transfer.endpoint import Endpoint
from overlaybd_provider.engine.transfer.prefetch import InflatePrefetch
from overlaybd_provider.engine.transfer.workspace import Workspace
from overlaybd_provider.engine.turbo.build import build_turbo_layer
from overlaybd_provider.ext4.layerdecode import DecodeJob
from overlaybd_provider.formats.gzworker import InflateJob

__all__ = ["DOWNLOADS_PER_IMAGE", "Pipeline", "run_images", "run_pairs"]

log = logging.getLogger(__name__)
DOWNLOADS_PER_IMAGE = 4  # concurrent blob downloads per image

#: called after a layer is final for this run: built, pushed and recorded, or reused
LayerDone = Callable[[ImagePlan, LayerPlan], None]


@dataclass
class Pipeline:
    """Everything the per-image pipeline needs; one per conversion (shared by its images)."""

    ws: Workspace
    plan: Plan
    options: ConvertOptions
    src: Endpoint
    dst: Endpoint
    dedup: DedupStore | None = None
    progress: Progress | None = None
    cache: BlobCache | None = None
    leases: LayerLeases | None = None
    on_layer: LayerDone | None = None
    #: chain ids of layers to build that an earlier try already built, pushed and recorded
    #: (their ``digest``/``size`` are set and the blob is in the target)
    finished: frozenset[str] = frozenset()
    #: output ``both``: the TurboOCI image's pipeline (same workspace and source), run by :meth:`run_pair`
    twin: Pipeline | None = None

    @property
    def upload(self) -> bool:
        return not self.options.no_upload

    # -- downloads ---------------------------------------------------------------------------

    def start_downloads(self, pool: ThreadPoolExecutor, image: ImagePlan) -> dict[int, Future[int]]:
        """Submit what the builds of ``image`` need: source tars of layers to build, and reused
        blobs a built layer stands on. ``{layer index: future of bytes fetched}``."""
        ws = self.ws
        builds = [layer.index for layer in image.layers if self._to_build(layer) and ws.blob_info(layer) is None]
        last_build = max(builds, default=-1)
        jobs: list[tuple[LayerPlan, Callable[[], int]]] = []
        for layer in image.layers:
            if layer.index in builds:
                jobs.append((layer, lambda layer=layer: layerops.fetch_source(ws, self.src, layer, self.cache)))
            elif not self._to_build(layer) and layer.index < last_build:
                jobs.append((layer, lambda layer=layer: self._fetch_reused(layer)))

        # The first download runs alone: the first build waits for it, so sharing the link (and, from
        # a local registry, the cores) with the later ones would only delay everything behind it.
        first_done = threading.Event()

        def run(layer: LayerPlan, fetch: Callable[[], int], first: bool) -> int:
            if not first:
                first_done.wait()
            started = time.monotonic()
            try:
                with ws.layer_lock(layer):
                    n = fetch()
            finally:
                if first:
                    first_done.set()
            if n:
                emit(self.progress, image, layer, "downloaded", bytes_in=n, seconds=time.monotonic() - started)
            return n

        return {layer.index: pool.submit(run, layer, fetch, i == 0) for i, (layer, fetch) in enumerate(jobs)}

    def _prefetch(self, image: ImagePlan, *downloads: dict[int, Future[int]]) -> InflatePrefetch:
        """The inflates of ``image``'s compressed layers to build, each started once its source
        (any of ``downloads``: the native and the TurboOCI image of one run share it) is here."""
        todo = [layer for layer in image.layers if self._to_build(layer) and self.ws.blob_info(layer) is None]
        sources: dict[int, Future[int]] = {}
        for d in downloads:
            for index, future in d.items():
                sources.setdefault(index, future)
        return InflatePrefetch(self.ws, [layer for layer in todo if layer.index in sources], sources,
                               native=not self.plan.turbo)

    def _to_build(self, layer: LayerPlan) -> bool:
        return layer.action == "build" and layer.chain_id not in self.finished

    def _fetch_reused(self, layer: LayerPlan) -> int:
        if self.options.no_upload:
            raise StageError("a reused layer must be downloaded but nothing was uploaded")
        n = layerops.fetch_reused(self.ws, self.dst, layer, self.cache)
        if layer.kind == "turbo":  # a TurboOCI lower reads its file data from its source layer
            n += layerops.fetch_source(self.ws, self.src, layer, self.cache)
        return n

    def _ensure_lowers(self, image: ImagePlan, layer: LayerPlan, downloads: dict[int, Future[int]]) -> None:
        """Every layer below ``layer`` is here (a layer that became a reuse while this run
        waited for another conversion's result was not prefetched)."""
        for lower in image.layers[: layer.index]:
            if lower.index in downloads:
                downloads.pop(lower.index).result()
            if self.ws.blob_info(lower) is None:
                with self.ws.layer_lock(lower):
                    self._fetch_reused(lower)

    # -- one image ---------------------------------------------------------------------------

    def run_image(self, image: ImagePlan) -> None:
        """Build, push and record every layer of ``image`` still to build (see module doc)."""
        stats = publish.PushStats()
        with (ThreadPoolExecutor(DOWNLOADS_PER_IMAGE, thread_name_prefix="obd-fetch") as fetcher,
              ThreadPoolExecutor(1, thread_name_prefix="obd-push") as uploader):
            downloads = self.start_downloads(fetcher, image)
            prefetch = self._prefetch(image, downloads)
            pending: Future[None] | None = None
            try:
                for layer in image.layers:
                    if pending is not None and pending.done():
                        pending.result()  # a failed push stops the conversion before more work
                    if not self._ready(image, layer):
                        if prefetch is not None:
                            prefetch.drop(layer)
                        continue  # reused, or finished by an earlier try
                    info = self._build(image, layer, downloads, prefetch)
                    if not self.upload:
                        self._done(image, layer)
                        continue
                    if pending is not None:
                        pending.result()  # bounded: one push in flight
                    pending = uploader.submit(self._push_and_record, image, layer, info, stats)
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
            finally:
                if prefetch is not None:
                    prefetch.close()

    def _ready(self, image: ImagePlan, layer: LayerPlan) -> bool:
        """True: build ``layer`` here now. False: it is final already (reused, built by an earlier
        try, or built meanwhile by a concurrent conversion)."""
        if layer.action == "reuse":
            emit(self.progress, image, layer, "reused")
            self._done(image, layer)
            return False
        if layer.chain_id in self.finished:
            emit(self.progress, image, layer, "built by an earlier try")
            self._done(image, layer)
            return False
        return self._claim(image, layer)

    # -- output both: the native image and its TurboOCI twin, one pass per layer ----------------

    def run_pair(self, image: ImagePlan | None, twin_image: ImagePlan | None) -> None:
        """Output ``both``: ``image`` (native, this pipeline) and ``twin_image`` (TurboOCI,
        ``self.twin``), either None when its manifest is cached. Layer by layer; a layer both
        need is built by ``ext4.dual`` from one download, one inflate and one tar parse."""
        twin = self.twin
        assert twin is not None
        stats, tstats = publish.PushStats(), publish.PushStats()
        count = len((image or twin_image).layers)  # type: ignore[union-attr]
        with (ThreadPoolExecutor(DOWNLOADS_PER_IMAGE, thread_name_prefix="obd-fetch") as fetcher,
              ThreadPoolExecutor(1, thread_name_prefix="obd-push") as uploader):
            downloads = self.start_downloads(fetcher, image) if image else {}
            tdownloads = twin.start_downloads(fetcher, twin_image) if twin_image else {}
            prefetch = twin._prefetch(twin_image, tdownloads, downloads) if twin_image else None
            pending: list[Future[None]] = []
            try:
                for i in range(count):
                    for future in pending:
                        if future.done():
                            future.result()
                    n = image.layers[i] if image else None
                    t = twin_image.layers[i] if twin_image else None
                    n_go = n is not None and self._ready(image, n)  # type: ignore[arg-type]
                    t_go = t is not None and twin._ready(twin_image, t)  # type: ignore[arg-type]
                    if t is not None and not t_go and prefetch is not None:
                        prefetch.drop(t)
                    infos: tuple[dict | None, dict | None] | None = None
                    if n_go and t_go and t.kind == "turbo":  # type: ignore[union-attr]
                        infos = self._build_both(image, n, twin_image, t, downloads, tdownloads,  # type: ignore[arg-type]
                                                 prefetch)
                    if infos is None:
                        infos = (self._build(image, n, downloads) if n_go else None,  # type: ignore[arg-type]
                                 twin._build(twin_image, t, tdownloads, prefetch)  # type: ignore[arg-type]
                                 if t_go else None)
                    for future in pending:
                        future.result()  # bounded: one layer's pushes in flight
                    pending = []
                    for pipe, img, layer, info, st in ((self, image, n, infos[0], stats),
                                                       (twin, twin_image, t, infos[1], tstats)):
                        if info is None:
                            continue
                        if pipe.upload:
                            pending.append(uploader.submit(pipe._push_and_record, img, layer, info, st))
                        else:
                            pipe._done(img, layer)  # type: ignore[arg-type]
                for future in pending:
                    future.result()
                for future in [*downloads.values(), *tdownloads.values()]:
                    future.result()
            except BaseException:
                for future in [*pending, *downloads.values(), *tdownloads.values()]:
                    future.cancel()
                raise
            finally:
                if prefetch is not None:
                    prefetch.close()

    def _build_both(self, image: ImagePlan, n: LayerPlan, twin_image: ImagePlan, t: LayerPlan,
                    downloads: dict[int, Future[int]], tdownloads: dict[int, Future[int]],
                    prefetch: InflatePrefetch | None = None) -> tuple[dict, dict] | None:
        """Both layers from one pass; None when that cannot be (a finished blob of either side
        is here, or the source turns out not TurboOCI-capable): build them one by one then."""
        from overlaybd_provider.engine.turbo.build import build_both_layers

        twin = self.twin
        assert twin is not None
        ws = self.ws
        if ws.blob_info(n) is not None or ws.blob_info(t) is not None:
            return None
        for pending in (downloads.pop(n.index, None), tdownloads.pop(t.index, None)):
            if pending is not None:
                pending.result()
        self._ensure_lowers(image, n, downloads)
        twin._ensure_lowers(twin_image, t, tdownloads)
        with ws.layer_lock(n), ws.layer_lock(t), ws.source_lock(n):
            if not ws.source_blob(n).exists():
                layerops.fetch_source(ws, self.src, n, self.cache)
            with _inflate_ahead(prefetch, t) as job:
                done = build_both_layers(ws, image, n, twin_image, t, self.options, self.cache, inflate=job)
            if done is None:
                return None
            infos = []
            for pipe, img, layer, st in ((self, image, n, done[0]), (twin, twin_image, t, done[1])):
                layer.bytes_in += st.bytes_in
                layer.bytes_out = st.bytes_out
                layer.seconds += st.seconds
                emit(pipe.progress, img, layer, "built (one pass, both formats)", bytes_in=st.bytes_in,
                     bytes_out=st.bytes_out, seconds=st.seconds)
                info = ws.blob_info(layer)
                assert info is not None
                layer.digest, layer.size = info["digest"], info["size"]
                infos.append(info)
        return infos[0], infos[1]

    def _claim(self, image: ImagePlan, layer: LayerPlan) -> bool:
        """True: build ``layer`` here. False: it was converted meanwhile by a concurrent
        conversion (we waited for its lease) and is now a reuse."""
        if self.leases is None or not self.upload or self.ws.blob_info(layer) is not None:
            return True
        dst, plan, dedup = self.dst, self.plan, self.dedup
        assert dedup is not None

        def found() -> bool:
            return lookup_layer(layer, dst, dedup, dst.host, dst.repo, plan.layer_format_of(layer))

        if self.leases.acquire_or_wait(layer.chain_id, found,
                                       on_wait=lambda holder: emit(self.progress, image, layer,
                                                                   f"waiting for {holder}")):
            return True
        layer.dedup = "wait"
        emit(self.progress, image, layer, "reused (built meanwhile by a concurrent conversion)")
        self._done(image, layer)
        return False

    def _build(self, image: ImagePlan, layer: LayerPlan, downloads: dict[int, Future[int]],
               prefetch: InflatePrefetch | None = None) -> dict:
        ws = self.ws
        with ws.layer_lock(layer):
            info = ws.blob_info(layer)
            if info is not None:
                layer.dedup = "local"
                layer.kind, layer.out_diff_id = info.get("kind", layer.kind), info.get("out_diff_id")
                emit(self.progress, image, layer, "already built")
                return info
        if layer.index in downloads:
            downloads.pop(layer.index).result()
        self._ensure_lowers(image, layer, downloads)
        # the source lock too: a layer of another image with the same source may unlink it after its build
        with ws.layer_lock(layer), ws.source_lock(layer):
            if not layerops.sources_present(ws, layer):  # a retry whose earlier try deleted it
                layerops.fetch_source(ws, self.src, layer, self.cache)
            if self.plan.turbo:
                with _inflate_ahead(prefetch, layer) as job:
                    result = build_turbo_layer(ws, image, layer, self.options, cache=self.cache, inflate=job)
            else:  # a TurboOCI twin may still need the source
                with _inflate_ahead(prefetch, layer) as job:
                    result = layerops.build_layer(ws, image, layer, self.options, cache=self.cache,
                                                  keep_source=self.twin is not None, decode=job)  # type: ignore[arg-type]
            layer.bytes_in += result.bytes_in
            layer.bytes_out = result.bytes_out
            layer.seconds += result.seconds
            emit(self.progress, image, layer, "built", bytes_in=result.bytes_in, bytes_out=result.bytes_out,
                 seconds=result.seconds)
            info = ws.blob_info(layer)
        assert info is not None
        layer.digest, layer.size = info["digest"], info["size"]
        return info

    def _push_and_record(self, image: ImagePlan, layer: LayerPlan, info: dict, stats: publish.PushStats) -> None:
        """Recorded only after the push succeeded (a killed run re-pushes, never trusts a missing blob)."""
        try:
            publish.push_layer(self.ws, self.dst, layer, stats)
            publish.record_layer(self.dedup, self.dst, self.plan, layer, info["digest"], info["size"])
        finally:
            if self.leases is not None:
                self.leases.release(layer.chain_id)
        self._done(image, layer)

    def _done(self, image: ImagePlan, layer: LayerPlan) -> None:
        if self.on_layer is not None:
            self.on_layer(image, layer)


def _inflate_ahead(prefetch: InflatePrefetch | None, layer: LayerPlan
                   ) -> contextlib.AbstractContextManager[InflateJob | DecodeJob | None]:
    """The inflate of ``layer``'s source started ahead, if any, for the duration of its build."""
    return prefetch.using(layer) if prefetch is not None else contextlib.nullcontext()


def run_pairs(pipeline: Pipeline, plan: Plan, twin: Plan, platform: str | None = None) -> None:
    """Output ``both``: every image with its TurboOCI twin (same order: one plan of one source),
    in parallel up to ``concurrency_limit``; a pair whose manifests are both cached is skipped."""
    pairs = []
    for image, timage in zip(plan.images, twin.images, strict=True):
        if platform and not (image.platform == platform or image.platform.startswith(platform + "/")):
            continue
        if not (image.cached and timage.cached):
            pairs.append((None if image.cached else image, None if timage.cached else timage))
    limit = pipeline.options.concurrency_limit
    if len(pairs) > 1 and limit > 1:
        with ThreadPoolExecutor(min(limit, len(pairs)), thread_name_prefix="obd-image") as pool:
            for future in [pool.submit(pipeline.run_pair, a, b) for a, b in pairs]:
                future.result()
    else:
        for a, b in pairs:
            pipeline.run_pair(a, b)


def run_images(pipeline: Pipeline, images: list[ImagePlan]) -> None:
    """Every image, in parallel up to ``concurrency_limit`` (platforms of an index)."""
    limit = pipeline.options.concurrency_limit
    if len(images) > 1 and limit > 1:
        with ThreadPoolExecutor(min(limit, len(images)), thread_name_prefix="obd-image") as pool:
            for future in [pool.submit(pipeline.run_image, image) for image in images]:
                future.result()
    else:
        for image in images:
            pipeline.run_image(image)
