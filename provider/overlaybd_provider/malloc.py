"""Keep freed large buffers in the process instead of handing them back to the kernel.

A conversion allocates and frees 1-4 MiB buffers all the time (tar reads, block batches, blob
writes). glibc serves such sizes with fresh ``mmap`` chunks or trims its heap after them, so
every buffer costs hundreds of page faults: a fifth of the wall time of a 300 MB layer, all of it
kernel time. Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (``mallopt(3)``) makes the
heap reuse them. The peak RSS does not grow (buffers are reused, not added), but memory freed
after a peak stays with the process until it exits, so this is for converter processes only:
the CLI, the worker interpreters, and Airflow tasks running the engine.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections.abc import Iterator

from overlaybd_provider.libc import libc

__all__ = ["collector_paused", "keep_large_buffers"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20
_done = False


def keep_large_buffers() -> bool:
    """Apply the settings once per process; False where there is no glibc ``mallopt``."""
    global _done
    if _done:
        return True
    try:
        mallopt = libc().mallopt  # type: ignore[union-attr]
    except AttributeError:  # no C library, or not glibc
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _done = ok
    if not ok:
        log.debug("mallopt refused the buffer settings")
    return ok


_paused_lock = threading.Lock()
_paused = 0  # applies in progress that turned the cycle collector off
_was_enabled = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cycle collector off while a tar is applied (nested and concurrent applies share one pause).

    Applying a layer allocates a few objects per entry that form no reference cycles, while the
    filesystem keeps ~10^5 long-lived ones (inodes, directory entries, extents) that every full
    collection walks again: 3-5 % of a 100 000-file layer. Refcounting still frees everything
    at once; whatever cycle an apply does make is collected when the collector is back on.
    """
    global _paused, _was_enabled
    with _paused_lock:
        if _paused == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _was_enabled:
                gc.enable()
