"""Inflate the compressed sources of an image's layers ahead of their builds.

A layer build starts with undoing its source's compression (one core, strictly sequential within a
layer), yet that of layer *i+1* does not depend on layer *i*: only the ext4 part does. So as soon as a
source is downloaded, its inflate starts in a child process that spools the tar, while the layers
below are still being built; the build then reads the spool instead of starting a child of its own.
TurboOCI layers (gzip) use :func:`formats.gzworker.start_inflate` (which also records gzip.meta),
native layers (gzip or zstd) :func:`ext4.layerdecode.start_decode`. Same bytes either way (the build
checks the digest, size and diff_id exactly as before).

Inflates ahead are started in layer order, and at most ``limit`` of them are alive at once in the
whole process (started and not yet finished with by their build; the images of an index share the
slots): that bounds the spool disk to about ``limit`` uncompressed layers and keeps the children
from crowding out the builds that are running. A build whose inflate was not started ahead starts
its own, as without prefetch, so no build ever waits for a slot.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future

from overlaybd_provider.engine.plan.model import LayerPlan
from overlaybd_provider.engine.transfer.workspace import Workspace
from overlaybd_provider.ext4.layerdecode import DecodeJob, start_decode
from overlaybd_provider.formats.gzworker import InflateJob, start_inflate
from overlaybd_provider.workers import env_choice

__all__ = ["InflatePrefetch", "prefetch_limit"]

log = logging.getLogger(__name__)


def prefetch_limit() -> int:
    """Inflates alive at once: the cores, at most 3 (more only adds spool disk); 0 with
    ``OVERLAYBD_PREFETCH=0`` (every build inflates its own source, no spool disk)."""
    if env_choice("OVERLAYBD_PREFETCH") is False:
        return 0
    return max(1, min(3, os.cpu_count() or 1))


class _Slots:
    """The process-wide count of inflates alive ahead of their builds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.used = 0
        self.waiting: weakref.WeakSet[InflatePrefetch] = weakref.WeakSet()

    def try_take(self, limit: int) -> bool:
        with self._lock:
            if self.used >= limit:
                return False
            self.used += 1
            return True

    def give_back(self) -> list[InflatePrefetch]:
        """Free one slot; the prefetchers that may use it now."""
        with self._lock:
            self.used -= 1
            return list(self.waiting)


_SLOTS = _Slots()


def _gzip_source(layer: LayerPlan) -> bool:
    return "gzip" in (layer.source_media_type or "")


def _compressed_source(layer: LayerPlan) -> bool:
    media_type = layer.source_media_type or ""
    return "gzip" in media_type or "zstd" in media_type


def _wanted(layer: LayerPlan, native: bool) -> bool:
    """A source whose inflate can start ahead: in a TurboOCI image, a TurboOCI layer's gzip (its
    build takes an ``InflateJob``); in a native one, a layer's gzip or zstd (one source: a flattened
    layer's parts are decoded by its build)."""
    if not native:
        return layer.kind == "turbo" and _gzip_source(layer)
    return layer.kind != "turbo" and layer.parts is None and _compressed_source(layer)


def _start(ws: Workspace, layer: LayerPlan, spool: str, native: bool) -> InflateJob | DecodeJob | None:
    source = ws.source_blob(layer)
    if native:
        return start_decode(source, digest=layer.diff_id is not None, spool_dir=spool)
    return start_inflate(source, name=str(source), hash_output=layer.diff_id is not None, spool_dir=spool)


class InflatePrefetch:
    """The inflate children of one image's compressed layers; thread-safe (downloads finish on
    fetch threads, builds run on the image's thread). ``take`` hands a layer's job to its build,
    ``release`` tells that the build is done with it, ``close`` stops everything not taken."""

    def __init__(self, ws: Workspace, layers: Sequence[LayerPlan], downloads: Mapping[int, Future[int]],
                 *, limit: int | None = None, native: bool = False) -> None:
        self._ws = ws
        self._native = native  # the jobs are DecodeJobs for native builds, else InflateJobs for TurboOCI ones
        self._queue = [layer for layer in layers if _wanted(layer, native)]
        self._downloads = {layer.index: downloads.get(layer.index) for layer in self._queue}
        self._limit = prefetch_limit() if limit is None else limit
        self._lock = threading.Lock()
        self._jobs: dict[int, InflateJob | DecodeJob] = {}
        self._taken: set[int] = set()
        self._alive: set[int] = set()  # layers holding a slot
        self._next = 0
        self._closed = False
        _SLOTS.waiting.add(self)
        for future in self._downloads.values():
            if future is not None:
                future.add_done_callback(lambda _f: self._pump())
        self._pump()

    def _pump(self) -> None:
        """Start the next inflates in layer order while the process has fewer than ``limit`` alive."""
        with self._lock:
            while not self._closed and self._next < len(self._queue):
                layer = self._queue[self._next]
                future = self._downloads[layer.index]
                if future is not None and not future.done():
                    return  # the next source is not here yet: its download's end pumps again
                failed = future is not None and (future.cancelled() or future.exception() is not None)
                if layer.index in self._taken or failed:
                    self._next += 1
                    continue  # built already (its own inflate), or its download failed (the build says so)
                if not _SLOTS.try_take(self._limit):
                    return  # a slot's release pumps again
                self._next += 1
                spool = self._ws.blob_path(layer).parent
                with contextlib.suppress(OSError):
                    spool.mkdir(parents=True, exist_ok=True)
                job = _start(self._ws, layer, str(spool), self._native)
                if job is None:
                    _SLOTS.give_back()
                    continue
                log.debug("layer %d: inflate started ahead of its build (pid %d)", layer.index, job.pid)
                self._jobs[layer.index] = job
                self._alive.add(layer.index)

    def take(self, layer: LayerPlan) -> InflateJob | DecodeJob | None:
        """The inflate of ``layer``'s source if it was started (the build owns it now), else None;
        either way no inflate is started for it any more. Call :meth:`release` after the build."""
        with self._lock:
            self._taken.add(layer.index)
            return self._jobs.pop(layer.index, None)

    def release(self, layer: LayerPlan, job: InflateJob | DecodeJob | None) -> None:
        """The build of ``layer`` is over: its job (closed here if the build did not) no longer
        counts, so the next inflate may start."""
        if job is not None:
            job.close()
        with self._lock:
            held = layer.index in self._alive
            self._alive.discard(layer.index)
        if held:
            for prefetch in _SLOTS.give_back():
                prefetch._pump()

    @contextlib.contextmanager
    def using(self, layer: LayerPlan) -> Iterator[InflateJob | DecodeJob | None]:
        """:meth:`take` for the build of ``layer``, and :meth:`release` once it is over."""
        job = self.take(layer)
        try:
            yield job
        finally:
            self.release(layer, job)

    def drop(self, layer: LayerPlan) -> None:
        """``layer`` is not built here after all (reused, built meanwhile elsewhere)."""
        self.release(layer, self.take(layer))

    def close(self) -> None:
        """Stop: kill the inflates no build took (a failed or finished conversion)."""
        with self._lock:
            self._closed = True
            jobs, self._jobs = list(self._jobs.values()), {}
            held, self._alive = len(self._alive), set()
        _SLOTS.waiting.discard(self)
        for job in jobs:
            job.close()
        for _ in range(held):
            for prefetch in _SLOTS.give_back():
                prefetch._pump()
