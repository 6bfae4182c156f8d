"""Free blocks a flattened layer need not store (``--flatten``).

Applying ten tars onto one upper layer writes blocks that a later tar frees again (a deleted or
rewritten file, a directory rebuilt elsewhere). Sealed as they are, those dead bytes would make
the flattened layer as large as the native layers together. The filesystem's block bitmaps
say which blocks are in use; written blocks that are free are left out of the seal
(:meth:`OverlayBlockDevice.discard`) and read as zeros, which is all a free block may hold.
mkfs writes every group's bitmap (no ``BLOCK_UNINIT``), so the bitmaps are complete.
"""

from __future__ import annotations

from overlaybd_provider.ext4.blockdev import OverlayBlockDevice
from overlaybd_provider.ext4.fs import Filesystem

__all__ = ["free_written_runs", "trim_free_blocks"]


def _zero_runs(bits: int, n: int) -> list[tuple[int, int]]:
    """``(offset, length)`` runs of clear bits among the low ``n`` bits of ``bits``."""
    free = ~bits & ((1 << n) - 1)
    out = []
    while free:
        low = (free & -free).bit_length() - 1
        shifted = free >> low
        length = (shifted ^ (shifted + 1)).bit_length() - 1
        out.append((low, length))
        free &= ~(((1 << length) - 1) << low)
    return out


def free_written_runs(fs: Filesystem, dev: OverlayBlockDevice) -> list[tuple[int, int]]:
    """Sorted ``(first, count)`` runs of blocks the upper layer holds but the filesystem does
    not use (after :meth:`Filesystem.flush`)."""
    geo = fs.geo
    out: list[tuple[int, int]] = []
    for first, count in dev.extents():
        blk, end = first, first + count
        while blk < end:
            g = blk // geo.bpg
            gstart = geo.group_start(g)
            n = min(end, gstart + geo.group_size(g)) - blk
            for off, length in _zero_runs(fs.bbm.get(g) >> (blk - gstart), n):
                start = blk + off
                if out and out[-1][0] + out[-1][1] == start:
                    out[-1] = (out[-1][0], out[-1][1] + length)
                else:
                    out.append((start, length))
            blk += n
    return out


def trim_free_blocks(fs: Filesystem, dev: OverlayBlockDevice) -> int:
    """Discard the free written blocks of ``dev``; returns how many."""
    runs = free_written_runs(fs, dev)
    dev.discard(runs)
    return sum(count for _, count in runs)
