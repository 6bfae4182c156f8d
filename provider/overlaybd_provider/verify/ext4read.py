"""A read-only ext4 reader over a :class:`~.device.BlockDevice`, for checking images.

Unlike the writer's lazy lower-layer loader (``ext4.fs``), this reader trusts nothing: every
structure it decodes is range-checked, and what does not hold is reported through a
``bad(text)`` callback instead of raising, so one broken inode does not hide the rest of the
image. It reads superblock and group descriptors, inodes (any ``i_extra_isize``), extent trees
of any depth (index levels, uninitialised extents, holes), legacy block maps, directory blocks,
in-inode and block xattrs, fast and slow symlinks and device numbers. The on-disk records come
from ``ext4.layout``; names follow the kernel's ``ext4.h``.

Not supported (:class:`UnsupportedImageError`): block sizes other than 4 KiB, ``meta_bg``,
``inline_data`` (our profile and upstream's have none), ``metadata_csum``, ``large_dir``,
``encrypt``/``casefold``, ``ea_inode``, bigalloc, and a journal that needs recovery.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from overlaybd_provider.ext4 import layout as L
from overlaybd_provider.ext4.extent import EXT4_EXT_MAGIC, EXTENT, EXTENT_HEADER, EXTENT_IDX
from overlaybd_provider.verify.device import BLOCK, BlockDevice
from overlaybd_provider.verify.errors import CorruptImageError, UnsupportedImageError

Bad = Callable[[str], None]

INCOMPAT_RECOVER = 0x0004
INCOMPAT_MMP = 0x0100
READ_INCOMPAT = L.INCOMPAT_FILETYPE | L.INCOMPAT_EXTENTS | L.INCOMPAT_64BIT | L.INCOMPAT_FLEX_BG | INCOMPAT_MMP
RO_COMPAT_BTREE_DIR = 0x0004
RO_COMPAT_GDT_CSUM = 0x0010
READ_RO_COMPAT = L.PROFILE_RO_COMPAT | RO_COMPAT_GDT_CSUM | RO_COMPAT_BTREE_DIR
COMPAT_HAS_JOURNAL = 0x0004
_INCOMPAT_NAMES = {0x4: "needs_recovery", 0x8: "journal_dev", 0x10: "meta_bg", 0x400: "ea_inode",
                   0x1000: "dirdata", 0x2000: "metadata_csum_seed", 0x4000: "large_dir",
                   0x8000: "inline_data", 0x10000: "encrypt", 0x20000: "casefold"}
_RO_NAMES = {0x100: "quota", 0x200: "bigalloc", 0x400: "metadata_csum", 0x1000: "readonly",
             0x2000: "project", 0x8000: "verity"}

BG_INODE_UNINIT = 0x0001
BG_BLOCK_UNINIT = 0x0002
JOURNAL_INO = 8
EXT4_EXTENT_MAX_DEPTH = 5
EXT_INIT_MAX_LEN = 32768
INDEX_ENTRIES = (BLOCK - EXTENT_HEADER.size) // EXTENT.size  # 340
_DATA_CHUNK_BLOCKS = 2048  # 8 MiB per read
_U32S = struct.Struct("<15I")
_MAX_MAP_ERRORS = 16


class _Abort(Exception):
    """Too many bad pointers: the mapping is garbage."""

FT_NAMES = {L.S_IFREG: "file", L.S_IFDIR: "dir", L.S_IFLNK: "symlink", L.S_IFCHR: "chr",
            L.S_IFBLK: "blk", L.S_IFIFO: "fifo", L.S_IFSOCK: "sock"}


def _names(bits: int, table: dict[int, str]) -> str:
    return ", ".join(table.get(1 << i, f"{1 << i:#x}") for i in range(32) if bits >> i & 1)


@dataclass(slots=True)
class InodeRec:
    """The fields of one inode that checks and comparisons use."""

    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    links: int
    flags: int
    dtime: int
    blocks_512: int
    file_acl: int
    i_block: bytes
    mtime: int
    mtime_ns: int
    extra_isize: int
    ibody: bytes

    @property
    def ftype(self) -> int:
        return self.mode & L.S_IFMT

    @property
    def kind(self) -> str:
        return FT_NAMES.get(self.ftype, f"mode {self.mode:o}")

    def is_dir(self) -> bool:
        return self.ftype == L.S_IFDIR


@dataclass(slots=True)
class FileMap:
    """Where an inode's data lives: ``extents`` (logical, physical, count, initialised) in logical
    order and the mapping's own blocks (extent tree / indirect blocks)."""

    extents: list[tuple[int, int, int, bool]]
    meta: list[int]

    @property
    def data_blocks(self) -> int:
        return sum(e[2] for e in self.extents)

    def block_list(self) -> list[int]:
        """Physical blocks in logical order (directories: small)."""
        return [p + i for _lb, p, n, _init in self.extents for i in range(n)]


