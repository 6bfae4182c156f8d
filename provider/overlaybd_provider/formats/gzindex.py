"""The ``gzip.meta`` random-access index of a gzip layer (overlaybd ``src/overlaybd/gzindex/``).

Layout, from ``gzfile_index.h`` (all little-endian, packed):

* a 333-byte ``IndexFileHeader``: magic ``ddgzidx\\0``, version 1.0, ``dict_compress_algo``
  (1 = zlib), level, flag, ``span``, ``window`` (32768), ``index_size`` (29 = one entry),
  ``index_num``, ``gzip_file_size`` (the compressed source), ``index_file_size`` (this file),
  ``uncompress_file_size``, 256 reserved bytes, ``index_start`` (where the entry array starts,
  i.e. after the windows), ``index_area_len``, and ``crc`` = overlaybd's raw CRC32C of the 329
  bytes before it;
* the windows, one per entry from offset 333 on: the 32 KiB of output preceding the entry's
  point (zero-filled before the start of the stream), zlib-compressed (``dict_compress``);
* the entry array (29 bytes each: ``de_pos`` q, ``en_pos`` q, ``win_pos`` q, ``bits`` B,
  ``win_len`` I), zlib-compressed as one stream.

An entry is a deflate block boundary: ``de_pos`` in the uncompressed stream, ``en_pos`` the
first whole byte of the block in the gzip file and ``bits`` how many high bits of the byte
before it belong to the block (``GzFile::extract`` primes them with ``inflatePrime``).
:class:`GzipRandomAccess` reads the uncompressed source at any offset the way ``GzFile::pread``
does: nearest entry at or before the offset, raw inflate with the window as dictionary.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import tempfile
import threading
import zlib
from array import array
from bisect import bisect_right
from typing import BinaryIO

from overlaybd_provider.formats.crc import crc32c_raw
from overlaybd_provider.formats.errors import BadMagicError, ChecksumError, FormatError, TruncatedError
from overlaybd_provider.formats.source import ByteSource

log = logging.getLogger(__name__)

MAGIC = b"ddgzidx\0"
HEADER = struct.Struct("<8sBBBbBiiiqqqq256sqqI")
HEADER_SIZE = HEADER.size  # 333
ENTRY = struct.Struct("<qqqBI")
ENTRY_SIZE = ENTRY.size  # 29
WINSIZE = 32768
SPAN = 1 << 20  # what turboOCI-apply passes to create_gz_index
DICT_ALGO_ZLIB = 1
DICT_LEVEL = 6  # GZ_COMPRESS_LEVEL
MAX_ENTRIES = 1 << 24
_CHUNK = 64 << 10



def _inflate_at_most(data: bytes, limit: int) -> bytes:
    """zlib-inflate ``data`` into at most ``limit + 1`` bytes: an index file is input, and a few
    KiB of deflate can claim gigabytes; a longer result is wrong anyway (the caller checks it)."""
    d = zlib.decompressobj()
    out = d.decompress(data, limit + 1)
    if not d.eof and len(out) <= limit and not d.unconsumed_tail:
        raise zlib.error("incomplete or truncated stream")
    return out

class GzIndexError(FormatError):
    """A gzip.meta file is damaged or does not belong to the source it is used with."""


def _deflate_zlib(data: bytes, level: int) -> bytes:
    """zlib-format deflate with a pinned library (zlib-ng), so windows are byte-identical on
    every machine (the system zlib's output may change between releases)."""
    from zlib_ng import zlib_ng

    return zlib_ng.compress(data, level)


@dataclasses.dataclass(frozen=True)
class GzIndexInfo:
    """What a finished gzip.meta says (and ``inspect`` prints)."""

    span: int
    entries: int
    gzip_file_size: int
    uncompressed_size: int
    index_file_size: int
    dict_algo: int
    dict_level: int


class GzIndexWriter:
    """Write a gzip.meta: ``add()`` each checkpoint in order (windows go to a spool file as
    they come, so memory holds only 29 bytes per entry), then ``finish(out)``."""

    def __init__(self, *, span: int = SPAN, level: int = DICT_LEVEL, spool_dir: str | None = None) -> None:
        self.span = span
        self.level = level
        self._spool = tempfile.TemporaryFile(dir=spool_dir, prefix="gzmeta-")  # noqa: SIM115 - closed in close()
        self._entries = bytearray()
        self._count = 0
        self._pos = HEADER_SIZE
        self._last_de = -1

    @property
    def count(self) -> int:
        return self._count

    def add(self, de_pos: int, en_pos: int, bits: int, window: bytes) -> None:
        if len(window) != WINSIZE:
            raise ValueError("a gzip index window is exactly 32 KiB")
        if de_pos <= self._last_de:
            raise ValueError("gzip index points must be added in increasing order")
        self._last_de = de_pos
        packed = _deflate_zlib(bytes(window), self.level)
        self._spool.write(packed)
        self._entries += ENTRY.pack(de_pos, en_pos, self._pos, bits, len(packed))
        self._pos += len(packed)
        self._count += 1

    def finish(self, out: BinaryIO, *, gzip_file_size: int, uncompressed_size: int) -> GzIndexInfo:
        """Write the whole file to ``out`` (at its current position) and return its facts."""
        area = _deflate_zlib(bytes(self._entries), self.level)
        file_size = self._pos + len(area)
        head = HEADER.pack(MAGIC, 1, 0, DICT_ALGO_ZLIB, self.level, 0, self.span, WINSIZE, ENTRY_SIZE,
                           self._count, gzip_file_size, file_size, uncompressed_size, bytes(256),
                           self._pos, len(area), 0)
        head = head[:-4] + struct.pack("<I", crc32c_raw(head[:-4]))
        out.write(head)
        self._spool.seek(0)
        while True:
            chunk = self._spool.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
        out.write(area)
        return GzIndexInfo(self.span, self._count, gzip_file_size, uncompressed_size, file_size,
                           DICT_ALGO_ZLIB, self.level)

    def close(self) -> None:
        self._spool.close()


class GzIndex:
    """A parsed gzip.meta: header facts and the entry arrays (windows are read on demand)."""

    def __init__(self, src: ByteSource) -> None:
        self.src = src
        name = src.name
        if src.size < HEADER_SIZE:
            raise TruncatedError(f"{name}: truncated gzip index: {src.size} bytes, header needs {HEADER_SIZE}")
        raw = src.read(0, HEADER_SIZE)
        (magic, major, _minor, algo, level, _flag, span, window, esize, num, gz_size, file_size, unc_size,
         _res, start, area_len, crc) = HEADER.unpack(raw)
        if magic[:7] != MAGIC[:7]:
            raise BadMagicError(f"{name}: not a gzip index (magic {magic[:7]!r}, expected b'ddgzidx')")
        if crc32c_raw(raw[:-4]) != crc:
            raise ChecksumError(f"{name}: gzip index header CRC mismatch")
        if major != 1 or esize != ENTRY_SIZE or window != WINSIZE or algo not in (0, 1):
            raise GzIndexError(f"{name}: unsupported gzip index (version {major}, entry size {esize}, "
                               f"window {window}, dict algorithm {algo})")
        if file_size != src.size or start + area_len != src.size or start < HEADER_SIZE:
            raise TruncatedError(f"{name}: gzip index says {file_size} bytes (index area {start}+{area_len}) "
                                 f"but the file has {src.size}")
        if not 0 < num <= MAX_ENTRIES:
            raise GzIndexError(f"{name}: gzip index has {num} entries")
        area = src.read(start, area_len)
        try:
            table = _inflate_at_most(area, num * ENTRY_SIZE) if algo else area
        except zlib.error as exc:
            raise GzIndexError(f"{name}: gzip index entry table does not inflate: {exc}") from None
        if len(table) != num * ENTRY_SIZE:
            raise GzIndexError(f"{name}: gzip index entry table has {len(table)} bytes, expected {num * ENTRY_SIZE}")
        self.de, self.en, self.win_pos = array("q"), array("q"), array("q")
        self.bits, self.win_len = bytearray(), array("I")
        prev = -1
        for i, (de, en, wp, bits, wl) in enumerate(ENTRY.iter_unpack(table)):
            if de <= prev or de > unc_size or not 0 < en <= gz_size or bits > 7 \
                    or wp < HEADER_SIZE or wp + wl > start:
                raise GzIndexError(f"{name}: gzip index entry {i} is out of range or order "
                                   f"(de_pos {de}, en_pos {en}, bits {bits}, window {wp}+{wl})")
            prev = de
            self.de.append(de)
            self.en.append(en)
            self.win_pos.append(wp)
            self.bits.append(bits)
            self.win_len.append(wl)
        self.info = GzIndexInfo(span, num, gz_size, unc_size, file_size, algo, level)

    def window(self, i: int) -> bytes:
        raw = self.src.read(self.win_pos[i], self.win_len[i])
        if self.info.dict_algo == 0:
            if len(raw) != WINSIZE:
                raise GzIndexError(f"{self.src.name}: window {i} is {len(raw)} bytes")
            return raw
        try:
            win = _inflate_at_most(raw, WINSIZE)
        except zlib.error as exc:
            raise GzIndexError(f"{self.src.name}: window {i} does not inflate: {exc}") from None
        if len(win) != WINSIZE:
            raise GzIndexError(f"{self.src.name}: window {i} inflates to {len(win)} bytes")
        return win

    def entry_for(self, offset: int) -> int:
        """Index of the last entry at or before ``offset`` (``GzFile::seek_index``)."""
        return max(0, bisect_right(self.de, offset) - 1)


class _Cursor:
    """An inflater positioned at ``pos`` of the uncompressed stream (continues sequential reads)."""

    def __init__(self, gz: ByteSource, index: GzIndex, i: int) -> None:
        from overlaybd_provider.formats.zlibapi import RawInflater

        self.gz = gz
        self.pos = index.de[i]
        bits = index.bits[i]
        self.inpos = index.en[i] - (1 if bits else 0)
        prime = 0
        if bits:  # the block's first bits are the high ones of the byte before en_pos
            prime = gz.read(self.inpos, 1)[0]
            self.inpos += 1
        self.d = RawInflater(index.window(i), bits, prime)

    def take(self, length: int) -> bytes:
        """Up to ``length`` bytes from the current position (fewer at the end of the member)."""
        out = []
        have = 0
        d = self.d
        while have < length and not d.eof:
            if d.needs_input:
                n = min(_CHUNK, self.gz.size - self.inpos)
                if n <= 0:
                    break
                d.feed(self.gz.read(self.inpos, n))
                self.inpos += n
            try:
                part = d.inflate(min(length - have, 1 << 20))
            except ValueError as exc:
                raise GzIndexError(f"{self.gz.name}: gzip data at uncompressed offset {self.pos} does not inflate "
                                   f"from its gzip.meta checkpoint ({exc}): wrong source for this index?") from None
            if not part and not d.needs_input and not d.eof:
                raise GzIndexError(f"{self.gz.name}: gzip data at uncompressed offset {self.pos} makes no progress")
            out.append(part)
            have += len(part)
            self.pos += len(part)
        return b"".join(out)

    def skip(self, n: int) -> None:
        while n > 0:
            got = self.take(min(n, 1 << 20))
            if not got:
                return
            n -= len(got)


class GzipRandomAccess:
    """The uncompressed bytes of a gzip source as a :class:`ByteSource`, through its gzip.meta.

    Reads past the end of the stream return zeros, as upstream's LSMT pads short target reads.
    One cursor is kept, so sequential reads (export) inflate every byte once."""

    def __init__(self, gz: ByteSource, index: GzIndex, name: str | None = None) -> None:
        if index.info.gzip_file_size != gz.size:
            raise GzIndexError(f"{index.src.name}: gzip index is for a {index.info.gzip_file_size}-byte source, "
                               f"but {gz.name} has {gz.size} bytes")
        self.gz, self.index = gz, index
        self.name = name or gz.name
        self._size = index.info.uncompressed_size
        self._cur: _Cursor | None = None
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        with self._lock:
            cur = self._cur
            i = self.index.entry_for(offset)
            if cur is None or cur.pos > offset or self.index.de[i] > cur.pos:
                cur = self._cur = _Cursor(self.gz, self.index, i)
            cur.skip(offset - cur.pos)
            data = cur.take(length) if cur.pos == offset else b""
        if len(data) < length:
            if offset + len(data) < min(self._size, offset + length):
                raise GzIndexError(f"{self.name}: gzip stream ends at {offset + len(data)}, "
                                   f"before the {self._size} bytes its index declares")
            data += bytes(length - len(data))
        return data


def open_gzip_random_access(gz_path_or_source: str | os.PathLike[str] | ByteSource,
                            index: ByteSource) -> GzipRandomAccess:
    from overlaybd_provider.formats.source import FileRange

    if isinstance(gz_path_or_source, (str, os.PathLike)):
        gz = FileRange(open(gz_path_or_source, "rb"), name=str(gz_path_or_source))  # noqa: SIM115
    else:
        gz = gz_path_or_source
    return GzipRandomAccess(gz, GzIndex(index))
