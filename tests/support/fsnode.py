"""The observable state of one path, shared by the image reader and the tar model."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Node:
    """What a test can observe about one path."""

    type: str  # "dir", "file", "symlink", "chr", "blk", "fifo", "sock"
    mode: int  # permission bits incl. setuid/setgid/sticky (mode & 0o7777)
    uid: int
    gid: int
    mtime: int  # seconds
    mtime_ns: int = 0
    size: int | None = None  # files, symlinks (target length), devices/fifos (0); None for dirs
    sha256: str | None = None  # regular files
    target: bytes | None = None  # symlinks
    rdev: tuple[int, int] | None = None  # char/block devices
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    hardlinks: tuple[str, ...] = ()
    inode: int | None = field(default=None, compare=False)  # informational (actual side)


_ACL_SHORT_TAGS = (0x01, 0x04, 0x10, 0x20)


def canonical_xattr(name: str, value: bytes) -> bytes:
    """POSIX ACL values (xattr format v2) with short-entry ids normalised to 0xffffffff."""
    if name not in ("system.posix_acl_access", "system.posix_acl_default"):
        return value
    if len(value) < 4 or (len(value) - 4) % 8:
        return value
    out = [value[:4]]
    for tag, perm, ident in struct.iter_unpack("<HHI", value[4:]):
        out.append(struct.pack("<HHI", tag, perm, 0xFFFFFFFF if tag in _ACL_SHORT_TAGS else ident))
    return b"".join(out)