def decode_time(lo: int, extra: int) -> tuple[int, int]:
    signed_lo = lo - (1 << 32) if lo & 0x80000000 else lo
    return signed_lo + ((extra & 3) << 32), extra >> 2


def decode_dev(i_block: bytes) -> tuple[int, int]:
    """(major, minor) of a device inode: old encoding in word 0, new (huge) encoding in word 1."""
    w0, w1 = struct.unpack_from("<II", i_block)
    if w0:
        return (w0 >> 8) & 0xFF, w0 & 0xFF
    return (w1 & 0xFFF00) >> 8, (w1 & 0xFF) | ((w1 >> 12) & 0xFFF00)


class Ext4Reader:
    """The filesystem on ``dev``: superblock, geometry, group descriptors, inode access."""

    def __init__(self, dev: BlockDevice) -> None:
        self.dev = dev
        if dev.blocks_count < 2:
            raise CorruptImageError(f"the image is {dev.size} bytes: too small for ext4")
        sb = L.Superblock.from_bytes(dev.block(0)[L.SUPERBLOCK_OFFSET:L.SUPERBLOCK_OFFSET + L.SUPERBLOCK_SIZE])
        if sb.s_magic != L.EXT4_SUPER_MAGIC:
            raise CorruptImageError(f"the image has no ext4 superblock (magic {sb.s_magic:#06x})")
        if sb.s_log_block_size != 2 or sb.s_first_data_block != 0:
            raise UnsupportedImageError(f"ext4 block size {1024 << min(sb.s_log_block_size, 20)}: only 4096 is supported")
        bad = sb.s_feature_incompat & ~READ_INCOMPAT
        bad_ro = sb.s_feature_ro_compat & ~READ_RO_COMPAT
        if bad or bad_ro:
            names = ", ".join(x for x in (_names(bad, _INCOMPAT_NAMES), _names(bad_ro, _RO_NAMES)) if x)
            raise UnsupportedImageError(f"the image's ext4 uses features this reader does not support: {names}")
        if sb.s_inode_size < L.GOOD_OLD_INODE_SIZE or sb.s_inode_size > BLOCK or sb.s_inode_size & (sb.s_inode_size - 1):
            raise UnsupportedImageError(f"ext4 inode size {sb.s_inode_size} is not supported")
        if not sb.s_blocks_per_group or not sb.s_inodes_per_group or sb.s_blocks_per_group > BLOCK * 8 \
                or sb.s_inodes_per_group > BLOCK * 8:
            raise CorruptImageError(
                f"ext4 superblock has {sb.s_blocks_per_group} blocks / {sb.s_inodes_per_group} inodes per group")
        if sb.s_feature_incompat & L.INCOMPAT_64BIT and not (
                32 <= sb.s_desc_size <= BLOCK and sb.s_desc_size & (sb.s_desc_size - 1) == 0):
            raise CorruptImageError(f"ext4 superblock has a group descriptor size of {sb.s_desc_size}")
        self.sb = sb
        self.geo = geo = L.Geometry(sb)
        if geo.blocks_count > dev.blocks_count:
            raise CorruptImageError(
                f"ext4 has {geo.blocks_count} blocks but the device holds only {dev.blocks_count}")
        if sb.s_inodes_count != geo.ipg * geo.ngroups:
            raise CorruptImageError(
                f"superblock inode count {sb.s_inodes_count} != {geo.ngroups} groups x {geo.ipg} inodes")
        self.gdt_csum = bool(sb.s_feature_ro_compat & RO_COMPAT_GDT_CSUM)
        self.has_journal = bool(sb.s_feature_compat & COMPAT_HAS_JOURNAL)
        self.dir_nlink = bool(sb.s_feature_ro_compat & L.RO_COMPAT_DIR_NLINK)
        self.hash_seed = struct.unpack("<4I", sb.s_hash_seed)
        self.signed_hash = not (sb.s_flags & L.EXT2_FLAGS_UNSIGNED_HASH)
        self.first_ino = sb.s_first_ino if sb.s_rev_level else L.FIRST_INO
        if not L.ROOT_INO < self.first_ino <= geo.inodes_count:
            raise CorruptImageError(f"ext4 superblock has first inode {self.first_ino}")
        self.groups = self._read_groups()

    def _read_groups(self) -> list[L.GroupDesc]:
        geo, out = self.geo, []
        size = geo.desc_size
        for i in range(geo.desc_blocks):
            raw = self.dev.block(1 + i)
            for j in range(min(geo.desc_per_block, geo.ngroups - i * geo.desc_per_block)):
                rec = raw[j * size:(j + 1) * size]
                out.append(L.GroupDesc.from_bytes(rec + bytes(L.GROUP_DESC_SIZE - len(rec))))
        return out

    # -- inodes ------------------------------------------------------------------------------
    def inode_location(self, ino: int) -> tuple[int, int]:
        g, idx = divmod(ino - 1, self.geo.ipg)
        ipb = self.geo.inodes_per_block
        return self.groups[g].inode_table + idx // ipb, (idx % ipb) * self.geo.inode_size

    def inode_raw(self, ino: int) -> bytes:
        blk, off = self.inode_location(ino)
        if not 0 < blk < self.geo.blocks_count:
            return bytes(self.geo.inode_size)
        return self.dev.block(blk)[off:off + self.geo.inode_size]

    def inode(self, ino: int) -> InodeRec:
        if not 1 <= ino <= self.geo.inodes_count:
            raise ValueError(f"inode number {ino} out of range")
        return self.parse_inode(ino, self.inode_raw(ino))

    def parse_inode(self, ino: int, raw: bytes) -> InodeRec:
        isize = len(raw)
        head = raw[:L.INODE_STRUCT.size]
        if len(head) < L.INODE_STRUCT.size:
            head += bytes(L.INODE_STRUCT.size - len(head))
        v = L.INODE_STRUCT.unpack(head)
        (mode, uid, size_lo, _atime, _ctime, mtime, dtime, gid, links, blocks_lo, flags, _ver, i_block,
         _gen, acl_lo, size_hi, _faddr, blocks_hi, acl_hi, uid_hi, gid_hi, _csum, _res, extra, _csum_hi,
         _ctime_x, mtime_x, *_rest) = v
        if isize <= L.GOOD_OLD_INODE_SIZE or L.GOOD_OLD_INODE_SIZE + extra > isize or extra % 4:
            extra = 0
        sec, nsec = decode_time(mtime, mtime_x if extra >= 12 else 0)
        blocks = blocks_lo | (blocks_hi << 32)
        if flags & L.EXT4_HUGE_FILE_FL:
            blocks *= 8
        return InodeRec(
            ino, mode, uid | (uid_hi << 16), gid | (gid_hi << 16), size_lo | (size_hi << 32), links, flags,
            dtime, blocks, acl_lo | (acl_hi << 32), i_block, sec, nsec, extra,
            raw[L.GOOD_OLD_INODE_SIZE + extra:] if extra else b"",
        )

    # -- block mapping -----------------------------------------------------------------------
    def in_fs(self, pblk: int, count: int = 1) -> bool:
        return pblk > 0 and count > 0 and pblk + count <= self.geo.blocks_count

    def file_map(self, rec: InodeRec, bad: Bad) -> FileMap:
        """Extents (or block map) of an inode, validated; bad parts are reported and dropped."""
        if rec.flags & L.EXT4_EXTENTS_FL:
            return self._extent_map(rec, bad)
        return self._block_map(rec, bad)

    def _extent_map(self, rec: InodeRec, bad: Bad) -> FileMap:
        fm = FileMap([], [])
        ino = rec.ino
        next_lblk = 0

        def node(data: bytes, where: str, max_expected: int, depth_expected: int | None,
                 first_expected: int | None) -> None:
            nonlocal next_lblk
            magic, entries, emax, depth, _gen = EXTENT_HEADER.unpack_from(data, 0)
            if magic != EXT4_EXT_MAGIC:
                bad(f"inode {ino}: extent {where} has bad magic {magic:#06x}")
                return
            if emax > max_expected or emax < max_expected - 2 or entries > emax:
                bad(f"inode {ino}: extent {where} header has {entries} entries / max {emax} (expected max {max_expected})")
                return
            if depth > EXT4_EXTENT_MAX_DEPTH or (depth_expected is not None and depth != depth_expected):
                bad(f"inode {ino}: extent {where} has depth {depth}" +
                    (f", expected {depth_expected}" if depth_expected is not None else ""))
                return
            prev_start = -1
            for i in range(entries):
                off = EXTENT_HEADER.size + i * EXTENT.size
                if depth == 0:
                    lblk, length, hi, lo = EXTENT.unpack_from(data, off)
                    init = length <= EXT_INIT_MAX_LEN
                    if not init:
                        length -= EXT_INIT_MAX_LEN
                    pblk = lo | (hi << 32)
                    if i == 0 and first_expected is not None and lblk != first_expected:
                        bad(f"inode {ino}: extent {where} starts at logical block {lblk}, its index says {first_expected}")
                    if length == 0 or lblk < next_lblk:
                        bad(f"inode {ino}: extent {where} entry {i} (logical {lblk}, {length} blocks) "
                            f"is empty, out of order or overlaps")
                        continue
                    if not self.in_fs(pblk, length):
                        bad(f"inode {ino}: extent {where} entry {i} maps blocks {pblk}+{length} outside the filesystem")
                        continue
                    fm.extents.append((lblk, pblk, length, init))
                    next_lblk = lblk + length
                else:
                    lblk, lo, hi, _unused = EXTENT_IDX.unpack_from(data, off)
                    child = lo | (hi << 32)
                    if i == 0 and first_expected is not None and lblk != first_expected:
                        bad(f"inode {ino}: extent {where} starts at logical block {lblk}, its index says {first_expected}")
                    if lblk <= prev_start and i:
                        bad(f"inode {ino}: extent index {where} entry {i} is out of order")
                        continue
                    prev_start = lblk
                    if not self.in_fs(child):
                        bad(f"inode {ino}: extent index {where} entry {i} points at block {child} outside the filesystem")
                        continue
                    fm.meta.append(child)
                    node(self.dev.block(child), f"block {child}", INDEX_ENTRIES, depth - 1, lblk)

        node(rec.i_block, "root", 4, None, None)
        return fm

    def _block_map(self, rec: InodeRec, bad: Bad) -> FileMap:
        fm = FileMap([], [])
        ptrs = _U32S.unpack(rec.i_block)
        ino = rec.ino
        apb = BLOCK // 4
        lblk = 0
        errors = 0

        def wrong(text: str) -> None:
            nonlocal errors
            errors += 1
            bad(text)
            if errors >= _MAX_MAP_ERRORS:
                raise _Abort

        def add(p: int) -> None:
            if not self.in_fs(p):
                wrong(f"inode {ino}: block map points at block {p} outside the filesystem")
                return
            ext = fm.extents
            if ext and ext[-1][0] + ext[-1][2] == lblk and ext[-1][1] + ext[-1][2] == p:
                e = ext[-1]
                ext[-1] = (e[0], e[1], e[2] + 1, True)
            else:
                ext.append((lblk, p, 1, True))

        def walk(p: int, level: int) -> None:
            nonlocal lblk
            span = apb ** level
            if not p:
                lblk += span
                return
            if level == 0:
                add(p)
                lblk += 1
                return
            if not self.in_fs(p):
                wrong(f"inode {ino}: indirect block {p} outside the filesystem")
                lblk += span
                return
            fm.meta.append(p)
            for q in struct.unpack(f"<{apb}I", self.dev.block(p)):
                walk(q, level - 1)

        try:
            for p in ptrs[:12]:
                walk(p, 0)
            for level, p in ((1, ptrs[12]), (2, ptrs[13]), (3, ptrs[14])):
                walk(p, level)
        except _Abort:
            bad(f"inode {ino}: block map is corrupt (gave up after {errors} bad pointers)")
            return FileMap([], [])
        return fm

    # -- content -----------------------------------------------------------------------------
    def read_data(self, fm: FileMap, size: int) -> Iterator[bytes]:
        """The first ``size`` bytes of a file: holes and uninitialised extents read as zeros."""
        pos = 0  # logical block
        left = size
        for lblk, pblk, count, init in fm.extents:
            if left <= 0:
                return
            if lblk > pos:
                n = min(left, (lblk - pos) * BLOCK)
                yield from _zeros(n)
                left -= n
                pos = lblk
            done = 0
            while done < count and left > 0:
                take = min(count - done, _DATA_CHUNK_BLOCKS, -(-left // BLOCK))
                if init:
                    data = self.dev.read_blocks(pblk + done, take)
                    if len(data) > left:
                        data = data[:left]
                    yield data
                    left -= len(data)
                else:
                    n = min(left, take * BLOCK)
                    yield from _zeros(n)
                    left -= n
                done += take
            pos = lblk + count
        if left > 0:
            yield from _zeros(left)

    def symlink_target(self, rec: InodeRec, fm: FileMap | None) -> bytes:
        """Fast symlinks live in ``i_block``; slow ones in their first data block."""
        if fm is None:
            return rec.i_block[:rec.size]
        return b"".join(self.read_data(fm, min(rec.size, BLOCK)))

    def is_fast_symlink(self, rec: InodeRec) -> bool:
        """Kernel ``ext4_inode_is_fast_symlink``: no blocks besides an xattr block."""
        return rec.blocks_512 - (8 if rec.file_acl else 0) == 0


_ZERO_CHUNK = bytes(1 << 20)


def _zeros(n: int) -> Iterator[bytes]:
    while n > 0:
        k = min(n, len(_ZERO_CHUNK))
        yield _ZERO_CHUNK if k == len(_ZERO_CHUNK) else _ZERO_CHUNK[:k]
        n -= k
