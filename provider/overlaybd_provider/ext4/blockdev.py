"""The storage seam of the ext4 writer: a block device over a lower stack plus a new upper layer.

Reads fall through to the lower stack (zeros where nothing is mapped); writes go to the upper
store, which is exactly the content of the new layer. Written blocks live in an unlinked spool
file (not in memory) so a 2 GB layer keeps memory bounded; the index is a dict for scattered
metadata blocks plus a run list for the contiguous file data that makes up the bulk.
"""

from __future__ import annotations

import bisect
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from overlaybd_provider.ext4.layout import BLOCK_SIZE

log = logging.getLogger(__name__)

ZERO_BLOCK = bytes(BLOCK_SIZE)
SECTORS_PER_BLOCK = BLOCK_SIZE // 512
_SEAL_CHUNK_BLOCKS = 256  # 1 MiB per add_data call
_PEND_LIMIT = 8 << 20
_IOV_MAX = 512


class LowerStack(Protocol):
    """What the device needs from ``formats.lsmt.LayerStack``."""

    virtual_size: int

    def read(self, offset: int, length: int) -> bytes: ...


class SectorSink(Protocol):
    """What ``seal`` needs from ``formats.lsmt.LSMTWriter``."""

    def add_data(self, lba_sector: int, data: bytes) -> None: ...


class RawImage:
    """A raw (sparse) image file used as a lower stack, e.g. an ``overlaybd export`` result."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self.virtual_size = os.fstat(self._fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        return data if len(data) == length else data + bytes(length - len(data))

    def close(self) -> None:
        os.close(self._fd)


class RawImageSink:
    """Writes sealed sectors in place into a raw image file (tests, ``--raw`` debugging)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def add_data(self, lba_sector: int, data: bytes) -> None:
        os.pwrite(self._f.fileno(), data, lba_sector * 512)


