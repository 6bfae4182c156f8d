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

import logging

from overlaybd_provider.libc import libc

__all__ = ["keep_large_buffers"]

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
