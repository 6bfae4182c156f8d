"""One pass over a gzip layer that yields its tar bytes and records gzip.meta checkpoints.

A checkpoint needs what only zlib's block-level API tells: where each deflate block starts
(``inflate(Z_BLOCK)`` stops there; ``data_type`` gives the unused bit count) and the 32 KiB
before it. Python's ``zlib`` module does not expose ``Z_BLOCK``, and the libraries that
index gzip files did not fit a streaming build (indexed_gzip's ``read`` inflates every region
twice — once to extend its index, once to serve the read; PyPI ``zran`` wants the whole
compressed file in memory; rapidgzip places checkpoints at its own parallel chunk bounds). So
this module drives the system zlib itself through ``ctypes`` — the same calls upstream's
``build_index`` (``gzip_index_create.cpp``) makes — and keeps its selection rule exactly
(``IndexFilterRecorder::record``: the last block boundary at or before every multiple of the
span), so our gzip.meta has upstream's entries. Inflate output does not depend on the zlib
version; only the window compression does, and that uses pinned zlib-ng (:mod:`.gzindex`).
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import logging
from typing import BinaryIO

from overlaybd_provider.formats.errors import FormatError
from overlaybd_provider.formats.gzindex import SPAN, WINSIZE, GzIndexWriter
from overlaybd_provider.formats.zlibapi import Z_BLOCK, Z_BUF_ERROR, Z_OK, Z_STREAM_END, ZStream, inflate_lib

log = logging.getLogger(__name__)

_OUT = 1 << 20
_IN = 256 << 10
_EACH_BLOCK, _LAST_BLOCK = 0x80, 0x40


class GzipSourceError(FormatError):
    """The gzip source layer is corrupt, truncated or has trailing bytes."""


class NotTurboCapable(FormatError):
    """A valid layer that upstream's TurboOCI reader cannot serve (e.g. several gzip members)."""


