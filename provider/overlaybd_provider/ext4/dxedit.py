"""In-place htree edits: put a name into the leaf the index selects, splitting a full leaf.

Mirrors the kernel's ``ext4_dx_add_entry`` for the cases that need no new index level: the
leaf's records (plus the new one) are sorted by hash and split in two halves, the upper half
moves to a new block appended to the directory, and a ``(hash | continued, block)`` entry is
inserted after the old leaf's entry in the dx root or node that points to it. When that index
block is full (or a half would not fit) the edit is refused and the caller rebuilds the
whole directory. Layout constants: :mod:`.htree`.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Sequence

from overlaybd_provider.ext4.directory import (
    dirent_rec_len,
    iter_block_records,
    pack_dirent,
    pack_linear_block,
)
from overlaybd_provider.ext4.dirhash import dirhash_many
from overlaybd_provider.ext4.htree import (
    DX_BLOCK_MASK,
    DX_COUNTLIMIT,
    DX_ENTRY,
    DX_NODE_ENTRIES_OFFSET,
    DX_ROOT_ENTRIES_OFFSET,
    DX_ROOT_INFO,
    DX_ROOT_INFO_OFFSET,
)
from overlaybd_provider.ext4.layout import BLOCK_SIZE

_U16 = struct.Struct("<H")


def insert_record(buf: bytearray, name: bytes, ino: int, ft: int) -> bool:
    """Put a record into free space of a linear/leaf block (first fit); False if no room."""
    need = dirent_rec_len(len(name))
    for off, child, rname, _ft, rec_len in iter_block_records(bytes(buf), -1, BLOCK_SIZE):
        used = dirent_rec_len(len(rname)) if child else 0
        if rec_len - used >= need:
            if child:
                _U16.pack_into(buf, off + 4, used)
                off, rec_len = off + used, rec_len - used
            buf[off:off + rec_len] = pack_dirent(ino, rec_len, name, ft)
            return True
    return False


class DxEditor:
    """Edits one htree directory through ``getbuf(logical block) -> bytearray`` (cached by caller)."""

    def __init__(self, getbuf: Callable[[int], bytearray], alloc_block: Callable[[], int], *,
                 seed: Sequence[int], signed: bool) -> None:
        self._getbuf, self._alloc = getbuf, alloc_block
        root = getbuf(0)
        _r, self.hash_version, _il, self.levels, _f = DX_ROOT_INFO.unpack_from(root, DX_ROOT_INFO_OFFSET)
        self._seed, self._signed = seed, signed

    def _hashes(self, names: Sequence[bytes]) -> list[tuple[int, int]]:
        return dirhash_many(names, version=self.hash_version, seed=self._seed, signed=self._signed)

    def _entries(self, idx: int, base: int) -> tuple[list[tuple[int, int, int]], int, int]:
        buf = self._getbuf(idx)
        limit, count, block0 = DX_COUNTLIMIT.unpack_from(buf, base)
        out = [(0, block0 & DX_BLOCK_MASK, base)]
        for i in range(1, count):
            h, b = DX_ENTRY.unpack_from(buf, base + i * DX_ENTRY.size)
            out.append((h, b & DX_BLOCK_MASK, base + i * DX_ENTRY.size))
        return out, count, limit

    def _pointers(self) -> list[tuple[int, int, int, int]]:
        """(hash, leaf, holder block, entry offset in holder) for every leaf, in hash order."""
        top, _c, _l = self._entries(0, DX_ROOT_ENTRIES_OFFSET)
        if self.levels == 0:
            return [(h, b, 0, off) for h, b, off in top]
        out = []
        for h, node, _off in top:
            sub, _c, _l = self._entries(node, DX_NODE_ENTRIES_OFFSET)
            out.extend((h if k == 0 else h2, b2, node, off2) for k, (h2, b2, off2) in enumerate(sub))
        return out

    def insert(self, name: bytes, ino: int, ft: int, major: int) -> bool:
        ptrs = self._pointers()
        i = max(0, bisect.bisect_right([p[0] for p in ptrs], major) - 1)  # like dx_probe
        _h, leaf, holder, off = ptrs[i]
        buf = self._getbuf(leaf)
        if insert_record(buf, name, ino, ft):
            return True
        return self._split(leaf, holder, off, name, ino, ft)

    def _split(self, leaf: int, holder: int, off: int, name: bytes, ino: int, ft: int) -> bool:
        base = DX_ROOT_ENTRIES_OFFSET if holder == 0 else DX_NODE_ENTRIES_OFFSET
        hbuf = self._getbuf(holder)
        limit, count, _b0 = DX_COUNTLIMIT.unpack_from(hbuf, base)
        if count >= limit:
            return False
        buf = self._getbuf(leaf)
        recs = [(n, c, t) for _o, c, n, t, _l in iter_block_records(bytes(buf), leaf, BLOCK_SIZE) if c]
        recs.append((name, ino, ft))
        hashes = self._hashes([r[0] for r in recs])
        order = sorted(range(len(recs)), key=lambda k: (hashes[k][0], hashes[k][1], recs[k][0]))
        split = len(order) // 2
        low, high = [recs[k] for k in order[:split]], [recs[k] for k in order[split:]]
        if any(sum(dirent_rec_len(len(r[0])) for r in half) > BLOCK_SIZE for half in (low, high)) or not low:
            return False
        h2 = hashes[order[split]][0]
        continued = 1 if hashes[order[split - 1]][0] == h2 else 0
        new = self._alloc()
        buf[:] = pack_linear_block(low, BLOCK_SIZE)
        self._getbuf(new)[:] = pack_linear_block(high, BLOCK_SIZE)
        pos = off + DX_ENTRY.size
        end = base + count * DX_ENTRY.size
        hbuf[pos + DX_ENTRY.size:end + DX_ENTRY.size] = hbuf[pos:end]
        DX_ENTRY.pack_into(hbuf, pos, h2 | continued, new)
        DX_COUNTLIMIT.pack_into(hbuf, base, limit, count + 1, DX_COUNTLIMIT.unpack_from(hbuf, base)[2])
        return True
