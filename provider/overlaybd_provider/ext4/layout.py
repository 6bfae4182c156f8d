"""On-disk ext4 records used by the writer: superblock, 64-byte group descriptor, 256-byte inode.

Field names follow ``struct ext4_super_block`` / ``ext4_group_desc`` / ``ext4_inode`` of the kernel's
``fs/ext4/ext4.h`` (and e2fsprogs ``lib/ext2fs/ext2_fs.h``) verbatim, so the code greps against them.
Only the fields the writer needs are named; the rest of each record is kept as raw bytes so a
record read from an upstream image round-trips unchanged. Profile values: ext4-profile.md §1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields

BLOCK_SIZE = 4096
SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_SIZE = 1024
EXT4_SUPER_MAGIC = 0xEF53
GROUP_DESC_SIZE = 64
INODE_SIZE = 256
GOOD_OLD_INODE_SIZE = 128
EXTRA_ISIZE = 32
BLOCKS_PER_GROUP = 32768
ADDR_PER_BLOCK = BLOCK_SIZE // 4

ROOT_INO = 2
RESIZE_INO = 7
FIRST_INO = 11
LOST_FOUND_INO = 11
EXT2_DIND_BLOCK = 13

# s_feature_compat / incompat / ro_compat bits (ext2_fs.h)
COMPAT_EXT_ATTR = 0x0008
COMPAT_RESIZE_INODE = 0x0010
COMPAT_DIR_INDEX = 0x0020
COMPAT_SPARSE_SUPER2 = 0x0200
INCOMPAT_FILETYPE = 0x0002
INCOMPAT_EXTENTS = 0x0040
INCOMPAT_64BIT = 0x0080
INCOMPAT_FLEX_BG = 0x0200
RO_COMPAT_SPARSE_SUPER = 0x0001
RO_COMPAT_LARGE_FILE = 0x0002
RO_COMPAT_HUGE_FILE = 0x0008
RO_COMPAT_DIR_NLINK = 0x0020
RO_COMPAT_EXTRA_ISIZE = 0x0040

PROFILE_COMPAT = COMPAT_EXT_ATTR | COMPAT_RESIZE_INODE | COMPAT_DIR_INDEX | COMPAT_SPARSE_SUPER2
PROFILE_INCOMPAT = INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG
PROFILE_RO_COMPAT = (
    RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_HUGE_FILE | RO_COMPAT_DIR_NLINK
    | RO_COMPAT_EXTRA_ISIZE
)
# Features this writer can modify safely; anything else in a lower image is refused.
SUPPORTED_INCOMPAT = PROFILE_INCOMPAT
SUPPORTED_RO_COMPAT = PROFILE_RO_COMPAT

EXT2_FLAGS_SIGNED_HASH = 0x0001
EXT2_FLAGS_UNSIGNED_HASH = 0x0002

# i_flags
EXT4_INDEX_FL = 0x00001000
EXT4_HUGE_FILE_FL = 0x00040000
EXT4_EXTENTS_FL = 0x00080000

# i_mode file types
S_IFMT = 0o170000
S_IFSOCK = 0o140000
S_IFLNK = 0o120000
S_IFREG = 0o100000
S_IFBLK = 0o060000
S_IFDIR = 0o040000
S_IFCHR = 0o020000
S_IFIFO = 0o010000

# directory entry file types (filetype feature)
FT_UNKNOWN, FT_REG_FILE, FT_DIR, FT_CHRDEV, FT_BLKDEV, FT_FIFO, FT_SOCK, FT_SYMLINK = range(8)
MODE_TO_FT = {
    S_IFREG: FT_REG_FILE, S_IFDIR: FT_DIR, S_IFCHR: FT_CHRDEV, S_IFBLK: FT_BLKDEV,
    S_IFIFO: FT_FIFO, S_IFSOCK: FT_SOCK, S_IFLNK: FT_SYMLINK,
}

EXT4_LINK_MAX = 65000


def _record(cls_fields: list[tuple[str, str]]) -> tuple[struct.Struct, tuple[str, ...]]:
    return struct.Struct("<" + "".join(f for _, f in cls_fields)), tuple(n for n, _ in cls_fields)


# ext4_super_block (kernel ext4.h), bytes 0..0x27F; the tail stays raw.
_SB_FIELDS = [
    ("s_inodes_count", "I"), ("s_blocks_count_lo", "I"), ("s_r_blocks_count_lo", "I"),
    ("s_free_blocks_count_lo", "I"), ("s_free_inodes_count", "I"), ("s_first_data_block", "I"),
    ("s_log_block_size", "I"), ("s_log_cluster_size", "I"), ("s_blocks_per_group", "I"),
    ("s_clusters_per_group", "I"), ("s_inodes_per_group", "I"), ("s_mtime", "I"), ("s_wtime", "I"),
    ("s_mnt_count", "H"), ("s_max_mnt_count", "h"), ("s_magic", "H"), ("s_state", "H"),
    ("s_errors", "H"), ("s_minor_rev_level", "H"), ("s_lastcheck", "I"), ("s_checkinterval", "I"),
    ("s_creator_os", "I"), ("s_rev_level", "I"), ("s_def_resuid", "H"), ("s_def_resgid", "H"),
    ("s_first_ino", "I"), ("s_inode_size", "H"), ("s_block_group_nr", "H"),
    ("s_feature_compat", "I"), ("s_feature_incompat", "I"), ("s_feature_ro_compat", "I"),
    ("s_uuid", "16s"), ("s_volume_name", "16s"), ("s_last_mounted", "64s"),
    ("s_algorithm_usage_bitmap", "I"), ("s_prealloc_blocks", "B"), ("s_prealloc_dir_blocks", "B"),
    ("s_reserved_gdt_blocks", "H"), ("s_journal_uuid", "16s"), ("s_journal_inum", "I"),
    ("s_journal_dev", "I"), ("s_last_orphan", "I"), ("s_hash_seed", "16s"),
    ("s_def_hash_version", "B"), ("s_jnl_backup_type", "B"), ("s_desc_size", "H"),
    ("s_default_mount_opts", "I"), ("s_first_meta_bg", "I"), ("s_mkfs_time", "I"),
    ("s_jnl_blocks", "68s"), ("s_blocks_count_hi", "I"), ("s_r_blocks_count_hi", "I"),
    ("s_free_blocks_count_hi", "I"), ("s_min_extra_isize", "H"), ("s_want_extra_isize", "H"),
    ("s_flags", "I"), ("s_raid_stride", "H"), ("s_mmp_interval", "H"), ("s_mmp_block", "Q"),
    ("s_raid_stripe_width", "I"), ("s_log_groups_per_flex", "B"), ("s_checksum_type", "B"),
    ("s_encryption_level", "B"), ("s_reserved_pad", "B"), ("s_kbytes_written", "Q"),
    ("s_snapshot_area", "20s"), ("s_error_area", "108s"), ("s_mount_opts", "64s"),
    ("s_usr_quota_inum", "I"), ("s_grp_quota_inum", "I"), ("s_overhead_clusters", "I"),
    ("s_backup_bgs_0", "I"), ("s_backup_bgs_1", "I"), ("s_encrypt_area", "20s"),
    ("s_lpf_ino", "I"), ("s_prj_quota_inum", "I"), ("s_checksum_seed", "I"), ("s_time_hi", "8s"),
]
SUPERBLOCK_STRUCT, _SB_NAMES = _record(_SB_FIELDS)


class Superblock:
    """ext4 superblock; unknown tail bytes preserved."""

    __slots__ = (*_SB_NAMES, "_tail")

    def __init__(self) -> None:
        for name, fmt in _SB_FIELDS:
            setattr(self, name, b"\0" * int(fmt[:-1]) if fmt.endswith("s") else 0)
        self._tail = bytes(SUPERBLOCK_SIZE - SUPERBLOCK_STRUCT.size)

    @classmethod
    def from_bytes(cls, data: bytes) -> Superblock:
        sb = cls.__new__(cls)
        for name, value in zip(_SB_NAMES, SUPERBLOCK_STRUCT.unpack_from(data), strict=True):
            setattr(sb, name, value)
        sb._tail = bytes(data[SUPERBLOCK_STRUCT.size:SUPERBLOCK_SIZE])
        return sb

    def to_bytes(self) -> bytes:
        return SUPERBLOCK_STRUCT.pack(*(getattr(self, n) for n in _SB_NAMES)) + self._tail

    @property
    def blocks_count(self) -> int:
        return self.s_blocks_count_lo | (self.s_blocks_count_hi << 32)

    @blocks_count.setter
    def blocks_count(self, value: int) -> None:
        self.s_blocks_count_lo, self.s_blocks_count_hi = value & 0xFFFFFFFF, value >> 32

    @property
    def r_blocks_count(self) -> int:
        return self.s_r_blocks_count_lo | (self.s_r_blocks_count_hi << 32)

    @r_blocks_count.setter
    def r_blocks_count(self, value: int) -> None:
        self.s_r_blocks_count_lo, self.s_r_blocks_count_hi = value & 0xFFFFFFFF, value >> 32

    @property
    def free_blocks_count(self) -> int:
        return self.s_free_blocks_count_lo | (self.s_free_blocks_count_hi << 32)

    @free_blocks_count.setter
    def free_blocks_count(self, value: int) -> None:
        self.s_free_blocks_count_lo, self.s_free_blocks_count_hi = value & 0xFFFFFFFF, value >> 32


# ext4_group_desc, 64-byte variant (64bit feature).
_GD_FIELDS = [
    ("bg_block_bitmap_lo", "I"), ("bg_inode_bitmap_lo", "I"), ("bg_inode_table_lo", "I"),
    ("bg_free_blocks_count_lo", "H"), ("bg_free_inodes_count_lo", "H"),
    ("bg_used_dirs_count_lo", "H"), ("bg_flags", "H"), ("bg_exclude_bitmap_lo", "I"),
    ("bg_block_bitmap_csum_lo", "H"), ("bg_inode_bitmap_csum_lo", "H"), ("bg_itable_unused_lo", "H"),
    ("bg_checksum", "H"), ("bg_block_bitmap_hi", "I"), ("bg_inode_bitmap_hi", "I"),
    ("bg_inode_table_hi", "I"), ("bg_free_blocks_count_hi", "H"), ("bg_free_inodes_count_hi", "H"),
    ("bg_used_dirs_count_hi", "H"), ("bg_itable_unused_hi", "H"), ("bg_exclude_bitmap_hi", "I"),
    ("bg_block_bitmap_csum_hi", "H"), ("bg_inode_bitmap_csum_hi", "H"), ("bg_reserved", "I"),
]
GROUP_DESC_STRUCT, _GD_NAMES = _record(_GD_FIELDS)


@dataclass(slots=True)
class GroupDesc:
    """One group's descriptor, reduced to the combined (lo|hi) values the writer uses."""

    block_bitmap: int = 0
    inode_bitmap: int = 0
    inode_table: int = 0
    free_blocks_count: int = 0
    free_inodes_count: int = 0
    used_dirs_count: int = 0
    flags: int = 0
    itable_unused: int = 0

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = 0) -> GroupDesc:
        v = dict(zip(_GD_NAMES, GROUP_DESC_STRUCT.unpack_from(data, offset), strict=True))
        return cls(
            v["bg_block_bitmap_lo"] | v["bg_block_bitmap_hi"] << 32,
            v["bg_inode_bitmap_lo"] | v["bg_inode_bitmap_hi"] << 32,
            v["bg_inode_table_lo"] | v["bg_inode_table_hi"] << 32,
            v["bg_free_blocks_count_lo"] | v["bg_free_blocks_count_hi"] << 16,
            v["bg_free_inodes_count_lo"] | v["bg_free_inodes_count_hi"] << 16,
            v["bg_used_dirs_count_lo"] | v["bg_used_dirs_count_hi"] << 16,
            v["bg_flags"],
            v["bg_itable_unused_lo"] | v["bg_itable_unused_hi"] << 16,
        )

    def to_bytes(self) -> bytes:
        m32, m16 = 0xFFFFFFFF, 0xFFFF
        return GROUP_DESC_STRUCT.pack(
            self.block_bitmap & m32, self.inode_bitmap & m32, self.inode_table & m32,
            self.free_blocks_count & m16, self.free_inodes_count & m16, self.used_dirs_count & m16,
            self.flags, 0, 0, 0, self.itable_unused & m16, 0,
            self.block_bitmap >> 32, self.inode_bitmap >> 32, self.inode_table >> 32,
            self.free_blocks_count >> 16, self.free_inodes_count >> 16, self.used_dirs_count >> 16,
            self.itable_unused >> 16, 0, 0, 0, 0,
        )


