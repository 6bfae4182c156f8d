"""In-memory view of one 256-byte ext4 inode (struct in ``layout.INODE_STRUCT``).

Combined 32/48/64-bit values (size, uid, gid, blocks, file ACL) are exposed as properties; the
in-inode xattr area after the extra fields is kept as raw bytes.
"""

from __future__ import annotations

from overlaybd_provider.ext4 import layout as L

# a new inode is all zero except i_extra_isize (the raw fields in the struct's order)
_NEW_FIELDS = tuple(bytes(60) if fmt == "60s" else L.EXTRA_ISIZE if name == "i_extra_isize" else 0
                    for name, fmt in L._INODE_FIELDS)
_NEW_IBODY = bytes(L.INODE_IBODY_SIZE)


def encode_extra_time(sec: int, nsec: int) -> tuple[int, int]:
    """(32-bit seconds field, *_extra field) for a time: epoch bits carry bits 32-33."""
    lo = sec & 0xFFFFFFFF
    signed_lo = lo - (1 << 32) if lo & 0x80000000 else lo
    epoch = ((sec - signed_lo) >> 32) & 3
    return lo, (nsec << 2) | epoch


def decode_extra_time(lo: int, extra: int) -> tuple[int, int]:
    signed_lo = lo - (1 << 32) if lo & 0x80000000 else lo
    return signed_lo + ((extra & 3) << 32), extra >> 2


class Inode:
    """Mutable inode record. Every field is an attribute of its own (a slot in the compiled build,
    see inode.pxd); ``to_bytes`` and ``_load`` name them in the struct's order, which a test checks
    against ``layout._INODE_FIELDS``."""

    def __init__(self) -> None:
        self._load(_NEW_FIELDS)
        self.ibody = _NEW_IBODY

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, offset: int = 0) -> Inode:
        ino = cls.__new__(cls)
        ino._load(L.INODE_STRUCT.unpack_from(data, offset))
        ino.ibody = bytes(data[offset + L.INODE_IBODY_OFFSET:offset + L.INODE_SIZE])
        return ino

    def _load(self, values: tuple) -> None:
        (self.i_mode, self.i_uid, self.i_size_lo, self.i_atime, self.i_ctime, self.i_mtime, self.i_dtime,
         self.i_gid, self.i_links_count, self.i_blocks_lo, self.i_flags, self.l_i_version, self.i_block,
         self.i_generation, self.i_file_acl_lo, self.i_size_high, self.i_obso_faddr, self.l_i_blocks_high,
         self.l_i_file_acl_high, self.l_i_uid_high, self.l_i_gid_high, self.l_i_checksum_lo,
         self.l_i_reserved, self.i_extra_isize, self.i_checksum_hi, self.i_ctime_extra, self.i_mtime_extra,
         self.i_atime_extra, self.i_crtime, self.i_crtime_extra, self.i_version_hi, self.i_projid) = values

    def to_bytes(self) -> bytes:
        fields = (
            self.i_mode, self.i_uid, self.i_size_lo, self.i_atime, self.i_ctime, self.i_mtime, self.i_dtime,
            self.i_gid, self.i_links_count, self.i_blocks_lo, self.i_flags, self.l_i_version, self.i_block,
            self.i_generation, self.i_file_acl_lo, self.i_size_high, self.i_obso_faddr,
            self.l_i_blocks_high, self.l_i_file_acl_high, self.l_i_uid_high, self.l_i_gid_high,
            self.l_i_checksum_lo, self.l_i_reserved, self.i_extra_isize, self.i_checksum_hi,
            self.i_ctime_extra, self.i_mtime_extra, self.i_atime_extra, self.i_crtime, self.i_crtime_extra,
            self.i_version_hi, self.i_projid)
        return L.INODE_STRUCT.pack(*fields) + self.ibody

    # -- combined fields -------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.i_size_lo | (self.i_size_high << 32)

    @size.setter
    def size(self, value: int) -> None:
        self.i_size_lo, self.i_size_high = value & 0xFFFFFFFF, value >> 32

    @property
    def uid(self) -> int:
        return self.i_uid | (self.l_i_uid_high << 16)

    @uid.setter
    def uid(self, value: int) -> None:
        self.i_uid, self.l_i_uid_high = value & 0xFFFF, (value >> 16) & 0xFFFF

    @property
    def gid(self) -> int:
        return self.i_gid | (self.l_i_gid_high << 16)

    @gid.setter
    def gid(self, value: int) -> None:
        self.i_gid, self.l_i_gid_high = value & 0xFFFF, (value >> 16) & 0xFFFF

    @property
    def file_acl(self) -> int:
        return self.i_file_acl_lo | (self.l_i_file_acl_high << 32)

    @file_acl.setter
    def file_acl(self, value: int) -> None:
        self.i_file_acl_lo, self.l_i_file_acl_high = value & 0xFFFFFFFF, value >> 32

    @property
    def blocks_512(self) -> int:
        n = self.i_blocks_lo | (self.l_i_blocks_high << 32)
        return n * 8 if self.i_flags & L.EXT4_HUGE_FILE_FL else n

    @blocks_512.setter
    def blocks_512(self, value: int) -> None:
        self.i_flags &= ~L.EXT4_HUGE_FILE_FL
        if value >= 1 << 48:
            value //= 8
            self.i_flags |= L.EXT4_HUGE_FILE_FL
        self.i_blocks_lo, self.l_i_blocks_high = value & 0xFFFFFFFF, value >> 32

    @property
    def file_type(self) -> int:
        return self.i_mode & L.S_IFMT

    def is_dir(self) -> bool:
        return self.file_type == L.S_IFDIR

    def set_times(self, sec: int, nsec: int = 0) -> None:
        """atime = mtime = ctime (what a tar apply produces); crtime stays 0."""
        lo, extra = encode_extra_time(sec, nsec)
        self.i_atime = self.i_mtime = self.i_ctime = lo
        self.i_atime_extra = self.i_mtime_extra = self.i_ctime_extra = extra

