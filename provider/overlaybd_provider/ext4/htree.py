"""htree (dir_index) directories: dx root / dx node blocks and hash-ordered leaves.

Public API (pure, no I/O)::

    build_htree(self_ino: int, parent_ino: int, entries: Sequence[DirEntry], *,
                hash_seed: Sequence[int] | None, hash_version: int = 1, signed_hash: bool = True,
                block_size: int = 4096) -> list[bytes]
    parse_dx_index(blocks: Sequence[bytes], *, block_size: int = 4096) -> DxIndex
    looks_like_dx_root(block: bytes, block_size: int) -> bool
    root_limit(block_size) -> int   # (block_size - 32) / 8 = 508 for 4 KiB
    node_limit(block_size) -> int   # (block_size - 8) / 8 = 511 for 4 KiB

Layout produced (ext4 disk layout doc, "Hash Tree Directories"; e2fsck pass2 checks it):
block 0 is the dx root ('.' rec_len 12, '..' rec_len block_size - 12, dx_root_info with
info_length 8, then count/limit and the dx entries). With up to ``root_limit`` leaves the
root points straight at leaves 1..L (indirect_levels 0); beyond that (up to root_limit *
node_limit leaves, i.e. 259 588 for 4 KiB) leaves are blocks 1..L and dx node blocks L+1..L+N
follow them (indirect_levels 1), like e2fsck's rehash. Leaves hold the entries sorted by
(major hash, minor hash, name) and are filled up to the block end. An index entry's hash is
the first hash of its leaf; when that hash equals the previous leaf's last hash, bit 0 is set
(the kernel's "continued collision" marker), so lookups continue into the next leaf.
Without ``large_dir`` no third level exists: bigger directories raise DirectoryLimitError.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from overlaybd_provider.ext4.dirent import (
    DIRENT_HEADER_LEN,
    EXT2_FT_DIR,
    EXT4_DIR_ENTRY_2,
    DirEntry,
)
from overlaybd_provider.ext4.dirhash import dirhash_many
from overlaybd_provider.ext4.errors import DirectoryCorruptError, DirectoryLimitError

# struct dx_root_info (after the fake '.' and '..' records, offset 24):
# reserved_zero, hash_version, info_length, indirect_levels, unused_flags.
DX_ROOT_INFO = struct.Struct("<IBBBB")
DX_ROOT_INFO_OFFSET = 24
# struct dx_countlimit (overlays the first dx_entry's hash): limit, count; then its block.
DX_COUNTLIMIT = struct.Struct("<HHI")
# struct dx_entry: hash, block.
DX_ENTRY = struct.Struct("<II")
DX_ROOT_ENTRIES_OFFSET = 32
DX_NODE_ENTRIES_OFFSET = 8
DOT_REC_LEN = 12  # '.' record in the dx root; '..' then spans the rest of the block
DX_BLOCK_MASK = 0x0FFFFFFF  # EXT4_DX_BLOCK_MASK: high bits are reserved
MAX_INDIRECT_LEVELS = 1  # without large_dir: root + one node level


def root_limit(block_size: int) -> int:
    return (block_size - DX_ROOT_ENTRIES_OFFSET) // DX_ENTRY.size


def node_limit(block_size: int) -> int:
    return (block_size - DX_NODE_ENTRIES_OFFSET) // DX_ENTRY.size


@dataclass(frozen=True)
class DxIndex:
    """What the index blocks of an htree directory say (for checks and tests)."""

    hash_version: int
    indirect_levels: int
    node_blocks: list[int]
    # (hash as stored incl. the collision bit, leaf logical block), in index order
    leaves: list[tuple[int, int]]


def looks_like_dx_root(block: bytes, block_size: int) -> bool:
    """Block 0 of an htree directory: '.'(12) + '..'(block_size-12) + a plausible dx_root_info."""
    if len(block) != block_size:
        return False
    _ino, rec0, nlen0, _ft = EXT4_DIR_ENTRY_2.unpack_from(block, 0)
    _ino, rec1, nlen1, _ft = EXT4_DIR_ENTRY_2.unpack_from(block, DOT_REC_LEN)
    if rec0 != 12 or nlen0 != 1 or rec1 != block_size - 12 or nlen1 != 2:
        return False
    reserved, _hv, info_length, levels, _flags = DX_ROOT_INFO.unpack_from(block, DX_ROOT_INFO_OFFSET)
    return reserved == 0 and info_length == 8 and levels <= MAX_INDIRECT_LEVELS


def _leaf_records(
    entries: Sequence[DirEntry],
    hash_seed: Sequence[int] | None,
    hash_version: int,
    signed_hash: bool,
    block_size: int,
) -> tuple[list[bytes], list[int]]:
    """Sorted entries packed into full leaves; returns (leaf blocks, index hash of each leaf)."""
    names = [e.name for e in entries]
    hashes = dirhash_many(names, version=hash_version, seed=hash_seed, signed=signed_hash)
    keys = [(major << 32) | minor for major, minor in hashes]
    order = sorted(range(len(entries)), key=keys.__getitem__)
    if len(set(keys)) != len(keys):
        order = _break_ties(order, keys, names)
    leaves: list[bytes] = []
    leaf_hashes: list[int] = []
    parts: list[bytes] = []
    structs = _RECORD_STRUCTS
    used = 0
    prev_hash = -1
    last = -1
    for i in order:
        e = entries[i]
        name = e.name
        nlen = len(name)
        rec_len = (DIRENT_HEADER_LEN + 3 + nlen) & ~3
        major = keys[i] >> 32
        if used + rec_len > block_size or last < 0:
            if last >= 0:
                parts[-1] = _record(entries[last], rec_len=len(parts[-1]) + block_size - used)
                leaves.append(b"".join(parts))
                parts = []
                used = 0
            leaf_hashes.append(major | 1 if major == prev_hash else major)
        st = structs.get(rec_len) or _record_struct(rec_len)
        parts.append(st.pack(e.inode, rec_len, nlen, e.file_type, name))
        used += rec_len
        prev_hash = major
        last = i
    parts[-1] = _record(entries[last], rec_len=len(parts[-1]) + block_size - used)
    leaves.append(b"".join(parts))
    return leaves, leaf_hashes


_RECORD_STRUCTS: dict[int, struct.Struct] = {}


def _record_struct(rec_len: int) -> struct.Struct:
    """ext4_dir_entry_2 plus its name zero-padded to ``rec_len`` (cached per length)."""
    st = _RECORD_STRUCTS.get(rec_len)
    if st is None:
        st = _RECORD_STRUCTS[rec_len] = struct.Struct(f"<IHBB{rec_len - DIRENT_HEADER_LEN}s")
    return st


def _record(e: DirEntry, *, rec_len: int) -> bytes:
    return _record_struct(rec_len).pack(e.inode, rec_len, len(e.name), e.file_type, e.name)


def _break_ties(order: list[int], keys: list[int], names: list[bytes]) -> list[int]:
    """Within runs of equal (major, minor) order entries by name, like e2fsck's hash_cmp."""
    out: list[int] | None = None
    i, n = 0, len(order)
    while i < n:
        j = i + 1
        k = keys[order[i]]
        while j < n and keys[order[j]] == k:
            j += 1
        if j - i > 1:
            if out is None:
                out = list(order)
            out[i:j] = sorted(order[i:j], key=names.__getitem__)
        i = j
    return order if out is None else out


