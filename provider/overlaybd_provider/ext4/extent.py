"""ext4 extent trees: read any depth, build depth 0..n from a list of physical runs.

Layout: ``ext4_extent_header`` (12 B) then 12-byte entries, in ``i_block`` (4 entries) or in a
whole tree block ((4096-12)/12 = 340 entries; no checksum tail without metadata_csum).
Initialized extents cover at most 32768 blocks (kernel ``EXT_INIT_MAX_LEN``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from overlaybd_provider.ext4.errors import Ext4Error
from overlaybd_provider.ext4.layout import BLOCK_SIZE

EXT4_EXT_MAGIC = 0xF30A
EXTENT_HEADER = struct.Struct("<HHHHI")  # eh_magic, eh_entries, eh_max, eh_depth, eh_generation
EXTENT = struct.Struct("<IHHI")  # ee_block, ee_len, ee_start_hi, ee_start_lo
EXTENT_IDX = struct.Struct("<IIHH")  # ei_block, ei_leaf_lo, ei_leaf_hi, ei_unused
EXT_INIT_MAX_LEN = 32768
IN_INODE_ENTRIES = 4
BLOCK_ENTRIES = (BLOCK_SIZE - EXTENT_HEADER.size) // EXTENT.size  # 340

Extent = tuple[int, int, int]  # (logical block, physical block, length)


class CorruptExtentTree(Ext4Error):
    """A lower layer's extent tree cannot be parsed."""


def read_extent_tree(i_block: bytes, read_block: Callable[[int], bytes],
                     ino: int = 0) -> tuple[list[Extent], list[int]]:
    """All leaf extents (logical order) and the tree blocks holding them."""
    extents: list[Extent] = []
    tree_blocks: list[int] = []

    def walk(node: bytes, depth_expected: int | None) -> None:
        magic, entries, _max, depth, _gen = EXTENT_HEADER.unpack_from(node, 0)
        if magic != EXT4_EXT_MAGIC or (depth_expected is not None and depth != depth_expected):
            raise CorruptExtentTree(f"inode {ino}: bad extent header (magic {magic:#x}, depth {depth})")
        for i in range(entries):
            off = EXTENT_HEADER.size + i * EXTENT.size
            if depth == 0:
                lblk, length, hi, lo = EXTENT.unpack_from(node, off)
                if length > EXT_INIT_MAX_LEN:
                    length -= EXT_INIT_MAX_LEN
                extents.append((lblk, lo | (hi << 32), length))
            else:
                _lblk, lo, hi, _unused = EXTENT_IDX.unpack_from(node, off)
                child = lo | (hi << 32)
                tree_blocks.append(child)
                walk(read_block(child), depth - 1)

    walk(i_block, None)
    return extents, tree_blocks


def split_runs(runs: Sequence[tuple[int, int]]) -> list[Extent]:
    """Physical runs (start, count) of a file in logical order -> extents of <= 32768 blocks."""
    out: list[Extent] = []
    lblk = 0
    for start, count in runs:
        while count > 0:
            n = min(count, EXT_INIT_MAX_LEN)
            if out and out[-1][0] + out[-1][2] == lblk and out[-1][1] + out[-1][2] == start \
                    and out[-1][2] + n <= EXT_INIT_MAX_LEN:
                prev = out[-1]
                out[-1] = (prev[0], prev[1], prev[2] + n)
            else:
                out.append((lblk, start, n))
            lblk += n
            start += n
            count -= n
    return out


def _node(entries: list[bytes], max_entries: int, depth: int, size: int) -> bytes:
    body = EXTENT_HEADER.pack(EXT4_EXT_MAGIC, len(entries), max_entries, depth, 0) + b"".join(entries)
    return body + bytes(size - len(body))


def tree_blocks_needed(n_extents: int) -> int:
    """Number of tree blocks a file with ``n_extents`` extents needs."""
    total, level = 0, n_extents
    while level > IN_INODE_ENTRIES:
        level = -(-level // BLOCK_ENTRIES)
        total += level
    return total


def build_extent_tree(extents: Sequence[Extent],
                      tree_blocks: Sequence[int]) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(60-byte i_block, [(block, content)]) for the extents, using the given tree blocks."""
    entries = [EXTENT.pack(lb, ln, pb >> 32, pb & 0xFFFFFFFF) for lb, pb, ln in extents]
    firsts = [lb for lb, _pb, _ln in extents]
    depth = 0
    written: list[tuple[int, bytes]] = []
    free = list(tree_blocks)
    while len(entries) > IN_INODE_ENTRIES:
        next_entries: list[bytes] = []
        next_firsts: list[int] = []
        for i in range(0, len(entries), BLOCK_ENTRIES):
            blk = free.pop(0)
            written.append((blk, _node(entries[i:i + BLOCK_ENTRIES], BLOCK_ENTRIES, depth, BLOCK_SIZE)))
            next_entries.append(EXTENT_IDX.pack(firsts[i], blk & 0xFFFFFFFF, blk >> 32, 0))
            next_firsts.append(firsts[i])
        entries, firsts = next_entries, next_firsts
        depth += 1
    if free:
        raise ValueError("more extent tree blocks than needed")
    return _node(entries, IN_INODE_ENTRIES, depth, 60), written
