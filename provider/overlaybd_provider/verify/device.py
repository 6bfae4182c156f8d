"""Read-only 4 KiB block access to a merged image: a layer stack or a raw disk file.

The walker reads metadata through :meth:`BlockDevice.block` (a bounded LRU cache: inode-table
and directory blocks are read again and again) and file data through :meth:`read_blocks`
(uncached, large reads). :meth:`mapped_runs` tells which blocks any layer stores at all, so
that scans over mostly-empty inode tables and the metadata export skip the holes of a 64 GiB
device instead of reading gigabytes of zeros.
"""

from __future__ import annotations

import bisect
import collections
import os
from typing import Protocol

BLOCK = 4096
ZERO_BLOCK = bytes(BLOCK)


class ByteDevice(Protocol):
    """What :class:`~overlaybd_provider.formats.stack.LayerStack` offers (and :class:`RawImage`)."""

    virtual_size: int

    def read(self, offset: int, length: int) -> bytes: ...


class RawImage:
    """A raw disk image file as a device (tests, damaged exports); holes via SEEK_DATA."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        self.virtual_size = os.fstat(self._fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        return data + bytes(length - len(data)) if len(data) < length else data

    def mapped_byte_runs(self) -> list[tuple[int, int]]:
        runs: list[tuple[int, int]] = []
        pos = 0
        while pos < self.virtual_size:
            try:
                start = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(self._fd, start, os.SEEK_HOLE)
            runs.append((start, end))
            pos = end
        return runs

    def close(self) -> None:
        os.close(self._fd)


class BlockDevice:
    """Blocks of a :class:`ByteDevice`; ``cache_blocks`` bounds the metadata cache (16 MiB)."""

    def __init__(self, dev: ByteDevice, *, cache_blocks: int = 4096) -> None:
        self.dev = dev
        self.size = dev.virtual_size
        self.blocks_count = self.size // BLOCK
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._limit = cache_blocks
        self._runs: tuple[list[int], list[int]] | None = None
        self.bytes_read = 0

    def block(self, n: int) -> bytes:
        data = self._cache.get(n)
        if data is not None:
            self._cache.move_to_end(n)
            return data
        data = self.read_blocks(n, 1)
        self._cache[n] = data
        if len(self._cache) > self._limit:
            self._cache.popitem(last=False)
        return data

    def read_blocks(self, n: int, count: int) -> bytes:
        if n < 0 or count < 0 or (n + count) * BLOCK > self.size:
            raise ValueError(f"blocks {n}+{count} are outside the {self.blocks_count}-block device")
        self.bytes_read += count * BLOCK
        return self.dev.read(n * BLOCK, count * BLOCK)

    # -- what is stored at all -------------------------------------------------------------
    def _load_runs(self) -> tuple[list[int], list[int]]:
        if self._runs is None:
            starts: list[int] = []
            ends: list[int] = []
            for lo, hi in self._byte_runs():
                b0, b1 = lo // BLOCK, -(-hi // BLOCK)
                if ends and b0 <= ends[-1]:
                    ends[-1] = max(ends[-1], b1)
                else:
                    starts.append(b0)
                    ends.append(b1)
            self._runs = (starts, ends)
        return self._runs

    def _byte_runs(self) -> list[tuple[int, int]]:
        dev = self.dev
        extents = getattr(dev, "mapped_extents", None)
        if extents is not None:
            return [(e.offset, e.offset + e.length) for e in extents() if not e.zeroed]
        runs = getattr(dev, "mapped_byte_runs", None)
        if runs is not None:
            return runs()
        return [(0, self.size)]

    def mapped_runs(self, start: int, count: int) -> list[tuple[int, int]]:
        """Sub-runs ``(block, count)`` of ``[start, start+count)`` that some layer stores."""
        starts, ends = self._load_runs()
        out: list[tuple[int, int]] = []
        end = start + count
        i = bisect.bisect_right(ends, start)
        while i < len(starts) and starts[i] < end:
            lo, hi = max(start, starts[i]), min(end, ends[i])
            if lo < hi:
                out.append((lo, hi - lo))
            i += 1
        return out