def _index_block(prefix: bytes, limit: int, targets: Sequence[tuple[int, int]], block_size: int) -> bytes:
    """``prefix`` + count/limit + dx entries for ``targets`` = [(hash, block)...]; entry 0's hash is implicit."""
    body = [prefix, DX_COUNTLIMIT.pack(limit, len(targets), targets[0][1])]
    body.extend(DX_ENTRY.pack(h, b) for h, b in targets[1:])
    raw = b"".join(body)
    return raw + bytes(block_size - len(raw))


def build_htree(
    self_ino: int,
    parent_ino: int,
    entries: Sequence[DirEntry],
    *,
    hash_seed: Sequence[int] | None,
    hash_version: int = 1,
    signed_hash: bool = True,
    block_size: int = 4096,
) -> list[bytes]:
    """Blocks of an htree directory (root first); entries must already be validated and unique."""
    if not entries:
        raise DirectoryLimitError("an htree directory needs at least one entry")
    leaves, leaf_hashes = _leaf_records(entries, hash_seed, hash_version, signed_hash, block_size)
    nleaves = len(leaves)
    rlimit, nlimit = root_limit(block_size), node_limit(block_size)
    dots = (
        EXT4_DIR_ENTRY_2.pack(self_ino, 12, 1, EXT2_FT_DIR)
        + b".\0\0\0"
        + EXT4_DIR_ENTRY_2.pack(parent_ino, block_size - 12, 2, EXT2_FT_DIR)
        + b"..\0\0"
    )
    if nleaves <= rlimit:
        info = DX_ROOT_INFO.pack(0, hash_version, 8, 0, 0)
        targets = [(leaf_hashes[i], 1 + i) for i in range(nleaves)]
        return [_index_block(dots + info, rlimit, targets, block_size), *leaves]
    nnodes = -(-nleaves // nlimit)
    if nnodes > rlimit:
        raise DirectoryLimitError(
            f"directory with {len(entries)} entries needs {nleaves} leaf blocks; "
            f"ext4 without large_dir holds at most {rlimit * nlimit}"
        )
    info = DX_ROOT_INFO.pack(0, hash_version, 8, 1, 0)
    fake = EXT4_DIR_ENTRY_2.pack(0, block_size, 0, 0)
    nodes: list[bytes] = []
    root_targets: list[tuple[int, int]] = []
    for n in range(nnodes):
        first = n * nlimit
        chunk = range(first, min(first + nlimit, nleaves))
        nodes.append(_index_block(fake, nlimit, [(leaf_hashes[i], 1 + i) for i in chunk], block_size))
        root_targets.append((leaf_hashes[first], 1 + nleaves + n))
    return [_index_block(dots + info, rlimit, root_targets, block_size), *leaves, *nodes]


def _read_index(block: bytes, offset: int, expect_limit: int, where: str) -> list[tuple[int, int]]:
    limit, count, block0 = DX_COUNTLIMIT.unpack_from(block, offset)
    if limit != expect_limit:
        raise DirectoryCorruptError(f"{where}: dx limit {limit}, expected {expect_limit}")
    if not 0 < count <= limit:
        raise DirectoryCorruptError(f"{where}: dx count {count} outside 1..{limit}")
    out = [(0, block0 & DX_BLOCK_MASK)]
    for i in range(1, count):
        h, b = DX_ENTRY.unpack_from(block, offset + i * DX_ENTRY.size)
        out.append((h, b & DX_BLOCK_MASK))
    return out


def parse_dx_index(blocks: Sequence[bytes], *, block_size: int = 4096) -> DxIndex:
    """Walk the dx root (and nodes) of an htree directory; checks limits, counts and block numbers."""
    if not blocks or not looks_like_dx_root(blocks[0], block_size):
        raise DirectoryCorruptError("directory block 0 is not an htree root")
    _r, hash_version, _il, levels, _f = DX_ROOT_INFO.unpack_from(blocks[0], DX_ROOT_INFO_OFFSET)
    top = _read_index(blocks[0], DX_ROOT_ENTRIES_OFFSET, root_limit(block_size), "dx root")
    nblocks = len(blocks)

    def check(b: int, where: str) -> None:
        if not 0 < b < nblocks:
            raise DirectoryCorruptError(f"{where}: dx entry points to block {b} of {nblocks}")

    if levels == 0:
        for _h, b in top:
            check(b, "dx root")
        return DxIndex(hash_version, 0, [], top)
    leaves: list[tuple[int, int]] = []
    nodes: list[int] = []
    for h, b in top:
        check(b, "dx root")
        nodes.append(b)
        node = blocks[b]
        inode, rec_len, _nl, _ft = EXT4_DIR_ENTRY_2.unpack_from(node, 0)
        if inode != 0 or rec_len != block_size:
            raise DirectoryCorruptError(f"dx node block {b}: not an empty record spanning the block")
        sub = _read_index(node, DX_NODE_ENTRIES_OFFSET, node_limit(block_size), f"dx node block {b}")
        for j, (h2, b2) in enumerate(sub):
            check(b2, f"dx node block {b}")
            leaves.append((h if j == 0 else h2, b2))
    return DxIndex(hash_version, levels, nodes, leaves)
