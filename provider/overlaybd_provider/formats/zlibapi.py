"""zlib's stream API through ``ctypes``: what Python's ``zlib`` module does not expose.

gzip.meta needs ``inflate(Z_BLOCK)`` (stop at deflate block boundaries, to place checkpoints)
and ``inflatePrime`` (resume inside a byte: a block may start at any bit, and stored blocks
are aligned to the *original* byte boundaries, so shifting the input instead does not work).
These are the calls overlaybd's gzindex code makes. ``ctypes`` releases the GIL during calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

Z_OK, Z_STREAM_END, Z_NEED_DICT, Z_BUF_ERROR = 0, 1, 2, -5
Z_NO_FLUSH, Z_BLOCK = 0, 5


class ZStream(ctypes.Structure):
    """``z_stream`` (zlib.h); the layout is the same on every LP64 platform."""

    _fields_ = [
        ("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p), ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int), ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong),
    ]


_lib: ctypes.CDLL | None = None


def zlib_lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(ctypes.util.find_library("z") or "libz.so.1")
        p = ctypes.POINTER(ZStream)
        lib.zlibVersion.restype = ctypes.c_char_p
        lib.inflateInit2_.argtypes = [p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.inflate.argtypes = [p, ctypes.c_int]
        lib.inflateEnd.argtypes = [p]
        lib.inflatePrime.argtypes = [p, ctypes.c_int, ctypes.c_int]
        lib.inflateSetDictionary.argtypes = [p, ctypes.c_char_p, ctypes.c_uint]
        _lib = lib
    return _lib


class _ZngLib:
    """zlib-ng's native inflate (``zng_*``, exported by the pinned ``zlib_ng`` extension module),
    behind the names :func:`zlib_lib` gives: about twice system zlib's inflate speed, same
    stream semantics (``Z_BLOCK``, ``data_type``). ``zng_stream`` has ``z_stream``'s layout up to
    ``data_type`` on LP64, and the same size (a 32-bit ``adler`` padded to 8 bytes)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        p = ctypes.POINTER(ZStream)
        lib.zng_inflateInit2.argtypes = [p, ctypes.c_int32]
        lib.zng_inflate.argtypes = [p, ctypes.c_int32]
        lib.zng_inflateEnd.argtypes = [p]
        self.inflate, self.inflateEnd = lib.zng_inflate, lib.zng_inflateEnd
        self._init = lib.zng_inflateInit2

    def inflateInit2_(self, strm: Any, window_bits: int, _version: bytes, _size: int) -> int:
        return self._init(strm, window_bits)

    def zlibVersion(self) -> bytes:
        return b"zlib-ng"


_zng: _ZngLib | None = None


def inflate_lib() -> Any:
    """The fastest inflate with ``Z_BLOCK`` here: zlib-ng's (pinned, so the same everywhere), else
    system zlib. Only for sequential inflate (no ``inflatePrime``/dictionary calls)."""
    global _zng
    if _zng is None:
        try:
            from zlib_ng import zlib_ng

            _zng = _ZngLib(ctypes.CDLL(zlib_ng.__file__))
        except (ImportError, OSError, AttributeError):
            return zlib_lib()
    return _zng


class RawInflater:
    """Raw deflate from a checkpoint: ``bits`` high bits of ``prime`` first (``inflatePrime``),
    ``window`` as the dictionary — ``GzFile::extract``'s set-up."""

    def __init__(self, window: bytes, bits: int = 0, prime: int = 0) -> None:
        self._z = zlib_lib()
        self._s = ZStream()
        if self._z.inflateInit2_(ctypes.byref(self._s), -15, self._z.zlibVersion(), ctypes.sizeof(ZStream)) != Z_OK:
            raise MemoryError("inflateInit2 failed")
        self._open = True
        if bits:
            self._z.inflatePrime(ctypes.byref(self._s), bits, prime >> (8 - bits))
        self._z.inflateSetDictionary(ctypes.byref(self._s), window, len(window))
        self._in = ctypes.create_string_buffer(0)
        self._out = ctypes.create_string_buffer(0)
        self.eof = False

    @property
    def needs_input(self) -> bool:
        return self._s.avail_in == 0

    def feed(self, data: bytes) -> None:
        self._in = ctypes.create_string_buffer(data, len(data))
        self._s.next_in = ctypes.addressof(self._in)
        self._s.avail_in = len(data)

    def inflate(self, limit: int) -> bytes:
        """Up to ``limit`` bytes from the input fed so far (b"" when it needs more input)."""
        if len(self._out) < limit:
            self._out = ctypes.create_string_buffer(limit)
        s = self._s
        s.next_out = ctypes.addressof(self._out)
        s.avail_out = limit
        ret = self._z.inflate(ctypes.byref(s), Z_NO_FLUSH)
        made = limit - s.avail_out
        if ret == Z_STREAM_END:
            self.eof = True
        elif ret not in (Z_OK, Z_BUF_ERROR):
            raise ValueError((s.msg or b"inflate error").decode("ascii", "replace"))
        return ctypes.string_at(self._out, made)

    def close(self) -> None:
        if self._open:
            self._z.inflateEnd(ctypes.byref(self._s))
            self._open = False

    def __del__(self) -> None:
        self.close()
