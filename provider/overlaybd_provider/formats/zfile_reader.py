"""Random-access ZFile reader (zfile.md §7, legacy files §9): decompresses only the blocks a
read touches and verifies every CRC; a small LRU keeps recently decoded blocks."""

from __future__ import annotations

import collections
import logging
import sys
import threading
from array import array
from itertools import accumulate
from typing import BinaryIO

from overlaybd_provider.formats.crc import crc32c_raw
from overlaybd_provider.formats.errors import (
    BadMagicError,
    ChecksumError,
    CorruptBlockError,
    TruncatedError,
    UnsupportedError,
)
from overlaybd_provider.formats.source import ByteSource, as_source
from overlaybd_provider.formats.zfile_codec import BlockDecompressor
from overlaybd_provider.formats.zfile_header import (
    ALGORITHM_NAMES,
    BLOCK_CRC_SEED,
    FLAG_DATA,
    FLAG_HEADER,
    FLAG_HEADER_OVERWRITE,
    FLAG_SEALED,
    MAX_BLOCK_SIZE,
    MAX_INDEX_SIZE,
    ZFILE_HEADER_SIZE,
    ZFileHeader,
)

log = logging.getLogger(__name__)


class ZFileReader:
    """Random access to the raw bytes of a ZFile (zfile.md §7), CRCs verified on every read."""

    def __init__(
        self,
        f: BinaryIO | ByteSource,
        *,
        offset: int = 0,
        size: int | None = None,
        name: str | None = None,
        cache_blocks: int = 32,
    ):
        src = as_source(f, offset=offset, size=size, name=name)
        self._src = src
        self.name = src.name
        self._base = getattr(src, "base", 0)
        if src.size < 2 * ZFILE_HEADER_SIZE:
            raise TruncatedError(f"{self.name}: truncated ZFile: {src.size} bytes at offset {self._base}")
        header = ZFileHeader.from_bytes(src.read(0, ZFILE_HEADER_SIZE))
        if not header.magic_ok or not header.is_header:
            raise BadMagicError(f"{self.name}: not a ZFile: wrong magic or flags at offset {self._base}")
        if header.has_digest and not header.digest_ok():
            raise ChecksumError(f"{self.name}: ZFile header digest mismatch at offset {self._base}")
        self.header = header
        self.trailer: ZFileHeader | None = None
        trailer_offset = src.size - ZFILE_HEADER_SIZE
        if header.flags & FLAG_HEADER_OVERWRITE:
            info = header
        else:
            info = self.trailer = self._read_trailer(trailer_offset)
        self.info = info
        self._check_options(info)
        bs = self.block_size = info.block_size
        self.algorithm = ALGORITHM_NAMES[info.algo]
        self.verify = bool(info.verify)
        self._size = info.original_file_size
        n = info.index_size
        if n > MAX_INDEX_SIZE or n != -(-self._size // bs):
            raise CorruptBlockError(
                f"{self.name}: ZFile index_size {n} does not match {self._size} bytes in {bs}-byte blocks "
                f"(trailer at offset {self._base + trailer_offset})"
            )
        if info.index_offset + 4 * n > trailer_offset:
            raise TruncatedError(
                f"{self.name}: truncated ZFile: jump table of {n} entries at offset "
                f"{self._base + info.index_offset} overruns the trailer at {self._base + trailer_offset}"
            )
        table = src.read(info.index_offset, 4 * n)
        if info.has_digest and crc32c_raw(table) != info.index_crc:
            raise ChecksumError(
                f"{self.name}: ZFile jump table CRC mismatch at offset {self._base + info.index_offset}"
            )
        lengths = array("I", table)
        if sys.byteorder != "little":
            lengths.byteswap()
        first = ZFILE_HEADER_SIZE + info.dict_size
        self._offsets = array("Q", accumulate(lengths, initial=first))
        if self._offsets[-1] != info.index_offset:
            raise CorruptBlockError(
                f"{self.name}: ZFile block lengths end at offset {self._base + self._offsets[-1]}, "
                f"not at the jump table (offset {self._base + info.index_offset})"
            )
        self._decompressor = BlockDecompressor(info.algo, bs)
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._cache_blocks = cache_blocks
        self._lock = threading.Lock()

    def load_trailer(self) -> ZFileHeader:
        """The trailer record (read on demand when the header was overwritten)."""
        if self.trailer is None:
            self.trailer = self._read_trailer(self._src.size - ZFILE_HEADER_SIZE)
        return self.trailer

    def _read_trailer(self, at: int) -> ZFileHeader:
        t = ZFileHeader.from_bytes(self._src.read(at, ZFILE_HEADER_SIZE))
        need = FLAG_DATA | FLAG_SEALED
        if not t.magic_ok or t.flags & FLAG_HEADER or (t.flags & need) != need:
            raise BadMagicError(f"{self.name}: ZFile trailer has wrong magic or flags at offset {self._base + at}")
        if t.has_digest and not t.digest_ok():
            raise ChecksumError(f"{self.name}: ZFile trailer digest mismatch at offset {self._base + at}")
        return t

    def _check_options(self, info: ZFileHeader) -> None:
        bs = info.block_size
        if bs == 0 or bs & (bs - 1) or bs > MAX_BLOCK_SIZE:
            raise UnsupportedError(f"{self.name}: unsupported ZFile block size {bs}")
        if info.algo not in ALGORITHM_NAMES:
            raise UnsupportedError(f"{self.name}: unsupported ZFile algorithm {info.algo}")

    @property
    def size(self) -> int:
        """Size of the uncompressed stream (``original_file_size``)."""
        return self._size

    @property
    def index_size(self) -> int:
        return len(self._offsets) - 1

    def block_offset(self, block: int) -> int:
        """Where block ``block`` is stored (``block_offset(index_size)`` == ``index_offset``)."""
        return self._offsets[block]

    def stored_length(self, block: int) -> int:
        return self._offsets[block + 1] - self._offsets[block]

    def _decode(self, block: int, stored: bytes | memoryview) -> bytes:
        start = self._offsets[block]
        where = f"{self.name}: ZFile block {block} at offset {self._base + start}"
        if len(stored) <= (4 if self.verify else 0):
            raise CorruptBlockError(f"{where}: bad stored length {len(stored)}")
        if self.verify:
            body = stored[:-4]
            want = int.from_bytes(stored[-4:], "little")
            if crc32c_raw(body, BLOCK_CRC_SEED) != want:
                raise ChecksumError(f"{where}: block CRC mismatch")
        else:
            body = stored
        expected = min(self.block_size, self._size - block * self.block_size)
        try:
            return self._decompressor.decompress(body, expected)
        except ValueError as exc:
            raise CorruptBlockError(f"{where}: {exc}") from None

    def _block(self, block: int) -> bytes:
        data = self._cache.get(block)
        if data is not None:
            self._cache.move_to_end(block)
            return data
        start = self._offsets[block]
        data = self._decode(block, self._src.read(start, self._offsets[block + 1] - start))
        self._cache[block] = data
        if len(self._cache) > self._cache_blocks:
            self._cache.popitem(last=False)
        return data

    def read(self, offset: int, length: int) -> bytes:
        """Raw bytes ``[offset, offset+length)``, truncated at :attr:`size`."""
        end = min(offset + length, self._size)
        if offset < 0:
            raise ValueError("negative offset")
        if offset >= end:
            return b""
        bs = self.block_size
        b0, b1 = offset // bs, (end - 1) // bs
        with self._lock:
            if b0 == b1:
                return self._block(b0)[offset - b0 * bs : end - b0 * bs]
            parts: list[bytes] = []
            span_start = self._offsets[b0]
            span = memoryview(self._src.read(span_start, self._offsets[b1 + 1] - span_start))
            for b in range(b0, b1 + 1):
                cached = self._cache.get(b)
                if cached is None:
                    lo = self._offsets[b] - span_start
                    cached = self._decode(b, span[lo : self._offsets[b + 1] - span_start])
                parts.append(cached)
            self._cache[b1] = parts[-1]
            if len(self._cache) > self._cache_blocks:
                self._cache.popitem(last=False)
            parts[0] = parts[0][offset - b0 * bs :]
            parts[-1] = parts[-1][: end - b1 * bs]
            return b"".join(parts)

    def verify_all(self, chunk: int = 8 << 20) -> None:
        """Decode every block (checks all CRCs and lengths); raises on the first bad one."""
        for pos in range(0, self._size, chunk):
            self.read(pos, chunk)
