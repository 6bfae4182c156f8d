"""Extended attributes for the checker: structure and hash checks as e2fsck's, values for comparison.

Values are decoded by ``ext4.xattr.parse_xattrs`` (name prefixes, POSIX ACLs back to the xattr
format); this module adds what a reader that trusts nothing needs: entry and value bounds,
overlapping values, ``e_value_inum``, the entry hashes (unsigned or legacy signed, like
e2fsck 1.47; in-inode entries may carry 0) and the block header.
"""

from __future__ import annotations

import itertools
import struct

from overlaybd_provider.ext4.errors import XattrError
from overlaybd_provider.ext4.xattr import (
    EXT4_XATTR_ENTRY,
    EXT4_XATTR_HEADER,
    EXT4_XATTR_MAGIC,
    parse_xattrs,
    xattr_entry_hash,
    xattr_entry_hash_signed,
)
from overlaybd_provider.verify.ext4read import Bad

_MAGIC = struct.Struct("<I")
ACL_NAMES = ("system.posix_acl_access", "system.posix_acl_default")
_ACL_SHORT_TAGS = (0x01, 0x04, 0x10, 0x20)


def _check_area(data: bytes, entries_at: int, value_base: int, where: str, in_inode: bool, bad: Bad) -> None:
    pos = entries_at
    found: list[tuple[int, int, int, bytes, int]] = []  # value start, size, hash, name suffix, entry pos
    while True:
        if pos + 4 > len(data):
            bad(f"{where}: the entry list runs past the end")
            return
        if data[pos:pos + 4] == b"\0\0\0\0":
            break
        if pos + EXT4_XATTR_ENTRY.size > len(data):
            bad(f"{where}: truncated entry at offset {pos}")
            return
        name_len, _index, offs, inum, size, e_hash = EXT4_XATTR_ENTRY.unpack_from(data, pos)
        name_end = pos + EXT4_XATTR_ENTRY.size + name_len
        if name_end > len(data):  # name_len 0 is valid: POSIX ACLs have an empty name suffix
            bad(f"{where}: entry at offset {pos} has a bad name length {name_len}")
            return
        if inum:
            bad(f"{where}: entry at offset {pos} uses an xattr inode ({inum})")
            return
        found.append((value_base + offs, size, e_hash, data[pos + EXT4_XATTR_ENTRY.size:name_end], pos))
        pos += (name_end - pos + 3) & ~3
    table_end = pos + 4
    spans: list[tuple[int, int]] = []
    for start, size, e_hash, name, epos in found:
        if size == 0:
            continue
        if start < table_end or start + size > len(data):
            bad(f"{where}: value of the entry at offset {epos} ({start}+{size}) is outside the value area")
            continue
        spans.append((start, start + size))
        if e_hash == 0 and in_inode:
            continue
        value = data[start:start + size]
        if e_hash not in (xattr_entry_hash(name, value), xattr_entry_hash_signed(name, value)):
            bad(f"{where}: entry {name!r} has hash {e_hash:#010x}, which does not match its value")
    spans.sort()
    for (_a, b), (c, _d) in itertools.pairwise(spans):
        if c < b:
            bad(f"{where}: xattr values overlap at offset {c}")
            break


def check_ibody(ino: int, ibody: bytes, bad: Bad) -> None:
    if len(ibody) >= 8 and _MAGIC.unpack_from(ibody)[0] == EXT4_XATTR_MAGIC:
        _check_area(ibody, 4, 4, f"inode {ino} in-inode xattrs", True, bad)


def check_block(blk: int, data: bytes, bad: Bad) -> int | None:
    """Checks an xattr block; returns its ``h_refcount`` (None when the header is bad)."""
    magic, refcount, nblocks, _h, _c = EXT4_XATTR_HEADER.unpack_from(data)
    if magic != EXT4_XATTR_MAGIC or nblocks != 1:
        bad(f"xattr block {blk} has a bad header (magic {magic:#x}, h_blocks {nblocks})")
        return None
    _check_area(data, EXT4_XATTR_HEADER.size, 0, f"xattr block {blk}", False, bad)
    return refcount


def canonical(name: str, value: bytes) -> bytes:
    """POSIX ACL values with the ids of short entries as the kernel reports them (0xffffffff)."""
    if name not in ACL_NAMES or len(value) < 4 or (len(value) - 4) % 8:
        return value
    out = [value[:4]]
    for tag, perm, ident in struct.iter_unpack("<HHI", value[4:]):
        out.append(struct.pack("<HHI", tag, perm, 0xFFFFFFFF if tag in _ACL_SHORT_TAGS else ident))
    return b"".join(out)


def read_values(ibody: bytes, block: bytes | None) -> dict[str, bytes] | None:
    """All xattrs, canonical; None when they cannot be decoded (the checker reports why)."""
    try:
        values = parse_xattrs(ibody or None, block)
    except XattrError:
        return None
    return {k: canonical(k, v) for k, v in values.items()}
