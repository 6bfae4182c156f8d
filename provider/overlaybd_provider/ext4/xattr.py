"""ext4 extended attributes: in-inode area and one external xattr block (no metadata_csum).

Public API (pure functions, no I/O)::

    XattrLayout(ibody: bytes, block: bytes | None)
    pack_xattrs(attrs: Mapping[str, bytes], *, ibody_size: int, block_size: int = 4096,
                rehash: bool = True) -> XattrLayout
    parse_xattrs(ibody: bytes | None, block: bytes | None) -> dict[str, bytes]
    acl_xattr_to_disk(value: bytes) -> bytes      # VFS/tar POSIX ACL (v2) -> ext4 on-disk (v1)
    acl_disk_to_xattr(value: bytes) -> bytes      # and back (short entries get id 0xffffffff)
    xattr_entry_hash(name: bytes, value: bytes) -> int   # ext2fs_ext_attr_hash_entry (unsigned chars)
    xattr_entry_hash_signed(name: bytes, value: bytes) -> int  # legacy signed-char variant
    xattr_block_hash(entry_hashes: Sequence[int]) -> int  # ext2fs_ext_attr_block_rehash

``ibody`` is the inode's space after ``i_extra_isize`` (inode_size - 128 - i_extra_isize
bytes, 96 for 256-byte inodes with extra_isize 32) and starts with the 0xEA020000 magic.
``pack_xattrs`` returns exactly ``ibody_size`` bytes for it, all zero when there are no
attributes, and the xattr block (or ``None``): the caller stores the block, points
``i_file_acl`` at it and adds one block to ``i_blocks``.

Placement replays libext2fs ``ext2fs_xattr_set`` called once per attribute in the mapping's
order (what photon's lsetxattr does while applying a tar): an attribute goes into the inode
when its entry + value fit the remaining in-inode space, else into the block; in-inode
entries keep insertion order, block entries are sorted by (name index, name length, name).
Values are laid out from the end of each area downwards, 4-byte aligned
(``write_xattrs_to_buffer``); in-inode entries carry e_hash 0, block entries their hash,
and the header h_hash (kernel ``ext4_xattr_rehash``). libext2fs 1.47 never computes h_hash
(it writes 0, which the kernel merely treats as "do not share this block"); pass
``rehash=False`` for blocks byte-identical to libext2fs/upstream output. Name-index prefixes as in
``ext_attr.c``'s ``ea_names``. POSIX ACL values are converted between the xattr (tar)
format and ext4's compact on-disk format (``convert_posix_acl_to_disk_buffer``). Attributes
that do not fit the inode plus one block raise :class:`XattrError`.
Struct layouts: ext4 disk layout doc, "Extended Attributes".
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from overlaybd_provider.ext4.errors import XattrError

EXT4_XATTR_MAGIC = 0xEA020000
# struct ext4_xattr_header: h_magic, h_refcount, h_blocks, h_hash, h_checksum, h_reserved[3]
EXT4_XATTR_HEADER = struct.Struct("<IIIII12x")
# struct ext4_xattr_ibody_header: h_magic
EXT4_XATTR_IBODY_HEADER = struct.Struct("<I")
# struct ext4_xattr_entry: e_name_len, e_name_index, e_value_offs, e_value_inum, e_value_size, e_hash
EXT4_XATTR_ENTRY = struct.Struct("<BBHIII")
EXT4_XATTR_PAD = 4

# ext_attr.c ea_names: most specific prefix first.
_PREFIXES: tuple[tuple[int, str], ...] = (
    (10, "gnu."),
    (3, "system.posix_acl_default"),
    (2, "system.posix_acl_access"),
    (8, "system.richacl"),
    (6, "security."),
    (4, "trusted."),
    (7, "system."),
    (1, "user."),
)
_PREFIX_BY_INDEX = {idx: prefix for idx, prefix in _PREFIXES}
ACL_NAMES = ("system.posix_acl_access", "system.posix_acl_default")

# POSIX ACLs: posix_acl_xattr_header/entry (v2) and ext4_acl_header/entry (v1).
POSIX_ACL_XATTR_VERSION = 2
EXT4_ACL_VERSION = 1
_ACL_HEADER = struct.Struct("<I")
_ACL_XATTR_ENTRY = struct.Struct("<HHI")
_ACL_DISK_SHORT = struct.Struct("<HH")
_ACL_DISK_ENTRY = struct.Struct("<HHI")
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF
_SHORT_TAGS = (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER)
_ID_TAGS = (ACL_USER, ACL_GROUP)

_M = 0xFFFFFFFF


@dataclass(frozen=True)
class XattrLayout:
    ibody: bytes
    block: bytes | None


def _entry_len(name_len: int) -> int:
    """EXT2_EXT_ATTR_LEN: entry header + name, 4-aligned."""
    return (EXT4_XATTR_ENTRY.size + name_len + EXT4_XATTR_PAD - 1) & ~(EXT4_XATTR_PAD - 1)


def _value_size(size: int) -> int:
    """EXT2_EXT_ATTR_SIZE: value rounded up to 4."""
    return (size + EXT4_XATTR_PAD - 1) & ~(EXT4_XATTR_PAD - 1)


def split_name(name: str) -> tuple[int, bytes]:
    """Full xattr name → (e_name_index, name suffix bytes) using the longest matching prefix."""
    for idx, prefix in _PREFIXES:
        if name.startswith(prefix):
            return idx, name[len(prefix) :].encode("utf-8", "surrogateescape")
    return 0, name.encode("utf-8", "surrogateescape")


def join_name(index: int, suffix: bytes) -> str:
    return _PREFIX_BY_INDEX.get(index, "") + suffix.decode("utf-8", "surrogateescape")


def xattr_entry_hash(name: bytes, value: bytes) -> int:
    """ext2fs_ext_attr_hash_entry: name bytes as unsigned chars, value as LE u32 words.

    Unsigned like e2fsprogs >= 1.47 and Linux >= 6.2 (older x86 builds used signed chars;
    both e2fsck and the kernel still accept that legacy hash, see
    :func:`xattr_entry_hash_signed`).
    """
    h = 0
    for c in name:
        h = ((h << 5) & _M) ^ (h >> 27) ^ c
    return _value_hash(h, value)


def xattr_entry_hash_signed(name: bytes, value: bytes) -> int:
    """The legacy signed-char variant (``ext2fs_ext_attr_hash_entry_signed``), for readers."""
    h = 0
    for c in name:
        if c >= 0x80:
            c = (c - 0x100) & _M
        h = ((h << 5) & _M) ^ (h >> 27) ^ c
    return _value_hash(h, value)


def _value_hash(h: int, value: bytes) -> int:
    if value:
        padded = value + bytes(_value_size(len(value)) - len(value))
        for (w,) in struct.iter_unpack("<I", padded):
            h = ((h << 16) & _M) ^ (h >> 16) ^ w
    return h


def xattr_block_hash(entry_hashes: Sequence[int]) -> int:
    """ext2fs_ext_attr_block_rehash: 0 if any entry hash is 0 (block not shareable)."""
    h = 0
    for eh in entry_hashes:
        if eh == 0:
            return 0
        h = ((h << 16) & _M) ^ (h >> 16) ^ eh
    return h


def acl_xattr_to_disk(value: bytes) -> bytes:
    """POSIX ACL in xattr format (v2, 8-byte entries) → ext4 disk format (v1, short entries)."""
    if len(value) < _ACL_HEADER.size or (len(value) - _ACL_HEADER.size) % _ACL_XATTR_ENTRY.size:
        raise XattrError(f"POSIX ACL xattr of {len(value)} bytes is not a v2 header plus 8-byte entries")
    (version,) = _ACL_HEADER.unpack_from(value)
    if version != POSIX_ACL_XATTR_VERSION:
        raise XattrError(f"POSIX ACL xattr version {version}, expected {POSIX_ACL_XATTR_VERSION}")
    out = [_ACL_HEADER.pack(EXT4_ACL_VERSION)]
    count = 0
    for tag, perm, ident in _ACL_XATTR_ENTRY.iter_unpack(value[_ACL_HEADER.size :]):
        count += 1
        if tag in _SHORT_TAGS:
            out.append(_ACL_DISK_SHORT.pack(tag, perm))
        elif tag in _ID_TAGS:
            out.append(_ACL_DISK_ENTRY.pack(tag, perm, ident))
        else:
            raise XattrError(f"POSIX ACL entry {count} has unknown tag {tag:#x}")
    if count == 0:
        raise XattrError("POSIX ACL xattr has no entries")
    return b"".join(out)


def acl_disk_to_xattr(value: bytes) -> bytes:
    """ext4 on-disk ACL (v1) → xattr format (v2); short entries get ACL_UNDEFINED_ID like the kernel."""
    if len(value) < _ACL_HEADER.size or _ACL_HEADER.unpack_from(value)[0] != EXT4_ACL_VERSION:
        raise XattrError("on-disk POSIX ACL has a bad header")
    out = [_ACL_HEADER.pack(POSIX_ACL_XATTR_VERSION)]
    off = _ACL_HEADER.size
    while off < len(value):
        if off + _ACL_DISK_SHORT.size > len(value):
            raise XattrError(f"on-disk POSIX ACL truncated at offset {off}")
        tag, perm = _ACL_DISK_SHORT.unpack_from(value, off)
        if tag in _SHORT_TAGS:
            out.append(_ACL_XATTR_ENTRY.pack(tag, perm, ACL_UNDEFINED_ID))
            off += _ACL_DISK_SHORT.size
        elif tag in _ID_TAGS:
            if off + _ACL_DISK_ENTRY.size > len(value):
                raise XattrError(f"on-disk POSIX ACL truncated at offset {off}")
            out.append(_ACL_XATTR_ENTRY.pack(*_ACL_DISK_ENTRY.unpack_from(value, off)))
            off += _ACL_DISK_ENTRY.size
        else:
            raise XattrError(f"on-disk POSIX ACL entry at offset {off} has unknown tag {tag:#x}")
    return b"".join(out)


@dataclass(frozen=True)
class _Attr:
    index: int
    suffix: bytes
    value: bytes

    @property
    def space(self) -> int:
        return _entry_len(len(self.suffix)) + _value_size(len(self.value))


def _prepare(attrs: Mapping[str, bytes]) -> list[_Attr]:
    out = []
    for name, value in attrs.items():
        index, suffix = split_name(name)
        if not suffix and index == 0:
            raise XattrError("xattr with an empty name")
        if len(suffix) > 255:
            raise XattrError(f"xattr name {name[:60]!r}... is longer than 255 bytes after its prefix")
        value = bytes(value)
        if name in ACL_NAMES:
            try:
                value = acl_xattr_to_disk(value)
            except XattrError as exc:
                raise XattrError(f"xattr {name}: {exc}") from None
        out.append(_Attr(index, suffix, value))
    return out


def _write_area(attrs: Sequence[_Attr], size: int, value_base: int, with_hash: bool) -> tuple[bytes, list[int]]:
    """write_xattrs_to_buffer: entries from the start, values from the end; returns (area, e_hashes)."""
    area = bytearray(size)
    pos = 0
    end = size
    hashes = []
    for a in attrs:
        end -= _value_size(len(a.value))
        area[end : end + len(a.value)] = a.value
        e_hash = xattr_entry_hash(a.suffix, a.value) if with_hash else 0
        hashes.append(e_hash)
        EXT4_XATTR_ENTRY.pack_into(area, pos, len(a.suffix), a.index, end + value_base, 0, len(a.value), e_hash)
        area[pos + EXT4_XATTR_ENTRY.size : pos + EXT4_XATTR_ENTRY.size + len(a.suffix)] = a.suffix
        pos += _entry_len(len(a.suffix))
    if pos + 4 > end:
        raise AssertionError("xattr area overflow")
    return bytes(area), hashes


def pack_xattrs(
    attrs: Mapping[str, bytes], *, ibody_size: int, block_size: int = 4096, rehash: bool = True
) -> XattrLayout:
    """Lay out ``attrs`` like libext2fs: in-inode first, the rest in one external block."""
    if ibody_size < 0:
        raise ValueError("ibody_size must be >= 0")
    if not attrs:
        return XattrLayout(bytes(ibody_size), None)
    prepared = _prepare(attrs)
    has_ibody = ibody_size > EXT4_XATTR_IBODY_HEADER.size
    # ext2fs_xattr_set: magic and the final null entry are reserved in each area.
    ibody_free = ibody_size - 2 * 4 if has_ibody else 0
    block_free = block_size - EXT4_XATTR_HEADER.size - 4
    in_inode: list[_Attr] = []
    in_block: list[_Attr] = []
    for a in prepared:
        if a.space <= ibody_free:
            in_inode.append(a)
            ibody_free -= a.space
        elif a.space <= block_free:
            in_block.append(a)
            block_free -= a.space
        else:
            name = join_name(a.index, a.suffix)
            raise XattrError(
                f"xattr {name} ({len(a.value)}-byte value) does not fit: the inode and one "
                f"{block_size}-byte xattr block are full"
            )
    if has_ibody:
        storage, _ = _write_area(in_inode, ibody_size - 4, 0, False)
        ibody = EXT4_XATTR_IBODY_HEADER.pack(EXT4_XATTR_MAGIC) + storage
    else:
        ibody = bytes(ibody_size)
    block = None
    if in_block:
        in_block.sort(key=lambda a: (a.index, len(a.suffix), a.suffix))
        hsize = EXT4_XATTR_HEADER.size
        storage, hashes = _write_area(in_block, block_size - hsize, hsize, True)
        h_hash = xattr_block_hash(hashes) if rehash else 0
        block = EXT4_XATTR_HEADER.pack(EXT4_XATTR_MAGIC, 1, 1, h_hash, 0) + storage
    return XattrLayout(ibody, block)


def _parse_area(
    data: bytes, entries_at: int, value_base: int, where: str, out: dict[str, bytes]
) -> None:
    """Read entries starting at ``entries_at``; value offsets are relative to ``value_base``."""
    pos = entries_at
    while True:
        if pos + 4 > len(data):
            raise XattrError(f"{where}: entry list runs past the end at offset {pos}")
        if data[pos : pos + 4] == b"\0\0\0\0":
            return
        if pos + EXT4_XATTR_ENTRY.size > len(data):
            raise XattrError(f"{where}: truncated entry at offset {pos}")
        name_len, index, offs, inum, size, _hash = EXT4_XATTR_ENTRY.unpack_from(data, pos)
        name_end = pos + EXT4_XATTR_ENTRY.size + name_len
        if name_end > len(data):
            raise XattrError(f"{where}: entry name at offset {pos} runs past the end")
        if inum:
            raise XattrError(f"{where}: entry at offset {pos} uses an ea_inode (not supported)")
        start = value_base + offs
        if size and (start < name_end or start + size > len(data)):
            raise XattrError(f"{where}: entry at offset {pos} has value {offs}+{size} out of bounds")
        name = join_name(index, bytes(data[pos + EXT4_XATTR_ENTRY.size : name_end]))
        value = bytes(data[start : start + size])
        if name in ACL_NAMES:
            value = acl_disk_to_xattr(value)
        if name in out:
            raise XattrError(f"{where}: duplicate xattr {name}")
        out[name] = value
        pos += _entry_len(name_len)


def parse_xattrs(ibody: bytes | None, block: bytes | None) -> dict[str, bytes]:
    """All xattrs of an inode: in-inode ones (in order) then the block's; ACLs in xattr format."""
    out: dict[str, bytes] = {}
    if ibody is not None and len(ibody) >= 8:
        (magic,) = EXT4_XATTR_IBODY_HEADER.unpack_from(ibody)
        if magic == EXT4_XATTR_MAGIC:
            _parse_area(ibody, 4, 4, "in-inode xattrs", out)
    if block is not None:
        if len(block) < EXT4_XATTR_HEADER.size + 4:
            raise XattrError(f"xattr block of {len(block)} bytes is too short")
        magic, _refcount, blocks, _h, _c = EXT4_XATTR_HEADER.unpack_from(block)
        if magic != EXT4_XATTR_MAGIC or blocks != 1:
            raise XattrError(f"xattr block has bad header (magic {magic:#x}, h_blocks {blocks})")
        _parse_area(block, EXT4_XATTR_HEADER.size, 0, "xattr block", out)
    return out