class CheckpointingGunzip(io.RawIOBase):
    """A readable stream of the uncompressed tar; checkpoints go to ``index`` as it is read.

    ``src`` is read front to back exactly once; its sha256 and size are in ``digest`` /
    ``compressed_size`` once :attr:`ended`; ``uncompressed_size`` counts the output."""

    def __init__(self, src: BinaryIO, index: GzIndexWriter | None, *, name: str = "gzip layer",
                 span: int = SPAN, hash_output: bool = False) -> None:
        self._src, self._index, self.name, self._span = src, index, name, span
        self._z = inflate_lib()  # zlib-ng when available: same stream, ~1.5x faster
        self._strm = ZStream()
        ret = self._z.inflateInit2_(ctypes.byref(self._strm), 31, self._z.zlibVersion(), ctypes.sizeof(ZStream))
        if ret != Z_OK:
            raise MemoryError(f"inflateInit2 failed ({ret})")
        self._open = True
        self._in = (ctypes.c_char * _IN)()
        self._in_addr = ctypes.addressof(self._in)
        self._out = (ctypes.c_char * (WINSIZE + _OUT))()
        self._out_addr = ctypes.addressof(self._out)
        self._view = memoryview(self._out).cast("B")
        self._fill = WINSIZE  # _out[:WINSIZE] = the 32 KiB before _out[WINSIZE] (zeros at start)
        self._rpos = WINSIZE
        self._hash = hashlib.sha256()
        self._out_hash = hashlib.sha256() if hash_output else None  # the tar's digest (a diff_id)
        self.compressed_size = 0
        self.uncompressed_size = 0
        self.ended = False
        # IndexFilterRecorder state: next multiple of the span, and the kept candidate
        self._expected = 0
        self._last: list | None = None  # [bits, en, de, buffer end offset, window or None]
        self._last_de = -1

    # -- io.RawIOBase ------------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        mv = memoryview(b).cast("B")
        while self._rpos == self._fill:
            if self.ended:
                return 0
            self._step()
        n = min(len(mv), self._fill - self._rpos)
        mv[:n] = self._view[self._rpos:self._rpos + n]
        if self._out_hash is not None:
            self._out_hash.update(mv[:n])
        self._rpos += n
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        buf = bytearray(size)
        mv = memoryview(buf)
        got = 0
        while got < size:
            n = self.readinto(mv[got:])
            if not n:
                break
            got += n
        return bytes(buf) if got == size else bytes(buf[:got])

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    @property
    def content_digest(self) -> str | None:
        """sha256 of the uncompressed stream served so far (``hash_output`` only)."""
        return None if self._out_hash is None else "sha256:" + self._out_hash.hexdigest()

    # -- inflate -------------------------------------------------------------------------------
    def _refill_input(self) -> None:
        n = self._src.readinto(memoryview(self._in).cast("B"))  # type: ignore[attr-defined]
        if not n:
            raise GzipSourceError(f"{self.name}: gzip stream is truncated (after {self.compressed_size} "
                                  f"compressed bytes)")
        self._hash.update(memoryview(self._in).cast("B")[:n])
        self.compressed_size += n
        self._strm.next_in = self._in_addr
        self._strm.avail_in = n

    def _recycle(self) -> None:
        """The output buffer is full and consumed: keep its last 32 KiB as the next window."""
        last = self._last
        if last is not None and last[4] is None:
            last[4] = bytes(self._view[last[3] - WINSIZE:last[3]])
        self._view[:WINSIZE] = self._view[self._fill - WINSIZE:self._fill]
        self._fill = self._rpos = WINSIZE

    def _step(self) -> None:
        s = self._strm
        if self._fill == WINSIZE + _OUT:
            self._recycle()
        if s.avail_in == 0:
            self._refill_input()
        room = WINSIZE + _OUT - self._fill
        s.next_out = self._out_addr + self._fill
        s.avail_out = room
        ret = self._z.inflate(ctypes.byref(s), Z_BLOCK)
        made = room - s.avail_out
        self._fill += made
        self.uncompressed_size += made
        if ret == Z_STREAM_END:
            self._finish()
            return
        if ret not in (Z_OK, Z_BUF_ERROR):
            msg = (s.msg or b"inflate error").decode("ascii", "replace")
            raise GzipSourceError(f"{self.name}: corrupt gzip data at compressed byte "
                                  f"{s.total_in}: {msg}")
        dt = s.data_type
        if self._index is not None and dt & _EACH_BLOCK and not dt & _LAST_BLOCK:
            self._record(dt & 7, s.total_in, s.total_out)

    def _finish(self) -> None:
        s = self._strm
        rest = ctypes.string_at(s.next_in, s.avail_in) if s.avail_in else b""
        more = self._src.read(1 << 16)
        if rest or more:
            self._hash.update(more)
            self.compressed_size += len(more)
            tail = rest + more
            if tail[:2] == b"\x1f\x8b":
                raise NotTurboCapable(f"{self.name}: gzip layer with more than one member: upstream's gzip "
                                      "index covers only the first, so it cannot be TurboOCI")
            raise GzipSourceError(f"{self.name}: {len(tail)}+ bytes of trailing data after the gzip stream")
        self.ended = True
        self._end()

    def _end(self) -> None:
        if self._open:
            self._z.inflateEnd(ctypes.byref(self._strm))
            self._open = False

    def close(self) -> None:
        self._end()
        super().close()

    # -- checkpoint selection (IndexFilterRecorder::record) -----------------------------------
    def _record(self, bits: int, en: int, de: int) -> None:
        if de == self._last_de:
            return  # the same boundary seen again (inflate stopped there for want of input)
        self._last_de = de
        cur = [bits, en, de, self._fill, None]
        if de < self._expected:
            self._last = cur
            return
        if de > self._expected:
            if self._last is not None:
                self._add(self._last)
            self._last = cur
            while self._expected < de:
                self._expected += self._span
        if de == self._expected:
            self._last = None
            self._add(cur)
            self._expected += self._span

    def _add(self, point: list) -> None:
        bits, en, de, end, win = point
        if win is None:
            win = bytes(self._view[end - WINSIZE:end])
        assert self._index is not None
        self._index.add(de, en, bits, win)