# ext4_inode: 128-byte base + the 32 bytes of i_extra_isize fields; the rest (in-inode xattrs) raw.
_INODE_FIELDS = [
    ("i_mode", "H"), ("i_uid", "H"), ("i_size_lo", "I"), ("i_atime", "I"), ("i_ctime", "I"),
    ("i_mtime", "I"), ("i_dtime", "I"), ("i_gid", "H"), ("i_links_count", "H"), ("i_blocks_lo", "I"),
    ("i_flags", "I"), ("l_i_version", "I"), ("i_block", "60s"), ("i_generation", "I"),
    ("i_file_acl_lo", "I"), ("i_size_high", "I"), ("i_obso_faddr", "I"), ("l_i_blocks_high", "H"),
    ("l_i_file_acl_high", "H"), ("l_i_uid_high", "H"), ("l_i_gid_high", "H"),
    ("l_i_checksum_lo", "H"), ("l_i_reserved", "H"), ("i_extra_isize", "H"), ("i_checksum_hi", "H"),
    ("i_ctime_extra", "I"), ("i_mtime_extra", "I"), ("i_atime_extra", "I"), ("i_crtime", "I"),
    ("i_crtime_extra", "I"), ("i_version_hi", "I"), ("i_projid", "I"),
]
INODE_STRUCT, _INODE_NAMES = _record(_INODE_FIELDS)
INODE_IBODY_OFFSET = GOOD_OLD_INODE_SIZE + EXTRA_ISIZE  # in-inode xattr area starts here
INODE_IBODY_SIZE = INODE_SIZE - INODE_IBODY_OFFSET  # 96 bytes incl. the 4-byte magic


