"""xattr storage: byte-exact against libext2fs (debugfs ea_set), read back by debugfs, e2fsck-clean."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.ext4.errors import XattrError
from overlaybd_provider.ext4.xattr import (
    ACL_UNDEFINED_ID,
    EXT4_XATTR_MAGIC,
    acl_disk_to_xattr,
    acl_xattr_to_disk,
    pack_xattrs,
    parse_xattrs,
    split_name,
    xattr_block_hash,
    xattr_entry_hash,
)
from support import ext4img
from support.fsjudge import assert_e2fsck_clean, read_tree, run_debugfs

IBODY = 256 - 128 - 32  # 256-byte inodes, i_extra_isize 32


def _acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


U = ACL_UNDEFINED_ID
ACL_ACCESS = _acl((1, 7, U), (2, 6, 1000), (4, 5, U), (8, 4, 50), (0x10, 7, U), (0x20, 1, U))
ACL_DEFAULT = _acl((1, 7, U), (4, 5, U), (0x20, 0, U))


def test_empty_attrs_leave_ibody_zero() -> None:
    layout = pack_xattrs({}, ibody_size=IBODY)
    assert layout.ibody == bytes(IBODY) and layout.block is None
    assert parse_xattrs(layout.ibody, None) == {}
    assert parse_xattrs(None, None) == {}


def test_small_attrs_stay_in_inode_in_insertion_order() -> None:
    attrs = {"user.b": b"2", "security.capability": bytes.fromhex("0100000200200000000000000000000000000000")}
    layout = pack_xattrs(attrs, ibody_size=IBODY)
    assert layout.block is None and len(layout.ibody) == IBODY
    assert struct.unpack_from("<I", layout.ibody)[0] == EXT4_XATTR_MAGIC
    # first entry: name_len 1, index 1 (user.), e_hash 0 in the inode
    name_len, index, _offs, inum, size, e_hash = struct.unpack_from("<BBHIII", layout.ibody, 4)
    assert (name_len, index, inum, size, e_hash) == (1, 1, 0, 1, 0)
    assert list(parse_xattrs(layout.ibody, None).items()) == list(attrs.items())


def test_overflow_goes_to_sorted_block() -> None:
    attrs = {"user.zz": b"v" * 100, "trusted.t": b"t" * 40, "user.a": b"x" * 3000, "user.bb": b"1"}
    layout = pack_xattrs(attrs, ibody_size=IBODY)
    assert layout.block is not None and len(layout.block) == 4096
    magic, refcount, blocks, h_hash, _csum = struct.unpack_from("<IIIII", layout.block)
    assert (magic, refcount, blocks) == (EXT4_XATTR_MAGIC, 1, 1)
    # user.bb (small) still fits the inode after the big ones went to the block
    inode_only = parse_xattrs(layout.ibody, None)
    assert list(inode_only) == ["trusted.t", "user.bb"]
    block_only = parse_xattrs(None, layout.block)
    assert list(block_only) == ["user.a", "user.zz"]  # (index, name_len, name) order
    hashes = []
    pos = 32
    while layout.block[pos : pos + 4] != b"\0\0\0\0":
        nlen, _idx, offs, _inum, size, e_hash = struct.unpack_from("<BBHIII", layout.block, pos)
        name = layout.block[pos + 16 : pos + 16 + nlen]
        assert e_hash == xattr_entry_hash(name, layout.block[offs : offs + size]) != 0
        assert offs % 4 == 0
        hashes.append(e_hash)
        pos += (16 + nlen + 3) & ~3
    assert h_hash == xattr_block_hash(hashes) != 0
    assert pack_xattrs(attrs, ibody_size=IBODY, rehash=False).block[12:16] == bytes(4)
    assert parse_xattrs(layout.ibody, layout.block) == attrs


def test_deterministic_and_roundtrip_many() -> None:
    attrs = {f"user.k{i:03d}": bytes([i]) * (i * 7 % 90) for i in range(60)}
    a = pack_xattrs(attrs, ibody_size=IBODY)
    b = pack_xattrs(dict(attrs), ibody_size=IBODY)
    assert a == b
    assert parse_xattrs(a.ibody, a.block) == attrs


def test_too_large_is_a_clear_error() -> None:
    with pytest.raises(XattrError, match=r"user\.huge.*does not fit") as info:
        pack_xattrs({"user.huge": b"x" * 5000}, ibody_size=IBODY)
    assert isinstance(info.value, OverlaybdError)
    many = {f"user.v{i}": b"y" * 1000 for i in range(5)}
    with pytest.raises(XattrError):
        pack_xattrs(many, ibody_size=IBODY)
    with pytest.raises(XattrError, match="255"):
        pack_xattrs({"user." + "n" * 256: b""}, ibody_size=IBODY)


def test_name_prefixes() -> None:
    assert split_name("user.x") == (1, b"x")
    assert split_name("system.posix_acl_access") == (2, b"")
    assert split_name("system.posix_acl_default") == (3, b"")
    assert split_name("trusted.overlay.opaque") == (4, b"overlay.opaque")
    assert split_name("security.selinux") == (6, b"selinux")
    assert split_name("system.data") == (7, b"data")
    assert split_name("gnu.x") == (10, b"x")
    assert split_name("other.x") == (0, b"other.x")


def test_acl_conversion() -> None:
    disk = acl_xattr_to_disk(ACL_ACCESS)
    assert disk[:4] == struct.pack("<I", 1)
    assert len(disk) == 4 + 4 * 4 + 2 * 8  # four short entries, two with ids
    assert acl_disk_to_xattr(disk) == ACL_ACCESS
    # ids of short entries are not stored: any input id comes back as ACL_UNDEFINED_ID
    zero_ids = _acl((1, 6, 0), (4, 4, 0), (0x20, 4, 0))
    assert acl_disk_to_xattr(acl_xattr_to_disk(zero_ids)) == _acl((1, 6, U), (4, 4, U), (0x20, 4, U))
    for bad in (b"", struct.pack("<I", 1) + b"\0" * 8, _acl((0x40, 1, 0)), _acl(), ACL_ACCESS[:-1]):
        with pytest.raises(XattrError):
            acl_xattr_to_disk(bad)
    with pytest.raises(XattrError):
        acl_disk_to_xattr(struct.pack("<I", 2))
    layout = pack_xattrs({"system.posix_acl_access": ACL_ACCESS}, ibody_size=IBODY)
    assert parse_xattrs(layout.ibody, layout.block) == {"system.posix_acl_access": ACL_ACCESS}


def test_corrupt_areas_raise() -> None:
    layout = pack_xattrs({"user.a": b"x" * 3000, "user.b": b"y"}, ibody_size=IBODY)
    bad = bytearray(layout.block)
    struct.pack_into("<I", bad, 0, 0x12345678)
    with pytest.raises(XattrError, match="magic"):
        parse_xattrs(None, bytes(bad))
    bad = bytearray(layout.block)
    struct.pack_into("<H", bad, 32 + 2, 4090)  # value offset past the end
    with pytest.raises(XattrError, match="out of bounds"):
        parse_xattrs(None, bytes(bad))
    bad = bytearray(layout.ibody)
    struct.pack_into("<I", bad, 4 + 4, 7)  # e_value_inum
    with pytest.raises(XattrError, match="ea_inode"):
        parse_xattrs(bytes(bad), None)


# ------------------------------------------------------------------ real e2fsprogs as the judge

def _image_with_file(tmp_path: Path, name: str = "f") -> tuple[Path, int]:
    img = ext4img.make_image(tmp_path / "x.img", size="16M")
    ino = ext4img.write_file(img, name, b"content\n", tmp_path)
    return img, ino


def _raw_areas(img: Path, ino: int) -> tuple[bytes, bytes | None]:
    off = ext4img.inode_offset(img, ino)
    inode = ext4img.read_at(img, off, 256)
    extra = struct.unpack_from("<H", inode, 128)[0]
    assert extra == 32
    acl_lo = struct.unpack_from("<I", inode, 104)[0]
    acl_hi = struct.unpack_from("<H", inode, 116 + 2)[0]  # osd2.l_i_file_acl_high
    block_no = acl_lo | (acl_hi << 32)
    block = ext4img.read_at(img, block_no * 4096, 4096) if block_no else None
    return inode[128 + extra :], block


SCENARIOS = {
    "inode-only": {"user.foo": b"bar", "security.capability": bytes.fromhex("0100000200200000000000000000000000000000")},
    "block-and-inode": {
        "user.foo": b"bar",
        "user.big": b"B" * 3000,
        "trusted.bin": bytes(range(256)),
        "security.capability": b"sp ace",
    },
    "acls": {"system.posix_acl_access": ACL_ACCESS, "system.posix_acl_default": ACL_DEFAULT, "user.x": b"1" * 200},
    "empty-value": {"user.empty": b"", "trusted.zz": b"z" * 70},
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_byte_identical_to_libext2fs(tmp_path: Path, scenario: str) -> None:
    """debugfs ea_set (libext2fs ext2fs_xattr_set) one by one == pack_xattrs(rehash=False)."""
    attrs = SCENARIOS[scenario]
    img, ino = _image_with_file(tmp_path)
    cmds = []
    for k, (name, value) in enumerate(attrs.items()):
        host = tmp_path / f"v{k}"
        host.write_bytes(value)
        cmds.append(f'ea_set -f "{host}" <{ino}> "{name}"')
    run_debugfs(img, cmds, write=True)
    ibody, block = _raw_areas(img, ino)
    ours = pack_xattrs(attrs, ibody_size=IBODY, rehash=False)
    assert ours.ibody == ibody
    assert ours.block == block
    assert parse_xattrs(ibody, block) == attrs
    assert_e2fsck_clean(img)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_our_bytes_read_back_by_debugfs(tmp_path: Path, scenario: str) -> None:
    """Patch our ibody/block into an inode; debugfs ea_get returns the values, e2fsck is clean."""
    attrs = SCENARIOS[scenario]
    img, ino = _image_with_file(tmp_path)
    layout = pack_xattrs(attrs, ibody_size=IBODY)
    if layout.block is not None:
        # let libext2fs allocate and account an xattr block, then overwrite it with ours
        host = tmp_path / "filler"
        host.write_bytes(b"F" * 3000)
        run_debugfs(img, [f'ea_set -f "{host}" <{ino}> user.filler'], write=True)
    off = ext4img.inode_offset(img, ino)
    ext4img.patch(img, off + 160, layout.ibody)
    if layout.block is not None:
        _ibody, old_block = _raw_areas(img, ino)
        assert old_block is not None
        acl_lo = struct.unpack_from("<I", ext4img.read_at(img, off + 104, 4))[0]
        ext4img.patch(img, acl_lo * 4096, layout.block)
    assert_e2fsck_clean(img)
    tree = read_tree(img)
    assert tree["/f"].xattrs == attrs


def test_non_ascii_name_hash_accepted_by_e2fsck(tmp_path: Path) -> None:
    attrs = {"user.caf\u00e9-\u00ff": b"v" * 100, "user.big": b"b" * 3500}
    img, ino = _image_with_file(tmp_path)
    cmds = []
    for k, (name, value) in enumerate(attrs.items()):
        host = tmp_path / f"v{k}"
        host.write_bytes(value)
        cmds.append(f'ea_set -f "{host}" <{ino}> "{name}"')
    run_debugfs(img, cmds, write=True)
    ibody, block = _raw_areas(img, ino)
    ours = pack_xattrs(attrs, ibody_size=IBODY, rehash=False)
    assert (ours.ibody, ours.block) == (ibody, block)
    assert set(parse_xattrs(None, block)) == set(attrs)  # both in the block: e_hash over high bytes
    assert_e2fsck_clean(img)
    assert read_tree(img)["/f"].xattrs == attrs  # the judge reads hex-printed names too


_names = st.tuples(
    st.sampled_from(["user.", "trusted.", "security.", "system.", "gnu."]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF), min_size=1, max_size=40),
).map("".join)


@settings(max_examples=60, deadline=None)
@given(attrs=st.dictionaries(_names, st.binary(max_size=600), max_size=12))
def test_pack_parse_roundtrip_property(attrs: dict[str, bytes]) -> None:
    try:
        layout = pack_xattrs(attrs, ibody_size=IBODY)
    except XattrError:
        return  # genuinely too big for inode + one block
    assert len(layout.ibody) == IBODY
    assert layout.block is None or len(layout.block) == 4096
    assert parse_xattrs(layout.ibody, layout.block) == attrs
