"""Reading one directory for the checker: linear and htree blocks, every rule e2fsck pass 2 applies.

Records are walked with ``ext4.directory.iter_block_records`` (rec_len / name_len bounds); the
htree index is parsed here rather than with the writer's ``parse_dx_index`` so the hash bounds
of each leaf are exactly e2fsck's (``parse_int_node``: the first entry of every index block
starts at hash 0, the last one ends at 0xfffffffe, collision bits masked), and every leaf's
names are hashed (``ext4.dirhash``) to check they lie inside their bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from overlaybd_provider.ext4 import layout as L
from overlaybd_provider.ext4.directory import EXT4_DIR_ENTRY_2, iter_block_records
from overlaybd_provider.ext4.dirhash import dirhash_many
from overlaybd_provider.ext4.errors import DirectoryCorruptError
from overlaybd_provider.ext4.htree import (
    DX_BLOCK_MASK,
    DX_COUNTLIMIT,
    DX_ENTRY,
    DX_NODE_ENTRIES_OFFSET,
    DX_ROOT_ENTRIES_OFFSET,
    DX_ROOT_INFO,
    DX_ROOT_INFO_OFFSET,
    node_limit,
    root_limit,
)
from overlaybd_provider.verify.device import BLOCK
from overlaybd_provider.verify.ext4read import Bad, Ext4Reader, FileMap, InodeRec

_HASH_MAX = 0xFFFFFFFE
_SUPPORTED_HASHES = (0, 1, 2)  # legacy, half_md4, tea
_FLAG_INCOMPAT = 0x1


@dataclass
class Listing:
    """A directory's entries (name -> (inode, dirent file type)) and its '..' inode."""

    entries: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    parent: int = 0


def _blocks(reader: Ext4Reader, rec: InodeRec, fm: FileMap, bad: Bad) -> list[bytes]:
    out: list[bytes] = []
    for lblk, pblk, count, init in fm.extents:
        if lblk != len(out):
            bad(f"directory inode {rec.ino} has a hole at logical block {len(out)}")
            break
        if not init:
            bad(f"directory inode {rec.ino} has an uninitialised extent at logical block {lblk}")
            break
        data = reader.dev.read_blocks(pblk, count)
        out.extend(data[i * BLOCK:(i + 1) * BLOCK] for i in range(count))
    return out


def read_directory(reader: Ext4Reader, rec: InodeRec, fm: FileMap, bad: Bad) -> Listing:
    ino = rec.ino
    listing = Listing()
    blocks = _blocks(reader, rec, fm, bad)
    if not blocks:
        bad(f"directory inode {ino} has no blocks")
        return listing
    names = listing.entries
    leaf_names: dict[int, list[bytes]] = {}
    for idx, block in enumerate(blocks):
        mine: list[bytes] = []
        leaf_names[idx] = mine
        pos = 0
        try:
            for off, child, name, ftype, _rec_len in iter_block_records(block, idx, BLOCK):
                pos += 1
                if idx == 0 and pos <= 2:
                    want = b"." if pos == 1 else b".."
                    if name != want:
                        bad(f"directory inode {ino}: record {pos} of block 0 is {name!r}, expected {want!r}")
                    elif pos == 1 and child != ino:
                        bad(f"directory inode {ino}: '.' points at inode {child}")
                    elif pos == 2:
                        listing.parent = child
                    continue
                if child == 0:
                    continue
                where = f"directory inode {ino} block {idx} offset {off}"
                if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
                    bad(f"{where}: invalid entry name {name!r}")
                    continue
                if not 1 <= child <= reader.geo.inodes_count:
                    bad(f"{where}: entry {name!r} points at inode {child}, outside 1..{reader.geo.inodes_count}")
                    continue
                if name in names:
                    bad(f"directory inode {ino}: duplicate entry {name!r}")
                    continue
                names[name] = (child, ftype)
                mine.append(name)
        except DirectoryCorruptError as exc:
            bad(f"directory inode {ino}: {exc}")
    if rec.flags & L.EXT4_INDEX_FL and reader.sb.s_feature_compat & L.COMPAT_DIR_INDEX:
        _check_htree(reader, ino, blocks, leaf_names, bad)
    return listing


