"""The C library through ``ctypes``, loaded once, for the few calls Python's ``os`` lacks
(``mallopt``, ``fallocate`` with flags)."""

from __future__ import annotations

import ctypes
import functools

__all__ = ["libc"]


@functools.cache
def libc() -> ctypes.CDLL | None:
    """glibc by its soname (no ``find_library``, which runs ldconfig in a subprocess), else whatever
    ``find_library("c")`` names; None where there is none."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        pass
    from ctypes.util import find_library

    try:
        return ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
