"""Sequential block and inode allocation, like the reference libext2fs fork (ext4-profile.md §5).

New blocks and inodes are taken after the highest one in use; the search wraps to the start
only when the end is reached. Frees are deferred to ``commit_frees`` (called at flush), so a
block or inode freed in this layer is never handed out again by the same layer — files come
out contiguous and the layer holds only new blocks. Free counts are kept exact per group and
in the superblock at every step.
"""

from __future__ import annotations

import logging

from overlaybd_provider.ext4.bitmap import BitmapSet, highest_set, next_clear, next_set, range_mask
from overlaybd_provider.ext4.errors import Ext4Error
from overlaybd_provider.ext4.layout import Geometry, GroupDesc, Superblock

log = logging.getLogger(__name__)


class OutOfSpace(Ext4Error):
    """The filesystem (virtual size) has no free blocks or inodes left."""


class Allocator:
    def __init__(self, sb: Superblock, geo: Geometry, groups: list[GroupDesc],
                 block_bitmaps: BitmapSet, inode_bitmaps: BitmapSet) -> None:
        self.sb, self.geo, self.groups = sb, geo, groups
        self.bbm, self.ibm = block_bitmaps, inode_bitmaps
        self._block_cursor: int | None = None
        self._inode_cursor: int | None = None
        self._freed_blocks: list[tuple[int, int]] = []
        self._freed_inodes: list[tuple[int, bool]] = []
        self.context = ""  # tar entry being applied, for error messages
        self._brun_end = 0  # end of the free run known at the block cursor
        self._bpend: list[int] | None = None  # [group, start, end) taken, bits not yet set
        self._irun_end = 0
        self._ipend: list[int] | None = None

    # -- cursors -------------------------------------------------------------------------
    def _group_meta_blocks(self, g: int) -> int:
        return self.geo.super_overhead(g) + 2 + self.geo.itable_blocks

    def _find_block_cursor(self) -> int:
        geo = self.geo
        for g in range(geo.ngroups - 1, -1, -1):
            if self.groups[g].free_blocks_count < geo.group_size(g) - self._group_meta_blocks(g):
                return geo.group_start(g) + highest_set(self.bbm.get(g)
                                                        & ((1 << geo.group_size(g)) - 1)) + 1
        return 0

    def _find_inode_cursor(self) -> int:
        geo = self.geo
        for g in range(geo.ngroups - 1, -1, -1):
            if self.groups[g].free_inodes_count < geo.ipg:
                return g * geo.ipg + highest_set(self.ibm.get(g) & ((1 << geo.ipg) - 1)) + 1
        return 0

    # -- blocks ---------------------------------------------------------------------------
    def alloc_blocks(self, count: int) -> list[tuple[int, int]]:
        """``count`` blocks as (start, length) runs in ascending order after the cursor.

        The free run found at the cursor is remembered, so consecutive small allocations cost
        O(1); bitmap bits are set in one operation per run (``_commit_blocks``).
        """
        if count <= 0:
            return []
        if count > self.sb.free_blocks_count:
            raise OutOfSpace(f"{self.context}: out of blocks: need {count}, "
                             f"{self.sb.free_blocks_count} free in a {self.geo.blocks_count}-block filesystem")
        if self._block_cursor is None:
            self._block_cursor = self._find_block_cursor()
        geo = self.geo
        runs: list[tuple[int, int]] = []
        cursor, wrapped = self._block_cursor, False
        while count:
            if cursor < self._brun_end:
                n = min(count, self._brun_end - cursor)
                self._take_blocks(cursor, n)
                if runs and runs[-1][0] + runs[-1][1] == cursor:
                    runs[-1] = (runs[-1][0], runs[-1][1] + n)
                else:
                    runs.append((cursor, n))
                count -= n
                cursor += n
                continue
            self._commit_blocks()
            g = cursor // geo.bpg
            if g >= geo.ngroups:
                if wrapped:
                    raise OutOfSpace(f"{self.context}: out of blocks")
                cursor, wrapped, g = 0, True, 0
            gstart, limit = geo.group_start(g), geo.group_size(g)
            if self.groups[g].free_blocks_count == 0:
                cursor = gstart + geo.bpg
                continue
            bits = self.bbm.get(g)
            s = next_clear(bits, cursor - gstart, limit)
            if s < 0:
                cursor = gstart + geo.bpg
                continue
            cursor = gstart + s
            self._brun_end = gstart + next_set(bits, s, limit)
        self._block_cursor = cursor
        return runs

    def _take_blocks(self, start: int, n: int) -> None:
        g = start // self.geo.bpg
        self.groups[g].free_blocks_count -= n
        self.sb.free_blocks_count -= n
        pend = self._bpend
        if pend is not None and pend[0] == g and pend[2] == start:
            pend[2] = start + n
        else:
            self._commit_blocks()
            self._bpend = [g, start, start + n]

    def _commit_blocks(self) -> None:
        pend = self._bpend
        if pend is not None:
            g, start, end = pend
            off = start - self.geo.group_start(g)
            self.bbm.set_bits(g, self.bbm.get(g) | range_mask(off, end - start))
            self._bpend = None

    def alloc_block(self) -> int:
        return self.alloc_blocks(1)[0][0]

    def free_blocks(self, start: int, count: int) -> None:
        if count > 0:
            self._freed_blocks.append((start, count))

    # -- inodes ---------------------------------------------------------------------------
    def alloc_inode(self, is_dir: bool) -> int:
        if self.sb.s_free_inodes_count == 0:
            raise OutOfSpace(f"{self.context}: out of inodes ({self.geo.inodes_count} in the filesystem)")
        if self._inode_cursor is None:
            self._inode_cursor = self._find_inode_cursor()
        geo = self.geo
        cursor, wrapped = self._inode_cursor, False  # 0-based index of the next candidate
        while cursor >= self._irun_end:
            self._commit_inodes()
            g = cursor // geo.ipg
            if g >= geo.ngroups:
                if wrapped:
                    raise OutOfSpace(f"{self.context}: out of inodes")
                cursor, wrapped, g = 0, True, 0
            if self.groups[g].free_inodes_count == 0:
                cursor = (g + 1) * geo.ipg
                continue
            bits = self.ibm.get(g)
            s = next_clear(bits, cursor - g * geo.ipg, geo.ipg)
            if s < 0:
                cursor = (g + 1) * geo.ipg
                continue
            cursor = g * geo.ipg + s
            self._irun_end = g * geo.ipg + next_set(bits, s, geo.ipg)
        g = cursor // geo.ipg
        gd = self.groups[g]
        gd.free_inodes_count -= 1
        if is_dir:
            gd.used_dirs_count += 1
        self.sb.s_free_inodes_count -= 1
        pend = self._ipend
        if pend is not None and pend[0] == g and pend[2] == cursor:
            pend[2] = cursor + 1
        else:
            self._commit_inodes()
            self._ipend = [g, cursor, cursor + 1]
        self._inode_cursor = cursor + 1
        return cursor + 1  # inode numbers start at 1

    def _commit_inodes(self) -> None:
        pend = self._ipend
        if pend is not None:
            g, start, end = pend
            off = start - g * self.geo.ipg
            self.ibm.set_bits(g, self.ibm.get(g) | range_mask(off, end - start))
            self._ipend = None

    def free_inode(self, ino: int, is_dir: bool) -> None:
        self._freed_inodes.append((ino, is_dir))

    # -- deferred frees -------------------------------------------------------------------
    def commit_frees(self) -> int:
        """Clear the bits of everything freed in this layer; returns blocks released."""
        self._commit_blocks()
        self._commit_inodes()
        self._brun_end = self._irun_end = 0
        geo, released = self.geo, 0
        for start, count in sorted(self._freed_blocks):
            while count:
                g = start // geo.bpg
                off = start - geo.group_start(g)
                n = min(count, geo.group_size(g) - off)
                self.bbm.set_bits(g, self.bbm.get(g) & ~range_mask(off, n))
                self.groups[g].free_blocks_count += n
                self.sb.free_blocks_count += n
                released += n
                start += n
                count -= n
        for ino, is_dir in sorted(self._freed_inodes):
            g, bit = divmod(ino - 1, geo.ipg)
            self.ibm.set_bits(g, self.ibm.get(g) & ~(1 << bit))
            gd = self.groups[g]
            gd.free_inodes_count += 1
            if is_dir:
                gd.used_dirs_count -= 1
            self.sb.s_free_inodes_count += 1
        self._freed_blocks.clear()
        self._freed_inodes.clear()
        return released
