"""Structural checks of the merged ext4, modelled on e2fsck's passes (no repair, no e2fsprogs).

* pass 1 (:meth:`Checker.scan`): every stored inode-table block; each in-use inode's mapping,
  size, ``i_blocks``, dtime, symlink/device form, xattrs; every block it owns is *claimed*
  (a claim on an already claimed block is a multiply-claimed block), with group metadata
  (superblocks, descriptors, reserved GDT, bitmaps, inode tables) and the resize inode;
* passes 2-4 (driven by the tree walk in :mod:`.compare`): directory blocks and htrees
  (:mod:`.dirs`), '.'/'..', entry file types, connectivity and link counts;
* pass 5 (:meth:`Checker.finish`): block and inode bitmaps against the claims, padding bits,
  free block/inode counts (against the on-disk bitmaps, like ``e2fsck -n``) and directory counts
  per group and in the superblock.

Claims are bitmaps over the whole filesystem (2 MiB for 64 GiB). Inode-table blocks that no
layer stores are never read: they are zero, i.e. free inodes. The blocks e2fsck would read
(all metadata, no file data) are collected in :attr:`Checker.export_runs` for the sparse
metadata-only export that e2fsck runs on (:mod:`.e2fsck`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from overlaybd_provider.ext4 import layout as L
from overlaybd_provider.verify import bitset as B
from overlaybd_provider.verify.device import BLOCK, ZERO_BLOCK
from overlaybd_provider.verify.dirs import Listing, read_directory
from overlaybd_provider.verify.ext4read import (
    BG_BLOCK_UNINIT,
    BG_INODE_UNINIT,
    JOURNAL_INO,
    Ext4Reader,
    FileMap,
    InodeRec,
)
from overlaybd_provider.verify.findings import Findings
from overlaybd_provider.verify.xattrs import check_block, check_ibody

_SCAN_CHUNK = 256  # inode-table blocks per read (1 MiB)
_FAST_SYMLINK_MAX = 59
_DEVICE_TYPES = (L.S_IFCHR, L.S_IFBLK, L.S_IFIFO, L.S_IFSOCK)
_MAX_DUP_REPORTS = 20


def _strnlen(data: bytes) -> int:
    i = data.find(b"\0")
    return len(data) if i < 0 else i


class Checker:
    """State shared by the passes; problems go to ``findings`` as ``filesystem`` findings."""

    def __init__(self, reader: Ext4Reader, findings: Findings) -> None:
        self.r = reader
        self.findings = findings
        geo = reader.geo
        self.claims = B.new_bits(geo.blocks_count)
        self.inuse = B.new_bits(geo.inodes_count + 1)
        self.dirs = B.new_bits(geo.inodes_count + 1)
        self.seen = B.new_bits(geo.inodes_count + 1)
        self.multi: dict[int, list[bytes]] = {}
        self.multi_links: dict[int, int] = {}
        self.xattr_refs: dict[int, int] = {}
        self.xattr_refcount: dict[int, int | None] = {}
        self.export_runs: list[tuple[int, int]] = []
        self.limits: list[str] = []
        self.inodes_in_use = 0
        self._dups = 0
        self._on_file: Callable[[InodeRec, FileMap], None] | None = None

    def bad(self, text: str) -> None:
        self.findings.problem(text)

    # -- claims ----------------------------------------------------------------------------------
    def claim(self, start: int, count: int, owner: str, *, export: bool = False) -> None:
        end = start + count
        if count <= 0 or start < 0 or end > self.r.geo.blocks_count:
            self.bad(f"{owner}: blocks {start}+{count} are outside the filesystem")
            return
        dup = B.first_set(self.claims, start, end)
        if dup >= 0:
            self._dups += 1
            if self._dups <= _MAX_DUP_REPORTS:
                self.bad(f"{owner}: block {dup} is claimed more than once (multiply-claimed)")
        B.set_range(self.claims, start, end)
        if export:
            self.export_runs.append((start, count))

    def _claim_map(self, fm: FileMap, owner: str, *, data_is_meta: bool) -> None:
        for b in fm.meta:
            self.claim(b, 1, owner, export=True)
        for _lb, p, n, _init in fm.extents:
            self.claim(p, n, owner, export=data_is_meta)

    # -- pass 1 ------------------------------------------------------------------------------------
    def scan(self, on_file: Callable[[InodeRec, FileMap], None] | None = None) -> None:
        """Pass 1; ``on_file(rec, map)`` is called for every in-use regular file (content hashing
        in inode order, i.e. in the order the data lies on the device)."""
        self._on_file = on_file
        r, geo = self.r, self.r.geo
        if r.gdt_csum:
            self.limits.append("uninit_bg: uninitialised block bitmaps are not compared")
        for g, gd in enumerate(r.groups):
            self._group_meta(g, gd)
        for ino in range(1, r.first_ino):
            B.set_bit(self.inuse, ino - 1)
        self._check_resize()
        ipb = geo.inodes_per_block
        for g, gd in enumerate(r.groups):
            if r.gdt_csum and gd.flags & BG_INODE_UNINIT:
                continue
            count = geo.ipg - gd.itable_unused if r.gdt_csum else geo.ipg
            nblocks = -(-count // ipb)
            if not r.in_fs(gd.inode_table, geo.itable_blocks):
                continue
            for start, n in r.dev.mapped_runs(gd.inode_table, nblocks):
                for k in range(0, n, _SCAN_CHUNK):
                    take = min(_SCAN_CHUNK, n - k)
                    data = r.dev.read_blocks(start + k, take)
                    for j in range(take):
                        block = data[j * BLOCK:(j + 1) * BLOCK]
                        if block == ZERO_BLOCK:
                            continue
                        first = (start + k + j - gd.inode_table) * ipb
                        for s in range(ipb):
                            idx = first + s
                            raw = block[s * geo.inode_size:(s + 1) * geo.inode_size]
                            if idx < count and raw.count(0) != len(raw):
                                self._inode(g * geo.ipg + idx + 1, raw)

    def _group_meta(self, g: int, gd: L.GroupDesc) -> None:
        r, geo = self.r, self.r.geo
        start = geo.group_start(g)
        end = start + geo.group_size(g)
        flex = bool(r.sb.s_feature_incompat & L.INCOMPAT_FLEX_BG)
        if geo.has_super(g):
            self.claim(start, geo.super_overhead(g), f"group {g} superblock and descriptors", export=True)
        for what, blk, n in (("block bitmap", gd.block_bitmap, 1), ("inode bitmap", gd.inode_bitmap, 1),
                             ("inode table", gd.inode_table, geo.itable_blocks)):
            if not r.in_fs(blk, n):
                self.bad(f"group {g}: {what} at block {blk} is outside the filesystem")
                continue
            if not flex and not (start <= blk and blk + n <= end):
                self.bad(f"group {g}: {what} at block {blk} is not inside the group")
            self.claim(blk, n, f"group {g} {what}", export=True)

    def _check_resize(self) -> None:
        r, geo = self.r, self.r.geo
        rec = r.inode(L.RESIZE_INO)
        if not r.sb.s_feature_compat & L.COMPAT_RESIZE_INODE:
            if rec.mode or rec.links:
                self.bad("the resize inode is in use but the resize_inode feature is off")
            return
        ptrs = struct.unpack("<15I", rec.i_block)
        dind = ptrs[L.EXT2_DIND_BLOCK]
        if any(p for i, p in enumerate(ptrs) if i != L.EXT2_DIND_BLOCK) or not r.in_fs(dind):
            self.bad(f"the resize inode is not valid (block pointers {list(ptrs)})")
            return
        self.claim(dind, 1, "resize inode", export=True)
        apb = BLOCK // 4
        table = struct.unpack(f"<{apb}I", r.dev.block(dind))
        backups = [g for g in range(1, geo.ngroups) if geo.has_super(g)]
        for j in range(geo.reserved_gdt):
            pblk = 1 + geo.desc_blocks + j
            if not r.in_fs(pblk) or table[(geo.desc_blocks + j) % apb] != pblk:
                self.bad(f"the resize inode is not valid (reserved GDT block {pblk} missing from its map)")
                return
            ind = struct.unpack(f"<{apb}I", r.dev.block(pblk))
            want = [pblk + g * geo.bpg for g in backups]
            if list(ind[:len(want)]) != want:
                self.bad(f"the resize inode is not valid (reserved GDT block {pblk} lists wrong backups)")
                return
        expect = (1 + geo.reserved_gdt * (1 + len(backups))) * 8
        if rec.blocks_512 != expect:
            self.bad(f"inode {L.RESIZE_INO} (resize inode) has i_blocks {rec.blocks_512}, should be {expect}")

    def _inode(self, ino: int, raw: bytes) -> None:
        r = self.r
        rec = r.parse_inode(ino, raw)
        if rec.links == 0:
            if ino >= r.first_ino and rec.mode and not rec.dtime:
                self.bad(f"inode {ino}: deleted (link count 0) but its dtime is 0")
            return
        if ino < r.first_ino and ino != L.ROOT_INO and not (ino == JOURNAL_INO and r.has_journal):
            return  # reserved (resize inode checked separately)
        B.set_bit(self.inuse, ino - 1)
        self.inodes_in_use += 1
        owner = f"inode {ino}"
        if ino == JOURNAL_INO:
            self._claim_map(r.file_map(rec, self.bad), owner, data_is_meta=True)
            return
        if rec.dtime:
            self.bad(f"inode {ino} is in use but has dtime set")
        ea = self._xattrs(rec)
        ft = rec.ftype
        if ft in (L.S_IFREG, L.S_IFDIR):
            fm = r.file_map(rec, self.bad)
            self._claim_map(fm, owner, data_is_meta=ft == L.S_IFDIR)
            self._check_iblocks(rec, fm.data_blocks + len(fm.meta) + ea)
            if ft == L.S_IFDIR:
                B.set_bit(self.dirs, ino - 1)
                last = max((lb + n - 1 for lb, _p, n, _i in fm.extents), default=-1)
                if rec.size % BLOCK or rec.size // BLOCK != last + 1:
                    self.bad(f"directory inode {ino} has i_size {rec.size} for {last + 1} blocks")
            else:
                last_init = max((lb + n - 1 for lb, _p, n, init in fm.extents if init), default=-1)
                if last_init >= 0 and rec.size < last_init * BLOCK:
                    self.bad(f"inode {ino} has i_size {rec.size} but blocks up to logical {last_init}")
                if self._on_file is not None:
                    self._on_file(rec, fm)
        elif ft == L.S_IFLNK:
            self._symlink(rec, ea)
        elif ft in _DEVICE_TYPES:
            if rec.flags & (L.EXT4_INDEX_FL | L.EXT4_EXTENTS_FL) or any(rec.i_block[16:]):
                self.bad(f"inode {ino} ({rec.kind}) has block flags or pointers")
            self._check_iblocks(rec, ea)
        else:
            self.bad(f"inode {ino} has an invalid mode {rec.mode:o}")

    def _check_iblocks(self, rec: InodeRec, blocks: int) -> None:
        if rec.blocks_512 != blocks * 8:
            self.bad(f"inode {rec.ino} has i_blocks {rec.blocks_512}, should be {blocks * 8}")

    def _symlink(self, rec: InodeRec, ea: int) -> None:
        ino = rec.ino
        if 0 < rec.size <= _FAST_SYMLINK_MAX:  # e2fsck: size < 60 means a fast symlink
            if rec.flags & L.EXT4_EXTENTS_FL or _strnlen(rec.i_block) != rec.size:
                self.bad(f"symlink inode {ino} is invalid (fast, size {rec.size})")
            self._check_iblocks(rec, ea)
            return
        fm = self.r.file_map(rec, self.bad)
        self._claim_map(fm, f"inode {ino}", data_is_meta=True)
        self._check_iblocks(rec, fm.data_blocks + len(fm.meta) + ea)
        exts = fm.extents
        if rec.size >= BLOCK or len(exts) != 1 or exts[0][0] != 0 or exts[0][2] != 1 or not exts[0][3]:
            self.bad(f"symlink inode {ino} is invalid (size {rec.size}, {fm.data_blocks} blocks)")
            return
        if _strnlen(self.r.dev.block(exts[0][1])) != rec.size:
            self.bad(f"symlink inode {ino} is invalid (target length differs from i_size {rec.size})")

    def _xattrs(self, rec: InodeRec) -> int:
        check_ibody(rec.ino, rec.ibody, self.bad)
        blk = rec.file_acl
        if not blk:
            return 0
        if not self.r.in_fs(blk):
            self.bad(f"inode {rec.ino} has its xattr block {blk} outside the filesystem")
            return 0
        n = self.xattr_refs.get(blk)
        if n is None:
            self.claim(blk, 1, f"inode {rec.ino} xattr block", export=True)
            self.xattr_refcount[blk] = check_block(blk, self.r.dev.block(blk), self.bad)
            n = 0
        self.xattr_refs[blk] = n + 1
        return 1

    # -- passes 2-4 (called by the tree walk) -----------------------------------------------------
    def listing(self, rec: InodeRec) -> Listing:
        return read_directory(self.r, rec, self.r.file_map(rec, _ignore), self.bad)

    def in_use(self, ino: int) -> bool:
        return B.test_bit(self.inuse, ino - 1)

    def reference(self, ino: int, rec: InodeRec, path: bytes) -> bool:
        """Count one directory entry naming ``ino``; False for a directory seen before."""
        seen = B.test_bit(self.seen, ino - 1)
        B.set_bit(self.seen, ino - 1)
        if rec.is_dir():
            if seen:
                self.bad(f"directory inode {ino} has more than one name ({path.decode('utf-8', 'replace')})")
                return False
            return True
        if rec.links > 1 or ino in self.multi:
            self.multi.setdefault(ino, []).append(path)
            self.multi_links[ino] = rec.links
        elif seen:
            self.bad(f"inode {ino} has link count 1 but another name: {path.decode('utf-8', 'replace')}")
        return True

    def dir_links(self, rec: InodeRec, subdirs: int) -> None:
        counted = 2 + subdirs
        if counted > L.EXT4_LINK_MAX and self.r.dir_nlink:
            counted = 1
        if rec.links != counted:
            self.bad(f"inode {rec.ino} ref count is {rec.links}, should be {counted}")

    # -- passes 3-5 ------------------------------------------------------------------------------
    def finish(self) -> None:
        r, geo = self.r, self.r.geo
        for ino, paths in sorted(self.multi.items()):
            if len(paths) != self.multi_links[ino]:
                self.bad(f"inode {ino} ref count is {self.multi_links[ino]}, should be {len(paths)}")
        for blk, refs in sorted(self.xattr_refs.items()):
            want = self.xattr_refcount.get(blk)
            if want is not None and want != refs:
                self.bad(f"xattr block {blk} has reference count {want}, should be {refs}")
        total = geo.inodes_count
        for g in range(geo.ngroups):
            base = g * geo.ipg
            used = B.as_int(self.inuse, base, geo.ipg)
            lost = used & ~B.as_int(self.seen, base, geo.ipg)
            for bit in B.iter_bits(lost, base + 1):
                if bit < r.first_ino or bit > total:
                    continue
                kind = "directory inode" if B.test_bit(self.dirs, bit - 1) else "inode"
                self.bad(f"{kind} {bit} is in use but not connected to the directory tree")
        self._pass5()

    def _pass5(self) -> None:
        """Bitmaps against the claims; free counts against the on-disk bitmaps, as ``e2fsck -n``
        counts them (so a wrong bitmap also shows as the count it implies), directories against
        the directories found."""
        r, geo = self.r, self.r.geo
        free_blocks = free_inodes = 0
        full = (1 << (BLOCK * 8)) - 1
        for g, gd in enumerate(r.groups):
            size = geo.group_size(g)
            start = geo.group_start(g)
            counted = B.as_int(self.claims, start, size)
            if r.in_fs(gd.block_bitmap) and not (r.gdt_csum and gd.flags & BG_BLOCK_UNINIT):
                disk = int.from_bytes(r.dev.block(gd.block_bitmap), "little")
                self._bitmap_diff("block", g, start, disk & ((1 << size) - 1), counted)
                if disk | ((1 << size) - 1) != full:
                    self.bad(f"group {g}: padding at the end of the block bitmap is not set")
                counted = disk & ((1 << size) - 1)
            gfree = size - counted.bit_count()
            free_blocks += gfree
            if gd.free_blocks_count != gfree:
                self.bad(f"free blocks count wrong for group {g} ({gd.free_blocks_count}, counted={gfree})")
            base = g * geo.ipg
            used = B.as_int(self.inuse, base, geo.ipg)
            ndirs = B.as_int(self.dirs, base, geo.ipg).bit_count()
            if r.in_fs(gd.inode_bitmap) and not (r.gdt_csum and gd.flags & BG_INODE_UNINIT):
                disk = int.from_bytes(r.dev.block(gd.inode_bitmap), "little")
                self._bitmap_diff("inode", g, base + 1, disk & ((1 << geo.ipg) - 1), used)
                if disk | ((1 << geo.ipg) - 1) != full:
                    self.bad(f"group {g}: padding at the end of the inode bitmap is not set")
                used = disk & ((1 << geo.ipg) - 1)
            gfree_i = geo.ipg - used.bit_count()
            free_inodes += gfree_i
            if gd.free_inodes_count != gfree_i:
                self.bad(f"free inodes count wrong for group {g} ({gd.free_inodes_count}, counted={gfree_i})")
            if gd.used_dirs_count != ndirs:
                self.bad(f"directories count wrong for group {g} ({gd.used_dirs_count}, counted={ndirs})")
        sb = r.sb
        if sb.free_blocks_count != free_blocks:
            self.bad(f"free blocks count wrong ({sb.free_blocks_count}, counted={free_blocks})")
        if sb.s_free_inodes_count != free_inodes:
            self.bad(f"free inodes count wrong ({sb.s_free_inodes_count}, counted={free_inodes})")

    def _bitmap_diff(self, what: str, g: int, base: int, disk: int, counted: int) -> None:
        extra, missing = disk & ~counted, counted & ~disk
        if not (extra or missing):
            return
        parts = []
        if missing:
            first = next(B.iter_bits(missing, base))
            parts.append(f"{missing.bit_count()} in use but marked free (first {first})")
        if extra:
            first = next(B.iter_bits(extra, base))
            parts.append(f"{extra.bit_count()} marked in use but free (first {first})")
        self.bad(f"{what} bitmap differences in group {g}: " + ", ".join(parts))


def _ignore(_text: str) -> None:
    """Mapping problems were reported by pass 1 already."""
