"""Directory tree operations over a :class:`Filesystem`: lookup, create, link, unlink, rmtree.

Directories are loaded on first touch (linear or htree, from any lower) into a name -> (inode,
file type) map and rewritten once at :meth:`Namespace.flush` with ``build_directory_blocks``
(linear while one block holds them, htree beyond), so adding 100 000 names is linear work.
A rebuilt directory keeps its own blocks, grows after the allocation cursor, and only blocks
whose bytes changed are written. Link counts follow dir_nlink (1 past 64 999 subdirectories).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from overlaybd_provider.ext4 import layout as L
from overlaybd_provider.ext4.directory import (
    DirEntry,
    build_directory_blocks,
    iter_block_records,
    parse_directory_blocks,
)
from overlaybd_provider.ext4.dirhash import dirhash_many
from overlaybd_provider.ext4.dxedit import DxEditor, insert_record
from overlaybd_provider.ext4.errors import Ext4Error
from overlaybd_provider.ext4.extent import split_runs
from overlaybd_provider.ext4.fs import Filesystem
from overlaybd_provider.ext4.inode import Inode

log = logging.getLogger(__name__)

Path = tuple[bytes, ...]
KEEP_NONE, KEEP_CHILDREN, KEEP_ALL = 0, 1, 2
KeepFn = Callable[[Path], int]


class DirState:
    """A loaded directory: its entries and whether they changed.

    For multi-block directories read from disk, ``ondisk`` remembers each name's block and
    entry, so a change is applied in place when possible (removals merge records, insertions
    go to the leaf the htree index names, or the first block with room in a linear
    directory): whiting out or adding one file in a 100 000-entry lower directory stores one
    block instead of the whole directory.
    """

    __slots__ = ("dirty", "entries", "ino", "ondisk", "parent")

    def __init__(self, ino: int, parent: int, entries: dict[bytes, tuple[int, int]], dirty: bool) -> None:
        self.ino, self.parent, self.entries, self.dirty = ino, parent, entries, dirty
        self.ondisk: dict[bytes, tuple[int, int, int]] | None = None  # name -> (block idx, ino, ft)


class Namespace:
    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs
        self.dirs: dict[int, DirState] = {}

    # -- loading -------------------------------------------------------------------------
    def dir(self, ino: int) -> DirState:
        d = self.dirs.get(ino)
        if d is None:
            d = self._load(ino)
            self.dirs[ino] = d
        return d

    def _load(self, ino: int) -> DirState:
        fs = self.fs
        inode = fs.get_inode(ino)
        if not inode.is_dir():
            raise Ext4Error(f"inode {ino} is not a directory")
        extents, _meta = fs.file_blocks(inode, ino)
        blocks = [fs.dev.read_block(p + i) for _lb, p, n in extents for i in range(n)]
        parsed = parse_directory_blocks(blocks, indexed=bool(inode.i_flags & L.EXT4_INDEX_FL))
        entries = {e.name: (e.inode, e.file_type) for e in parsed.entries}
        d = DirState(ino, parsed.parent_inode, entries, False)
        if len(blocks) > 1:
            ondisk: dict[bytes, tuple[int, int, int]] = {}
            for idx, block in enumerate(blocks):
                for _off, child, name, ft, _len in iter_block_records(block, idx, L.BLOCK_SIZE):
                    if child and not (idx == 0 and name in (b".", b"..")):
                        ondisk[name] = (idx, child, ft)
            d.ondisk = ondisk
        return d

    # -- queries ---------------------------------------------------------------------------
    def root(self) -> DirState:
        return self.dir(L.ROOT_INO)

    def lookup_path(self, path: Path) -> tuple[int, int] | None:
        """(inode, file type) of a path, without following symlinks."""
        cur: tuple[int, int] = (L.ROOT_INO, L.FT_DIR)
        for comp in path:
            if cur[1] != L.FT_DIR:
                return None
            nxt = self.dir(cur[0]).entries.get(comp)
            if nxt is None:
                return None
            cur = nxt
        return cur

    # -- mutations ---------------------------------------------------------------------------
    def add_entry(self, parent: DirState, name: bytes, ino: int, ftype: int) -> None:
        parent.entries[name] = (ino, ftype)
        parent.dirty = True

    def _drop_entry(self, parent: DirState, name: bytes) -> None:
        del parent.entries[name]
        parent.dirty = True

    def mkdir(self, parent: DirState, name: bytes, inode_setup: Callable[[Inode], None]) -> DirState:
        ino, inode = self.fs.new_inode(L.S_IFDIR | 0o755)
        inode_setup(inode)
        self.fs.put_inode(ino, inode)
        d = DirState(ino, parent.ino, {}, True)
        self.dirs[ino] = d
        self.add_entry(parent, name, ino, L.FT_DIR)
        return d

    def link(self, parent: DirState, name: bytes, ino: int, what: str) -> None:
        inode = self.fs.get_inode(ino)
        if inode.is_dir():
            raise Ext4Error(f"{what}: hard link to a directory")
        if inode.i_links_count >= L.EXT4_LINK_MAX:
            raise Ext4Error(f"{what}: too many hard links ({inode.i_links_count})")
        inode.i_links_count += 1
        self.fs.put_inode(ino, inode)
        self.add_entry(parent, name, ino, L.MODE_TO_FT.get(inode.file_type, L.FT_UNKNOWN))

    def drop_link(self, ino: int) -> None:
        inode = self.fs.get_inode(ino)
        if inode.i_links_count <= 1:
            self.fs.release_inode(ino, inode)
        else:
            inode.i_links_count -= 1
            self.fs.put_inode(ino, inode)

    def remove(self, parent: DirState, ppath: Path, name: bytes, keep: KeepFn | None = None) -> bool:
        """Remove ``name`` (recursively); with ``keep``, spare what it marks. True if gone."""
        ino, ftype = parent.entries[name]
        path = (*ppath, name)
        mode = keep(path) if keep is not None else KEEP_NONE
        if mode == KEEP_ALL:
            return False
        is_dir = ftype == L.FT_DIR or (ftype == L.FT_UNKNOWN and self.fs.get_inode(ino).is_dir())
        if not is_dir:
            self._drop_entry(parent, name)
            self.drop_link(ino)
            return True
        d = self.dir(ino)
        child_keep = keep if mode == KEEP_CHILDREN else None
        gone_all = True
        for cname in sorted(d.entries):
            if not self.remove(d, path, cname, child_keep):
                gone_all = False
        if mode == KEEP_CHILDREN or not gone_all:
            return False
        self._drop_entry(parent, name)
        inode = self.fs.get_inode(ino)
        self.fs.release_inode(ino, inode)
        del self.dirs[ino]
        return True

    # -- flush -----------------------------------------------------------------------------------
    def flush(self) -> int:
        """Rewrite every changed directory; returns how many were rebuilt."""
        count = 0
        for ino in sorted(i for i, d in self.dirs.items() if d.dirty):
            d = self.dirs[ino]
            self._rebuild(d)
            d.dirty = False
            count += 1
        return count

    def _edit_in_place(self, d: DirState) -> bool:
        """Apply the difference between ``d.ondisk`` and ``d.entries`` to the existing blocks.

        Returns False (nothing written) when an insertion does not fit; the caller rebuilds.
        """
        fs = self.fs
        assert d.ondisk is not None
        inode = fs.get_inode(d.ino)
        extents, tree = fs.file_blocks(inode, d.ino)
        phys = [p + i for _lb, p, n in extents for i in range(n)]
        ondisk = d.ondisk
        entries = d.entries
        gone: dict[int, set[bytes]] = {}
        for name, (idx, child, ft) in ondisk.items():
            if entries.get(name) != (child, ft):
                gone.setdefault(idx, set()).add(name)
        new = []
        for name, entry in entries.items():
            old = ondisk.get(name)
            if old is None or (old[1], old[2]) != entry:
                new.append(name)
        new.sort()
        bufs: dict[int, bytearray] = {}

        def buf(idx: int) -> bytearray:
            b = bufs.get(idx)
            if b is None:
                b = bufs[idx] = bytearray(fs.dev.read_block(phys[idx]))
            return b

        for idx, names in gone.items():
            _drop_records(buf(idx), names, idx)
        indexed = bool(inode.i_flags & L.EXT4_INDEX_FL)
        nold = len(phys)
        new_phys: list[int] = []

        def alloc_block() -> int:
            blk = fs.alloc.alloc_block()
            new_phys.append(blk)
            phys.append(blk)
            bufs[len(phys) - 1] = bytearray(L.BLOCK_SIZE)
            return len(phys) - 1

        if new and indexed:
            try:
                dx = DxEditor(buf, alloc_block, seed=fs.hash_seed, signed=fs.signed_hash)
                hashes = dirhash_many(new, version=dx.hash_version, seed=fs.hash_seed, signed=fs.signed_hash)
                for name, (major, _minor) in zip(new, hashes, strict=True):
                    if not dx.insert(name, *entries[name], major):
                        raise _NoRoom
            except (Ext4Error, _NoRoom):
                for blk in new_phys:
                    fs.alloc.free_blocks(blk, 1)
                return False
        elif new:
            for name in new:
                if not any(insert_record(buf(idx), name, *entries[name]) for idx in range(len(phys))):
                    return False
        for idx in sorted(bufs):
            fs.dev.write_block(phys[idx], bytes(bufs[idx]))
        if len(phys) != nold:
            runs: list[tuple[int, int]] = []
            for b in phys:
                if runs and runs[-1][0] + runs[-1][1] == b:
                    runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                else:
                    runs.append((b, 1))
            fs.set_extents(inode, split_runs(runs), tree)
            inode.size = len(phys) * L.BLOCK_SIZE
            fs.put_inode(d.ino, inode)
        d.ondisk = None  # a later flush (not used by apply) would rebuild instead
        nsub = sum(1 for _ino, ft in entries.values() if ft == L.FT_DIR)
        links = 2 + nsub if 2 + nsub < L.EXT4_LINK_MAX else 1
        if inode.i_links_count != links:
            inode.i_links_count = links
            fs.put_inode(d.ino, inode)
        return True

    def _rebuild(self, d: DirState) -> None:
        if d.ondisk is not None and self._edit_in_place(d):
            return
        fs = self.fs
        names = sorted(d.entries)
        entries = [DirEntry(n, *d.entries[n]) for n in names]
        layout = build_directory_blocks(d.ino, d.parent, entries, hash_seed=fs.hash_seed,
                                        hash_version=fs.hash_version, signed_hash=fs.signed_hash)
        inode = fs.get_inode(d.ino)
        extents, tree = fs.file_blocks(inode, d.ino)
        old = [p + i for _lb, p, n in extents for i in range(n)]
        need = len(layout.blocks)
        phys = old[:need]
        for b in old[need:]:
            fs.alloc.free_blocks(b, 1)
        if need > len(phys):
            for start, n in fs.alloc.alloc_blocks(need - len(phys)):
                phys.extend(range(start, start + n))
        old_set = set(old)
        for blk, data in zip(phys, layout.blocks, strict=True):
            if blk not in old_set or fs.dev.read_block(blk) != data:
                fs.dev.write_block(blk, data)
        runs: list[tuple[int, int]] = []
        for b in phys:
            if runs and runs[-1][0] + runs[-1][1] == b:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((b, 1))
        new_extents = split_runs(runs)
        if not (inode.i_flags & L.EXT4_EXTENTS_FL) or new_extents != extents:
            if not inode.i_flags & L.EXT4_EXTENTS_FL:
                for b in tree:  # legacy block-mapped directory: its map blocks go
                    fs.alloc.free_blocks(b, 1)
                tree = []
            fs.set_extents(inode, new_extents, tree)
        inode.size = need * L.BLOCK_SIZE
        if layout.indexed:
            inode.i_flags |= L.EXT4_INDEX_FL
        else:
            inode.i_flags &= ~L.EXT4_INDEX_FL
        nsub = sum(1 for _ino, ft in d.entries.values() if ft == L.FT_DIR)
        inode.i_links_count = 2 + nsub if 2 + nsub < L.EXT4_LINK_MAX else 1
        fs.put_inode(d.ino, inode)
        d.ondisk = None  # block positions are stale after a rebuild


class _NoRoom(Exception):
    """An in-place insertion does not fit: rebuild the directory instead."""


def _drop_records(buf: bytearray, names: set[bytes], idx: int) -> None:
    """Delete records by name like the kernel's ext4_delete_entry: merge into the previous
    record of the block, or clear the inode of the block's first record."""
    prev_off = prev_len = -1
    for off, child, name, _ft, rec_len in iter_block_records(bytes(buf), idx, L.BLOCK_SIZE):
        if child and name in names:
            buf[off:off + 8 + len(name)] = bytes(8 + len(name))
            if prev_off < 0:
                struct.pack_into("<H", buf, off + 4, rec_len)  # inode 0, keeps its space
            else:
                prev_len += rec_len
                struct.pack_into("<H", buf, prev_off + 4, prev_len)
            continue
        prev_off, prev_len = off, rec_len
