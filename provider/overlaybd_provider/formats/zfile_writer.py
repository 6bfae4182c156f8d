"""Streaming ZFile writer (zfile.md §8): provisional header 0x13, blocks, jump table,
trailer 0x16, header rewritten as 0x1B; bounded memory, compression on a thread pool."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import sys
from array import array
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from overlaybd_provider.formats.crc import crc32c_raw
from overlaybd_provider.formats.errors import BlockTooLargeError
from overlaybd_provider.formats.zfile_codec import BatchCompressor
from overlaybd_provider.formats.zfile_header import (
    ALGORITHMS,
    BLOCK_SIZES,
    FLAGS_FINAL_HEADER,
    FLAGS_PROVISIONAL_HEADER,
    FLAGS_TRAILER,
    ZFileHeader,
)

log = logging.getLogger(__name__)

_BATCH_BYTES = 1 << 20  # raw bytes per compression task


def _u32_table(lengths: array) -> bytes:
    if sys.byteorder != "little":
        lengths = array("I", lengths)
        lengths.byteswap()
    return lengths.tobytes()


@dataclasses.dataclass(frozen=True)
class ZFileInfo:
    """What a finished ZFile looks like (returned by :meth:`ZFileWriter.close`)."""

    original_file_size: int
    size: int
    index_offset: int
    index_size: int
    index_crc: int
    block_size: int
    algorithm: str
    header: ZFileHeader
    trailer: ZFileHeader | None


def finish_zfile(lengths: array, raw_size: int, *, index_offset: int, algorithm: str, block_size: int,
                 algo: int, level: int, verify: int) -> tuple[bytes, bytes, bytes, ZFileInfo]:
    """The final header, jump table and trailer of a ZFile whose stored blocks have ``lengths``
    and end at ``index_offset`` (zfile.md §8); used by the streaming writer and by callers that
    compressed the blocks themselves and know every length before writing."""
    table = _u32_table(lengths)
    fields = dict(index_offset=index_offset, index_size=len(lengths), original_file_size=raw_size,
                  index_crc=crc32c_raw(table), block_size=block_size, algo=algo, level=level, verify=verify)
    trailer = ZFileHeader(flags=FLAGS_TRAILER, **fields).to_bytes()
    header = ZFileHeader(flags=FLAGS_FINAL_HEADER, **fields).to_bytes()
    info = ZFileInfo(
        original_file_size=raw_size, size=index_offset + len(table) + len(trailer), index_offset=index_offset,
        index_size=len(lengths), index_crc=fields["index_crc"], block_size=block_size, algorithm=algorithm,
        header=ZFileHeader.from_bytes(header), trailer=ZFileHeader.from_bytes(trailer),
    )
    return header, table, trailer, info


class ZFileWriter:
    """Stream raw bytes in, ZFile bytes out (zfile.md §8). Never closes ``out``.

    ``threads`` compression workers (default: up to 2) work on 1 MiB batches; results are
    written in input order, so the output does not depend on scheduling. With
    ``overwrite_header`` the final header is written back at the start, which needs a
    seekable ``out``; pass ``overwrite_header=False`` for pipes/uploads (header stays 0x13).
    """

    def __init__(
        self,
        out: BinaryIO,
        *,
        algorithm: str = "lz4",
        block_size: int = 4096,
        level: int | None = None,
        verify: bool = True,
        overwrite_header: bool = True,
        threads: int | None = None,
        name: str | None = None,
    ):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown ZFile algorithm {algorithm!r} (use lz4 or zstd)")
        if block_size not in BLOCK_SIZES:
            raise ValueError(f"ZFile block size must be 4, 8, 16, 32 or 64 KiB, not {block_size}")
        if level is not None and not 0 <= level <= 22:
            raise ValueError(f"compression level {level} out of range")
        seekable = bool(getattr(out, "seekable", lambda: False)())
        if overwrite_header and not seekable:
            raise ValueError("overwrite_header needs a seekable output; pass overwrite_header=False")
        self._out = out
        self.name = name or str(getattr(out, "name", "<stream>"))
        self._start = out.tell() if seekable else 0
        self._overwrite = overwrite_header
        self._options = {
            "block_size": block_size,
            "algo": ALGORITHMS[algorithm],
            "level": level or 0,
            "verify": 1 if verify else 0,
        }
        self.algorithm = algorithm
        self.block_size = block_size
        self._compressor = BatchCompressor(ALGORITHMS[algorithm], block_size, level=level, verify=verify)
        if threads is None:
            threads = min(2, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="zfile") if threads > 1 else None
        self._max_pending = max(1, threads) * 2
        self._pending: collections.deque[Future] = collections.deque()
        self._batch = max(block_size, _BATCH_BYTES // block_size * block_size)
        self._buf = bytearray()
        self._lengths = array("I")
        self._raw_size = 0
        self._next_block = 0
        self._closed = False
        self._pos = 0
        self._header = ZFileHeader(flags=FLAGS_PROVISIONAL_HEADER, **self._options)
        self._emit(self._header.to_bytes())

    # -- output -----------------------------------------------------------------
    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self._pos += len(data)

    def _submit(self, chunk: bytes) -> None:
        first = self._next_block
        self._next_block += -(-len(chunk) // self.block_size)
        if self._pool is None:
            self._store(self._compressor.compress(chunk, first))
            return
        self._pending.append(self._pool.submit(self._compressor.compress, chunk, first))
        while len(self._pending) > self._max_pending:
            self._drain_one()

    def _drain_one(self) -> None:
        self._store(self._pending.popleft().result())

    def _store(self, result: tuple[bytes, array]) -> None:
        stored, lengths = result
        self._emit(stored)
        self._lengths.extend(lengths)

    # -- public -----------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Compress ``data`` (any length); returns ``len(data)``."""
        if self._closed:
            raise ValueError("write to a closed ZFileWriter")
        mv = memoryview(data).cast("B")
        n = len(mv)
        # slicing bytes with the full range returns the object itself: no copy for aligned input
        src = data if isinstance(data, bytes) else mv
        self._raw_size += n
        pos = 0
        try:
            if self._buf:
                take = min(n, self._batch - len(self._buf))
                self._buf += mv[:take]
                pos = take
                if len(self._buf) == self._batch:
                    self._submit(bytes(self._buf))
                    self._buf.clear()
            while n - pos >= self._batch:
                self._submit(bytes(src[pos : pos + self._batch]))
                pos += self._batch
            if pos < n:
                self._buf += mv[pos:]
        except BlockTooLargeError as exc:
            self.abort()
            raise BlockTooLargeError(f"{self.name}: {exc}") from None
        except BaseException:
            self.abort()
            raise
        return n

    def close(self) -> ZFileInfo:
        """Flush, write jump table and trailer, rewrite the header; returns the file's facts."""
        if self._closed:
            raise ValueError("ZFileWriter already closed")
        try:
            if self._buf:
                self._submit(bytes(self._buf))
                self._buf.clear()
            while self._pending:
                self._drain_one()
        except BlockTooLargeError as exc:
            self.abort()
            raise BlockTooLargeError(f"{self.name}: {exc}") from None
        except BaseException:
            self.abort()
            raise
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown()
        header, table, trailer, info = finish_zfile(
            self._lengths, self._raw_size, index_offset=self._pos, algorithm=self.algorithm, **self._options)
        self._emit(table)
        self._emit(trailer)
        size = self._pos
        log.debug("%s: ZFile %s/%d B: %d raw bytes -> %d bytes in %d blocks", self.name, self.algorithm,
                  self.block_size, self._raw_size, size, len(self._lengths))
        if self._overwrite:
            self._out.seek(self._start)
            self._out.write(header)
            self._out.seek(self._start + size)
        else:
            info = dataclasses.replace(info, header=ZFileHeader.from_bytes(self._header.to_bytes()))
        return info

    def abort(self) -> None:
        """Stop without finishing the file (the caller discards the output)."""
        self._closed = True
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ZFileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()