def struct_offsets() -> dict[str, int]:
    """Offsets of every named field (for the struct-layout tests)."""
    out: dict[str, int] = {}
    for rec in (_SB_FIELDS, _GD_FIELDS, _INODE_FIELDS):
        pos = 0
        for name, fmt in rec:
            out[name] = pos
            pos += struct.calcsize("<" + fmt)
    return out


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Geometry:
    """Group layout derived from a superblock (flex_bg with groups-per-flex 1, sparse_super2)."""

    def __init__(self, sb: Superblock) -> None:
        self.blocks_count = sb.blocks_count
        self.bpg = sb.s_blocks_per_group
        self.ipg = sb.s_inodes_per_group
        self.inodes_count = sb.s_inodes_count
        self.ngroups = ceil_div(self.blocks_count - sb.s_first_data_block, self.bpg)
        self.desc_size = sb.s_desc_size if sb.s_feature_incompat & INCOMPAT_64BIT else 32
        self.desc_per_block = BLOCK_SIZE // self.desc_size
        self.desc_blocks = ceil_div(self.ngroups, self.desc_per_block)
        self.reserved_gdt = sb.s_reserved_gdt_blocks if sb.s_feature_compat & COMPAT_RESIZE_INODE else 0
        self.inode_size = sb.s_inode_size
        self.inodes_per_block = BLOCK_SIZE // self.inode_size
        self.itable_blocks = ceil_div(self.ipg * self.inode_size, BLOCK_SIZE)
        self.sparse_super2 = bool(sb.s_feature_compat & COMPAT_SPARSE_SUPER2)
        self.sparse_super = bool(sb.s_feature_ro_compat & RO_COMPAT_SPARSE_SUPER)
        self.backup_bgs = (sb.s_backup_bgs_0, sb.s_backup_bgs_1)

    def group_start(self, g: int) -> int:
        return g * self.bpg

    def group_size(self, g: int) -> int:
        return min(self.bpg, self.blocks_count - g * self.bpg)

    def has_super(self, g: int) -> bool:
        if g == 0:
            return True
        if self.sparse_super2:
            return g in self.backup_bgs
        if not self.sparse_super or g == 1:
            return True
        if g % 2 == 0:
            return False
        for base in (3, 5, 7):
            n = base
            while n < g:
                n *= base
            if n == g:
                return True
        return False

    def backup_groups(self) -> list[int]:
        return [g for g in range(1, self.ngroups) if self.has_super(g)] if not self.sparse_super2 \
            else [g for g in self.backup_bgs if 0 < g < self.ngroups]

    def super_overhead(self, g: int) -> int:
        """Blocks used by the (backup) superblock, descriptors and reserved GDT of group g."""
        return 1 + self.desc_blocks + self.reserved_gdt if self.has_super(g) else 0
