"""An ext4 filesystem over an :class:`OverlayBlockDevice`: superblock, descriptors, bitmaps, inodes.

This module owns the storage-level state (what ``closefs.c``/``inode.c`` do in libext2fs):
loading the lower image's metadata lazily, inode read/write through a bounded block cache,
writing file data as contiguous extents, xattrs, freeing a file's blocks, and ``flush`` which
writes every changed metadata block exactly once. Directory trees live in :mod:`.namespace`.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from overlaybd_provider.ext4 import layout as L
from overlaybd_provider.ext4.alloc import Allocator
from overlaybd_provider.ext4.bitmap import BitmapSet
from overlaybd_provider.ext4.blockdev import OverlayBlockDevice
from overlaybd_provider.ext4.errors import Ext4Error
from overlaybd_provider.ext4.extent import (
    EXT4_EXT_MAGIC,
    EXTENT,
    EXTENT_HEADER,
    IN_INODE_ENTRIES,
    build_extent_tree,
    read_extent_tree,
    split_runs,
    tree_blocks_needed,
)
from overlaybd_provider.ext4.inode import Inode

log = logging.getLogger(__name__)

_META_CACHE_LIMIT = 16384  # inode-table blocks kept in memory (64 MiB) before spilling
_WRITE_CHUNK_BLOCKS = 2048  # 8 MiB of file data per read/write
XATTR_BLOCK_HEADER = struct.Struct("<III")  # h_magic, h_refcount, h_blocks (ext4 xattr block)
EXT4_XATTR_MAGIC = 0xEA020000
_U32 = struct.Struct("<I")
EMPTY_EXTENT_ROOT = build_extent_tree([], [])[0]
_ONE_EXTENT_HEAD = EXTENT_HEADER.pack(EXT4_EXT_MAGIC, 1, IN_INODE_ENTRIES, 0, 0)
_ONE_EXTENT_PAD = bytes(60 - EXTENT_HEADER.size - EXTENT.size)


class UnsupportedFilesystem(Ext4Error):
    """The lower image is not an ext4 this writer can modify."""


class Filesystem:
    """Mutable ext4 on a block device; call :meth:`flush` once at the end."""

    def __init__(self, dev: OverlayBlockDevice, *, sb: L.Superblock | None = None,
                 groups: list[L.GroupDesc] | None = None) -> None:
        self.dev = dev
        self.fresh = sb is not None
        if sb is None:
            sb = L.Superblock.from_bytes(dev.read_block(0)[L.SUPERBLOCK_OFFSET:][:L.SUPERBLOCK_SIZE])
            self._check_supported(sb)
        self.sb = sb
        self.geo = geo = L.Geometry(sb)
        if groups is None:
            groups = self._read_groups()
        self.groups = groups
        self._gdt_orig = [] if self.fresh else self._gdt_bytes()
        self.bbm = BitmapSet(dev.read_block, lambda g: self.groups[g].block_bitmap, geo.group_size)
        self.ibm = BitmapSet(dev.read_block, lambda g: self.groups[g].inode_bitmap, lambda g: geo.ipg)
        self.alloc = Allocator(sb, geo, groups, self.bbm, self.ibm)
        self._meta: dict[int, bytearray] = {}
        self._meta_dirty: set[int] = set()
        seed = sb.s_hash_seed
        self.hash_seed = struct.unpack("<4I", seed)
        self.hash_version = sb.s_def_hash_version
        self.signed_hash = not (sb.s_flags & L.EXT2_FLAGS_UNSIGNED_HASH)

    @staticmethod
    def _check_supported(sb: L.Superblock) -> None:
        if sb.s_magic != L.EXT4_SUPER_MAGIC:
            raise UnsupportedFilesystem(f"lower image has no ext4 superblock (magic {sb.s_magic:#x})")
        if sb.s_log_block_size != 2 or sb.s_inode_size != L.INODE_SIZE:
            raise UnsupportedFilesystem(
                f"lower ext4 has block size {1024 << sb.s_log_block_size} / inode size "
                f"{sb.s_inode_size}; only 4096 / 256 are supported")
        bad = sb.s_feature_incompat & ~L.SUPPORTED_INCOMPAT  # e.g. 0x4 recover: journal needs replay
        bad_ro = sb.s_feature_ro_compat & ~(L.SUPPORTED_RO_COMPAT | 0x10)  # 0x10 = gdt_csum
        if bad or bad_ro:
            raise UnsupportedFilesystem(
                f"lower ext4 uses unsupported features (incompat {bad:#x}, ro_compat {bad_ro:#x})")
        if sb.s_feature_ro_compat & 0x10:
            raise UnsupportedFilesystem("lower ext4 uses uninit_bg/gdt_csum (legacy base layer); "
                                        "not supported by this writer")

    # -- group descriptors ---------------------------------------------------------------
    def _read_groups(self) -> list[L.GroupDesc]:
        geo, out = self.geo, []
        for i in range(geo.desc_blocks):
            raw = self.dev.read_block(1 + i)
            for j in range(min(geo.desc_per_block, geo.ngroups - i * geo.desc_per_block)):
                out.append(L.GroupDesc.from_bytes(raw, j * geo.desc_size))
        return out

    def _gdt_bytes(self) -> list[bytes]:
        geo, blocks = self.geo, []
        for i in range(geo.desc_blocks):
            part = b"".join(gd.to_bytes() for gd in
                            self.groups[i * geo.desc_per_block:(i + 1) * geo.desc_per_block])
            blocks.append(part + bytes(L.BLOCK_SIZE - len(part)))
        return blocks

    # -- metadata block cache (inode tables) ------------------------------------------------
    def meta_block(self, n: int) -> bytearray:
        blk = self._meta.get(n)
        if blk is None:
            if len(self._meta) >= _META_CACHE_LIMIT:
                self._spill_meta()
            blk = bytearray(self.dev.read_block(n))
            self._meta[n] = blk
        return blk

    def _spill_meta(self) -> None:
        for n in sorted(self._meta_dirty):
            self.dev.write_block(n, bytes(self._meta[n]))
        self._meta_dirty.clear()
        self._meta.clear()

    # -- inodes ------------------------------------------------------------------------------
    def inode_loc(self, ino: int) -> tuple[int, int]:
        if not 1 <= ino <= self.geo.inodes_count:
            raise Ext4Error(f"inode number {ino} out of range")
        g, idx = divmod(ino - 1, self.geo.ipg)
        blk = self.groups[g].inode_table + idx // self.geo.inodes_per_block
        return blk, (idx % self.geo.inodes_per_block) * self.geo.inode_size

    def get_inode(self, ino: int) -> Inode:
        blk, off = self.inode_loc(ino)
        return Inode.from_bytes(self.meta_block(blk), off)

    def put_inode(self, ino: int, inode: Inode) -> None:
        blk, off = self.inode_loc(ino)
        self.meta_block(blk)[off:off + L.INODE_SIZE] = inode.to_bytes()
        self._meta_dirty.add(blk)

    def clear_inode(self, ino: int) -> None:
        blk, off = self.inode_loc(ino)
        self.meta_block(blk)[off:off + L.INODE_SIZE] = bytes(L.INODE_SIZE)
        self._meta_dirty.add(blk)

    def new_inode(self, mode: int) -> tuple[int, Inode]:
        is_dir = (mode & L.S_IFMT) == L.S_IFDIR
        ino = self.alloc.alloc_inode(is_dir)
        inode = Inode()
        inode.i_mode = mode
        inode.i_links_count = 2 if is_dir else 1
        if (mode & L.S_IFMT) in (L.S_IFREG, L.S_IFDIR):
            inode.i_block = EMPTY_EXTENT_ROOT
            inode.i_flags = L.EXT4_EXTENTS_FL
        return ino, inode

    # -- block mapping ---------------------------------------------------------------------
    def file_blocks(self, inode: Inode, ino: int = 0) -> tuple[list[tuple[int, int, int]], list[int]]:
        """(extents, mapping blocks) of an inode with blocks (extent tree or legacy block map)."""
        if inode.i_flags & L.EXT4_EXTENTS_FL:
            return read_extent_tree(inode.i_block, self.dev.read_block, ino)
        return self._read_block_map(inode)

    def _read_block_map(self, inode: Inode) -> tuple[list[tuple[int, int, int]], list[int]]:
        ptrs = struct.unpack("<15I", inode.i_block)
        extents: list[tuple[int, int, int]] = []
        meta: list[int] = []
        lblk = 0

        def add(p: int) -> None:
            nonlocal lblk
            if p:
                if extents and extents[-1][1] + extents[-1][2] == p and extents[-1][0] + extents[-1][2] == lblk:
                    e = extents[-1]
                    extents[-1] = (e[0], e[1], e[2] + 1)
                else:
                    extents.append((lblk, p, 1))
            lblk += 1

        def walk(p: int, level: int) -> None:
            nonlocal lblk
            if not p:
                lblk += L.ADDR_PER_BLOCK ** level
                return
            if level == 0:
                add(p)
                return
            meta.append(p)
            for q in struct.unpack(f"<{L.ADDR_PER_BLOCK}I", self.dev.read_block(p)):
                walk(q, level - 1)

        for p in ptrs[:12]:
            add(p)
        for level, p in ((1, ptrs[12]), (2, ptrs[13]), (3, ptrs[14])):
            walk(p, level)
        return extents, meta

    def set_extents(self, inode: Inode, extents: list[tuple[int, int, int]],
                    old_tree: list[int] | None = None) -> None:
        """Store ``extents`` in the inode, reusing ``old_tree`` blocks before allocating."""
        if len(extents) == 1 and not old_tree:  # the usual small file: the same bytes, built directly
            lb, pb, ln = extents[0]
            inode.i_block = _ONE_EXTENT_HEAD + EXTENT.pack(lb, ln, pb >> 32, pb & 0xFFFFFFFF) + _ONE_EXTENT_PAD
            inode.i_flags |= L.EXT4_EXTENTS_FL
            inode.blocks_512 = (ln + (1 if inode.file_acl else 0)) * 8
            return
        need = tree_blocks_needed(len(extents))
        old = list(old_tree or [])
        tree = old[:need]
        for b in old[need:]:
            self.alloc.free_blocks(b, 1)
        if need > len(tree):
            for start, count in self.alloc.alloc_blocks(need - len(tree)):
                tree.extend(range(start, start + count))
        i_block, written = build_extent_tree(extents, tree)
        for blk, data in written:
            self.dev.write_block(blk, data)
        inode.i_block = i_block
        inode.i_flags |= L.EXT4_EXTENTS_FL
        data_blocks = sum(e[2] for e in extents)
        inode.blocks_512 = (data_blocks + need + (1 if inode.file_acl else 0)) * 8

    def write_data(self, inode: Inode, read: Callable[[int], bytes], size: int, name: str = "",
                   readinto: Callable[[memoryview], int] | None = None) -> None:
        """Stream ``size`` bytes from ``read`` into newly allocated contiguous blocks.

        With ``readinto`` (a file object's), the bytes are read straight into the device's
        compressor ring instead of into a fresh buffer that is then copied there."""
        nblocks = -(-size // L.BLOCK_SIZE)
        runs = self.alloc.alloc_blocks(nblocks)
        remaining = size

        def short(got: int) -> Ext4Error:
            return Ext4Error(f"{name}: input ended after {size - remaining + got} of {size} bytes")

        def fill(view: memoryview) -> None:
            nonlocal remaining
            got = 0
            while got < len(view):
                with view[got:] as rest:  # released even if readinto raises (see tarstream.readinto)
                    n = readinto(rest)  # type: ignore[misc]
                if not n:
                    raise short(got)
                got += n
            remaining -= got

        for start, count in runs:
            done = 0
            while done < count:
                take = min(count - done, _WRITE_CHUNK_BLOCKS)
                want = min(take * L.BLOCK_SIZE, remaining)
                if readinto is not None:
                    self.dev.write_blocks_from(start + done, want, fill)
                    done += take
                    continue
                data = read(want)
                if len(data) != want:
                    raise short(len(data))
                remaining -= want
                if want < take * L.BLOCK_SIZE:
                    data = data + bytes(take * L.BLOCK_SIZE - want)
                self.dev.write_blocks(start + done, data)
                done += take
        inode.size = size
        self.set_extents(inode, split_runs(runs))

    def write_buffered(self, inode: Inode, data: memoryview) -> None:
        """:meth:`write_data` for file data already in memory (a small file in the tar buffer)."""
        size = len(data)
        runs = self.alloc.alloc_blocks(-(-size // L.BLOCK_SIZE))
        if len(runs) == 1:
            self.dev.write_padded(runs[0][0], data)
        else:
            pos = 0
            for start, count in runs:
                self.dev.write_padded(start, data[pos:pos + count * L.BLOCK_SIZE])
                pos += count * L.BLOCK_SIZE
        inode.size = size
        self.set_extents(inode, split_runs(runs))

    def map_target_data(self, inode: Inode, target_offset: int, size: int) -> None:
        """TurboOCI: give the file ``size`` bytes of fresh contiguous blocks that map to the
        source layer at ``target_offset`` (its data offset in the uncompressed tar) instead
        of storing them; the tar reader skips the data."""
        runs = self.alloc.alloc_blocks(-(-size // L.BLOCK_SIZE))
        pos = 0
        for start, count in runs:
            self.dev.map_target(start, count, target_offset + pos, min(count * L.BLOCK_SIZE, size - pos))
            pos += count * L.BLOCK_SIZE
        inode.size = size
        self.set_extents(inode, split_runs(runs))

    def write_small_block(self, inode: Inode, data: bytes) -> None:
        """One-block content (slow symlink)."""
        blk = self.alloc.alloc_block()
        self.dev.write_block(blk, data + bytes(L.BLOCK_SIZE - len(data)))
        inode.size = len(data)
        self.set_extents(inode, [(0, blk, 1)])

    # -- releasing a file ---------------------------------------------------------------------
    def release_inode(self, ino: int, inode: Inode) -> None:
        """Free everything an unlinked inode owns (data, mapping blocks, xattr block) and itself."""
        ft = inode.file_type
        data_512 = inode.blocks_512 - (8 if inode.file_acl else 0)
        has_blocks = ft in (L.S_IFREG, L.S_IFDIR) or (
            ft == L.S_IFLNK and (inode.i_flags & L.EXT4_EXTENTS_FL or data_512 > 0))
        if has_blocks:
            extents, meta = self.file_blocks(inode, ino)
            for _lblk, pblk, length in extents:
                self.alloc.free_blocks(pblk, length)
            for b in meta:
                self.alloc.free_blocks(b, 1)
        self.drop_xattr_block(inode)
        self.clear_inode(ino)
        self.alloc.free_inode(ino, ft == L.S_IFDIR)

    def drop_xattr_block(self, inode: Inode) -> None:
        blk = inode.file_acl
        if not blk:
            return
        data = bytearray(self.dev.read_block(blk))
        magic, refcount, _nblocks = XATTR_BLOCK_HEADER.unpack_from(data, 0)
        if magic == EXT4_XATTR_MAGIC and refcount > 1:
            _U32.pack_into(data, 4, refcount - 1)
            self.dev.write_block(blk, bytes(data))
        else:
            self.alloc.free_blocks(blk, 1)
        inode.file_acl = 0
        inode.blocks_512 = max(0, inode.blocks_512 - 8)

    def read_xattrs(self, inode: Inode) -> dict[str, bytes]:
        from overlaybd_provider.ext4.xattr import parse_xattrs

        block = self.dev.read_block(inode.file_acl) if inode.file_acl else None
        return parse_xattrs(inode.ibody, block)

    def set_xattrs(self, inode: Inode, attrs: dict[str, bytes], name: str = "") -> None:
        """Replace all xattrs of an inode: in-inode space first, then one external block."""
        had_block = bool(inode.file_acl)
        if had_block:
            self.drop_xattr_block(inode)
        if not attrs:
            inode.ibody = bytes(L.INODE_IBODY_SIZE)
            return
        from overlaybd_provider.ext4.xattr import pack_xattrs

        layout = pack_xattrs(attrs, ibody_size=L.INODE_IBODY_SIZE)
        inode.ibody = layout.ibody + bytes(L.INODE_IBODY_SIZE - len(layout.ibody))
        if layout.block is not None:
            blk = self.alloc.alloc_block()
            self.dev.write_block(blk, layout.block)
            inode.file_acl = blk
            inode.blocks_512 = inode.blocks_512 + 8

    # -- flush -----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Commit deferred frees and write bitmaps, inode tables, descriptors and superblock."""
        self.alloc.commit_frees()
        self._spill_meta()
        for bm in (self.bbm, self.ibm):
            for g in sorted(bm.dirty):
                self.dev.write_block(bm.block_of(g), bm.to_block(g))
            bm.dirty.clear()
        new = self._gdt_bytes()
        backups = self.geo.backup_groups() if self.fresh else []
        for i, blk in enumerate(new):
            if self.fresh or blk != self._gdt_orig[i]:
                self.dev.write_block(1 + i, blk)
            for g in backups:
                self.dev.write_block(self.geo.group_start(g) + 1 + i, blk)
        self._gdt_orig = new
        block0 = bytearray(self.dev.read_block(0))
        block0[L.SUPERBLOCK_OFFSET:L.SUPERBLOCK_OFFSET + L.SUPERBLOCK_SIZE] = self.sb.to_bytes()
        if bytes(block0) != self.dev.read_block(0) or self.fresh:
            self.dev.write_block(0, bytes(block0))
        for g in backups:
            saved = self.sb.s_block_group_nr
            self.sb.s_block_group_nr = g
            self.dev.write_block(self.geo.group_start(g),
                                 self.sb.to_bytes() + bytes(L.BLOCK_SIZE - L.SUPERBLOCK_SIZE))
            self.sb.s_block_group_nr = saved
        self.fresh = False