def _index(block: bytes, offset: int, limit_expected: int, where: str, bad: Bad) -> list[tuple[int, int]] | None:
    limit, count, first = DX_COUNTLIMIT.unpack_from(block, offset)
    if limit != limit_expected:
        bad(f"{where}: htree limit {limit}, expected {limit_expected}")
        return None
    if not 0 < count <= limit:
        bad(f"{where}: htree count {count} outside 1..{limit}")
        return None
    out = [(0, first & DX_BLOCK_MASK)]
    for i in range(1, count):
        h, b = DX_ENTRY.unpack_from(block, offset + i * DX_ENTRY.size)
        out.append((h & ~1, b & DX_BLOCK_MASK))
    return out


def _check_htree(reader: Ext4Reader, ino: int, blocks: list[bytes], leaf_names: dict[int, list[bytes]],
                 bad: Bad) -> None:
    root = blocks[0]
    where = f"htree directory inode {ino}"
    _i, rec0, _n0, _f0 = EXT4_DIR_ENTRY_2.unpack_from(root, 0)
    _i, rec1, _n1, _f1 = EXT4_DIR_ENTRY_2.unpack_from(root, 12)
    if len(blocks) < 2 or rec0 != 12 or rec1 != BLOCK - 12:
        bad(f"{where}: has the index flag but block 0 is not an htree root")
        return
    reserved, hash_version, info_length, levels, flags = DX_ROOT_INFO.unpack_from(root, DX_ROOT_INFO_OFFSET)
    if reserved or info_length != 8 or levels > 1:
        bad(f"{where}: bad htree root (reserved {reserved}, info length {info_length}, levels {levels})")
        return
    if hash_version not in _SUPPORTED_HASHES or flags & _FLAG_INCOMPAT:
        bad(f"{where}: htree hash version {hash_version} / flags {flags:#x} not supported")
        return
    nblocks = len(blocks)
    referenced = [0] * nblocks
    bounds: dict[int, tuple[int, int]] = {}
    kinds = ["root"] + ["?"] * (nblocks - 1)

    def walk(block: bytes, offset: int, limit: int, label: str, leaf_level: bool) -> None:
        entries = _index(block, offset, limit, f"{where} {label}", bad)
        if entries is None:
            return
        prev = 0
        for i, (h, b) in enumerate(entries):
            if h < prev:
                bad(f"{where} {label}: htree hashes out of order at entry {i}")
            prev = h
            if not 0 < b < nblocks:
                bad(f"{where} {label}: htree entry {i} points at block {b} of {nblocks}")
                continue
            referenced[b] += 1
            if referenced[b] > 1:
                continue
            hi = entries[i + 1][0] if i + 1 < len(entries) else _HASH_MAX
            if leaf_level:
                kinds[b] = "leaf"
                bounds[b] = (h, hi)
            else:
                kinds[b] = "node"
                node = blocks[b]
                child_ino, rec_len, _nl, _ft = EXT4_DIR_ENTRY_2.unpack_from(node, 0)
                if child_ino or rec_len != BLOCK:
                    bad(f"{where}: htree node block {b} is not an empty record spanning the block")
                    continue
                walk(node, DX_NODE_ENTRIES_OFFSET, node_limit(BLOCK), f"node block {b}", True)

    walk(root, DX_ROOT_ENTRIES_OFFSET, root_limit(BLOCK), "root", levels == 0)
    for b in range(1, nblocks):
        if referenced[b] == 0:
            bad(f"{where}: block #{b} not referenced by the htree")
        elif referenced[b] > 1:
            bad(f"{where}: block #{b} referenced {referenced[b]} times by the htree")
    seed = reader.hash_seed
    for b, (lo, hi) in bounds.items():
        names = leaf_names.get(b) or []
        if not names:
            continue
        hashes = [m for m, _minor in dirhash_many(names, version=hash_version, seed=seed,
                                                   signed=reader.signed_hash)]
        if min(hashes) < lo or max(hashes) > hi:
            bad(f"{where}: leaf block #{b} holds names hashing outside its index range "
                f"[{lo:#010x}, {hi:#010x}]")
