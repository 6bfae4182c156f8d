"""Struct sizes and field offsets of the on-disk records (like e2fsprogs tst_super_size)."""

from __future__ import annotations

from overlaybd_provider.ext4 import layout as L
from overlaybd_provider.ext4.inode import Inode, decode_extra_time, encode_extra_time


def test_struct_sizes() -> None:
    assert L.SUPERBLOCK_STRUCT.size == 0x27C
    assert L.GROUP_DESC_STRUCT.size == 64
    assert L.INODE_STRUCT.size == 128 + 32


def test_field_offsets() -> None:
    o = L.struct_offsets()
    expected = {
        "s_inodes_count": 0x0, "s_magic": 0x38, "s_first_ino": 0x54, "s_feature_compat": 0x5C,
        "s_uuid": 0x68, "s_reserved_gdt_blocks": 0xCE, "s_hash_seed": 0xEC, "s_def_hash_version": 0xFC,
        "s_desc_size": 0xFE, "s_mkfs_time": 0x108, "s_blocks_count_hi": 0x150, "s_min_extra_isize": 0x15C,
        "s_flags": 0x160, "s_log_groups_per_flex": 0x174, "s_kbytes_written": 0x178, "s_mount_opts": 0x200,
        "s_backup_bgs_0": 0x24C, "s_lpf_ino": 0x268, "s_checksum_seed": 0x270,
        "bg_free_blocks_count_lo": 0xC, "bg_flags": 0x12, "bg_itable_unused_lo": 0x1C, "bg_block_bitmap_hi": 0x20,
        "bg_free_blocks_count_hi": 0x2C, "bg_reserved": 0x3C,
        "i_mode": 0, "i_links_count": 0x1A, "i_flags": 0x20, "l_i_version": 0x24, "i_block": 0x28,
        "i_generation": 0x64, "i_file_acl_lo": 0x68, "i_size_high": 0x6C, "l_i_blocks_high": 0x74,
        "l_i_uid_high": 0x78, "i_extra_isize": 0x80, "i_ctime_extra": 0x84, "i_crtime": 0x90, "i_projid": 0x9C,
    }
    assert {k: o[k] for k in expected} == expected


def test_superblock_roundtrip() -> None:
    sb = L.Superblock()
    sb.blocks_count = (5 << 32) + 7
    sb.s_magic = L.EXT4_SUPER_MAGIC
    raw = sb.to_bytes()
    assert len(raw) == L.SUPERBLOCK_SIZE
    back = L.Superblock.from_bytes(raw)
    assert back.blocks_count == (5 << 32) + 7 and back.s_blocks_count_hi == 5
    assert back.to_bytes() == raw


def test_inode_roundtrip_and_wide_fields() -> None:
    ino = Inode()
    ino.uid, ino.gid, ino.size = 0x12345678, 0xFFFFFFFE, 5 << 32
    raw = ino.to_bytes()
    assert len(raw) == L.INODE_SIZE
    back = Inode.from_bytes(raw)
    assert (back.uid, back.gid, back.size) == (0x12345678, 0xFFFFFFFE, 5 << 32)
    assert (back.i_uid, back.l_i_uid_high) == (0x5678, 0x1234)


def test_inode_fields_follow_the_struct_order() -> None:
    """``Inode`` names its 32 fields by hand (slots in the compiled build); each field must land at
    its own offset of the struct, both ways, and a new inode is zero but for i_extra_isize."""
    names = [name for name, _ in L._INODE_FIELDS]
    ino = Inode()
    assert ino.to_bytes() == L.INODE_STRUCT.pack(
        *(bytes(60) if fmt == "60s" else L.EXTRA_ISIZE if name == "i_extra_isize" else 0
          for name, fmt in L._INODE_FIELDS)) + bytes(L.INODE_IBODY_SIZE)
    for i, name in enumerate(names):
        setattr(ino, name, bytes([i + 1]) * 60 if name == "i_block" else i + 1)
    ino.ibody = bytes(range(L.INODE_IBODY_SIZE))
    raw = ino.to_bytes()
    values = L.INODE_STRUCT.unpack_from(raw)
    assert values == tuple(bytes([i + 1]) * 60 if name == "i_block" else i + 1 for i, name in enumerate(names))
    back = Inode.from_bytes(bytes(7) + raw, 7)
    assert [getattr(back, name) for name in names] == list(values)
    assert back.ibody == ino.ibody and back.to_bytes() == raw


def test_extra_time_encoding() -> None:
    for sec, ns in [(0, 0), (1700000000, 750000000), (-1, 5), (2**31 + 10, 1), (-(2**31), 0)]:
        lo, extra = encode_extra_time(sec, ns)
        assert decode_extra_time(lo, extra) == (sec, ns)