class OverlayBlockDevice:
    """Block device = lower stack (read-only) + upper store (everything written)."""

    def __init__(self, lower: LowerStack | None, *, block_count: int | None = None,
                 spool_dir: str | None = None) -> None:
        self.lower = lower
        if block_count is None:
            block_count = (lower.virtual_size // BLOCK_SIZE) if lower is not None else 0
        self.block_count = block_count
        self._spool = tempfile.TemporaryFile(dir=spool_dir, prefix="ext4-upper-")  # noqa: SIM115 - closed by close()
        self._fd = self._spool.fileno()
        self._next_slot = 0  # spool position, in blocks
        self._single: dict[int, int] = {}  # block -> spool slot
        self._run_start: list[int] = []  # sorted block numbers
        self._run_len: list[int] = []
        self._run_slot: list[int] = []
        self.blocks_read_lower = 0
        # consecutive fresh writes are gathered here and written with one pwrite
        self._pend: list[bytes | memoryview] = []
        self._pend_bytes = 0
        self._pend_slot = 0
        self._max_end = 0  # one past the highest block held by the upper store

    # -- reads -----------------------------------------------------------------------------
    def _flush_pending(self) -> None:
        if self._pend:
            pos = self._pend_slot * BLOCK_SIZE
            for i in range(0, len(self._pend), _IOV_MAX):
                bufs = self._pend[i:i + _IOV_MAX]
                want = sum(len(b) for b in bufs)
                done = os.pwritev(self._fd, bufs, pos)
                if done != want:  # short write (rare): finish it plainly
                    os.pwrite(self._fd, b"".join(bytes(b) for b in bufs)[done:], pos + done)
                pos += want
            self._pend.clear()
            self._pend_bytes = 0

    def _upper_slot(self, n: int) -> int | None:
        if self._pend:
            self._flush_pending()
        slot = self._single.get(n)
        if slot is not None:
            return slot
        i = bisect.bisect_right(self._run_start, n) - 1
        if i >= 0 and n < self._run_start[i] + self._run_len[i]:
            return self._run_slot[i] + n - self._run_start[i]
        return None

    def read_block(self, n: int) -> bytes:
        slot = self._upper_slot(n)
        if slot is not None:
            return os.pread(self._fd, BLOCK_SIZE, slot * BLOCK_SIZE)
        if self.lower is None:
            return ZERO_BLOCK
        self.blocks_read_lower += 1
        return self.lower.read(n * BLOCK_SIZE, BLOCK_SIZE)

    def in_upper(self, n: int) -> bool:
        return self._upper_slot(n) is not None

    # -- writes ----------------------------------------------------------------------------
    def _check_range(self, n: int, count: int) -> None:
        if n < 0 or n + count > self.block_count:
            raise ValueError(f"block {n}+{count} outside device of {self.block_count} blocks")

    def write_block(self, n: int, data: bytes) -> None:
        if len(data) != BLOCK_SIZE:
            raise ValueError("write_block needs exactly one block")
        self._check_range(n, 1)
        slot = self._upper_slot(n)
        if slot is None:
            slot = self._next_slot
            self._next_slot += 1
            self._single[n] = slot
            self._max_end = max(self._max_end, n + 1)
        os.pwrite(self._fd, data, slot * BLOCK_SIZE)

    def write_blocks(self, n: int, data: bytes | memoryview) -> None:
        """Write a contiguous range; fresh ranges become one run entry appended to the spool."""
        count, rem = divmod(len(data), BLOCK_SIZE)
        if rem:
            raise ValueError("write_blocks needs whole blocks")
        if count == 0:
            return
        self._check_range(n, count)
        if self._overlaps_upper(n, count):
            mv = memoryview(data)
            for i in range(count):
                self.write_block(n + i, bytes(mv[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE]))
            return
        slot = self._next_slot
        if not self._pend:
            self._pend_slot = slot
        self._pend.append(data)
        self._pend_bytes += len(data)
        if self._pend_bytes >= _PEND_LIMIT:
            self._flush_pending()
        self._next_slot += count
        self._max_end = max(self._max_end, n + count)
        i = bisect.bisect_left(self._run_start, n)
        if (i > 0 and self._run_start[i - 1] + self._run_len[i - 1] == n
                and self._run_slot[i - 1] + self._run_len[i - 1] == slot):
            self._run_len[i - 1] += count
            return
        self._run_start.insert(i, n)
        self._run_len.insert(i, count)
        self._run_slot.insert(i, slot)

    def _overlaps_upper(self, n: int, count: int) -> bool:
        if n >= self._max_end:
            return False
        i = bisect.bisect_right(self._run_start, n + count - 1) - 1
        if i >= 0 and self._run_start[i] + self._run_len[i] > n:
            return True
        if len(self._single) < count:
            return any(n <= b < n + count for b in self._single)
        return any((n + k) in self._single for k in range(count))

    # -- output ----------------------------------------------------------------------------
    @property
    def blocks_written(self) -> int:
        return len(self._single) + sum(self._run_len)

    def _pieces(self) -> Iterator[tuple[int, int, int]]:
        """(block, count, slot) pieces of the upper store in ascending block order."""
        self._flush_pending()
        singles = sorted(self._single.items())
        runs = list(zip(self._run_start, self._run_len, self._run_slot, strict=True))
        i = j = 0
        while i < len(singles) or j < len(runs):
            if j >= len(runs) or (i < len(singles) and singles[i][0] < runs[j][0]):
                yield singles[i][0], 1, singles[i][1]
                i += 1
            else:
                yield runs[j]
                j += 1

    def extents(self) -> Iterator[tuple[int, int]]:
        """Merged (first block, count) ranges held by the upper layer."""
        cur: list[int] | None = None
        for blk, cnt, _slot in self._pieces():
            if cur is not None and cur[0] + cur[1] == blk:
                cur[1] += cnt
                continue
            if cur is not None:
                yield cur[0], cur[1]
            cur = [blk, cnt]
        if cur is not None:
            yield cur[0], cur[1]

    def seal(self, writer: SectorSink) -> int:
        """Stream every written block to ``writer.add_data`` in ascending LBA; returns blocks."""
        total = 0
        pend_blk, pend_n, pend = -1, 0, []
        for blk, cnt, slot in self._pieces():
            done = 0
            while done < cnt:
                take = min(cnt - done, _SEAL_CHUNK_BLOCKS)
                data = os.pread(self._fd, take * BLOCK_SIZE, (slot + done) * BLOCK_SIZE)
                b = blk + done
                if pend and pend_blk + pend_n == b and pend_n < _SEAL_CHUNK_BLOCKS:
                    pend.append(data)
                    pend_n += take
                else:
                    if pend:
                        writer.add_data(pend_blk * SECTORS_PER_BLOCK, b"".join(pend))
                    pend_blk, pend_n, pend = b, take, [data]
                done += take
                total += take
        if pend:
            writer.add_data(pend_blk * SECTORS_PER_BLOCK, b"".join(pend))
        return total

    def close(self) -> None:
        self._spool.close()
