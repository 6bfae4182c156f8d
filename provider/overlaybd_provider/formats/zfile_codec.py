"""Per-block compression for ZFile (zfile.md §5): LZ4 block format or one zstd frame per block.

Blocks are compressed in *batches* (many blocks per call) so that a thread pool can work on
whole batches: python-lz4 and zstandard release the GIL while compressing, but per-block
calls at 4 KiB are dominated by call overhead, so batching is what makes a second core useful.
"""

from __future__ import annotations

import struct
import threading
from array import array

import lz4.block
import zstandard

from overlaybd_provider.formats.crc import crc32c_std
from overlaybd_provider.formats.errors import BlockTooLargeError
from overlaybd_provider.formats.zfile_header import (
    ALGO_LZ4,
    ALGO_ZSTD,
    BLOCK_CRC_SEED,
    MAX_STORED_BLOCK,
)

_CRC_SEED_INV = ~BLOCK_CRC_SEED & 0xFFFFFFFF
_U32 = struct.Struct("<I")
ZSTD_DEFAULT_LEVEL = 3  # zfile.md §5: upstream always compresses zstd at level 3


class BatchCompressor:
    """Compress batches of raw blocks into stored bytes (``compressed || crc``) and lengths.

    Thread-safe: zstd contexts are kept per thread.
    """

    def __init__(self, algo: int, block_size: int, *, level: int | None = None, verify: bool = True,
                 zstd_threads: int = 1):
        if algo not in (ALGO_LZ4, ALGO_ZSTD):
            raise ValueError(f"unsupported ZFile algorithm {algo}")
        self.algo = algo
        self.block_size = block_size
        self.level = ZSTD_DEFAULT_LEVEL if level is None else level
        self.verify = verify
        self.zstd_threads = zstd_threads  # workers inside one multi_compress_to_buffer call (C level)
        self._local = threading.local()

    def _zstd(self) -> zstandard.ZstdCompressor:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = zstandard.ZstdCompressor(level=self.level, write_content_size=True, write_checksum=False)
            self._local.cctx = cctx
        return cctx

    def compress(self, data: bytes | memoryview, first_block: int = 0) -> tuple[bytes, array]:
        """Return (stored bytes of every block, their stored lengths). ``data`` is split every
        ``block_size`` bytes; only its last block may be short."""
        mv = memoryview(data)
        bs = self.block_size
        if self.algo == ALGO_ZSTD:
            # one C call for the whole batch; frames are identical to ZstdCompressor.compress()
            blocks = [mv[pos : pos + bs] for pos in range(0, len(mv), bs)]
            compressed = list(self._zstd().multi_compress_to_buffer(blocks, threads=self.zstd_threads)) if blocks else []
        else:
            comp = lz4.block.compress
            compressed = [comp(mv[pos : pos + bs], store_size=False) for pos in range(0, len(mv), bs)]
        # one C-level pass per step (lengths, CRCs, interleave): no per-block Python statements
        extra = 4 if self.verify else 0
        lengths = array("I", [len(c) + extra for c in compressed])
        if lengths and max(lengths) > MAX_STORED_BLOCK:
            i = next(k for k, n in enumerate(lengths) if n > MAX_STORED_BLOCK)
            raise BlockTooLargeError(
                f"block {first_block + i} (raw offset {(first_block + i) * bs}) stores "
                f"{lengths[i]} bytes, more than overlaybd's 65536-byte read buffer; "
                f"use a smaller block size (--bs 32)"
            )
        if not extra:
            return b"".join(compressed), lengths
        crc = crc32c_std
        pack = _U32.pack
        # CRC32C_RAW(c, 100007) == ~crc32c(c, ~100007), inlined for speed
        parts: list[bytes | memoryview] = [b""] * (2 * len(compressed))
        parts[::2] = compressed
        parts[1::2] = [pack(crc(c, _CRC_SEED_INV) ^ 0xFFFFFFFF) for c in compressed]
        return b"".join(parts), lengths


class BlockDecompressor:
    """Decompress one stored block; raises ``ValueError`` with the reason on failure."""

    def __init__(self, algo: int, block_size: int):
        if algo not in (ALGO_LZ4, ALGO_ZSTD):
            raise ValueError(f"unsupported ZFile algorithm {algo}")
        self.algo = algo
        self.block_size = block_size
        self._local = threading.local()

    def decompress(self, compressed: bytes | memoryview, expected: int) -> bytes:
        try:
            if self.algo == ALGO_LZ4:
                out = lz4.block.decompress(compressed, uncompressed_size=self.block_size)
            else:
                dctx = getattr(self._local, "dctx", None)
                if dctx is None:
                    dctx = self._local.dctx = zstandard.ZstdDecompressor()
                out = dctx.decompress(compressed, max_output_size=self.block_size)
        except (lz4.block.LZ4BlockError, zstandard.ZstdError) as exc:
            raise ValueError(f"decompression failed ({exc})") from None
        if len(out) != expected:
            raise ValueError(f"block decompressed to {len(out)} bytes, expected {expected}")
        return out
