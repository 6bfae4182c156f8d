"""Extent trees of every depth, written through the real filesystem code and checked by e2fsck."""

from __future__ import annotations

from pathlib import Path

import pytest
from overlaybd_provider.ext4 import layout as L
from overlaybd_provider.ext4.blockdev import OverlayBlockDevice, RawImageSink
from overlaybd_provider.ext4.extent import (
    EXT_INIT_MAX_LEN,
    build_extent_tree,
    read_extent_tree,
    split_runs,
    tree_blocks_needed,
)
from overlaybd_provider.ext4.mkfs import mkfs
from overlaybd_provider.ext4.namespace import Namespace

from .judge import Image, assert_clean


def test_split_runs_caps_extent_length() -> None:
    ext = split_runs([(1000, EXT_INIT_MAX_LEN * 2 + 5), (90000, 3)])
    assert ext == [(0, 1000, EXT_INIT_MAX_LEN), (EXT_INIT_MAX_LEN, 1000 + EXT_INIT_MAX_LEN, EXT_INIT_MAX_LEN),
                   (2 * EXT_INIT_MAX_LEN, 1000 + 2 * EXT_INIT_MAX_LEN, 5), (2 * EXT_INIT_MAX_LEN + 5, 90000, 3)]


@pytest.mark.parametrize("n, depth", [(0, 0), (4, 0), (5, 1), (1360, 1), (1361, 2)])
def test_tree_depths_roundtrip(n: int, depth: int) -> None:
    extents = [(i, 10_000 + 2 * i, 1) for i in range(n)]
    need = tree_blocks_needed(n)
    blocks = list(range(500, 500 + need))
    i_block, written = build_extent_tree(extents, blocks)
    assert len(written) == need
    store = dict(written)
    assert int.from_bytes(i_block[6:8], "little") == depth
    back, tree = read_extent_tree(i_block, store.__getitem__)
    assert back == extents and sorted(tree) == blocks


def test_fragmented_files_deep_trees_are_fsck_clean(tmp_path: Path) -> None:
    """Two files allocated block by block in turn: 1500 extents each -> depth-2 trees."""
    dev = OverlayBlockDevice(None, block_count=262144)
    fs = mkfs(dev)
    ns = Namespace(fs)
    files = []
    for name in (b"a", b"b"):
        ino, inode = fs.new_inode(L.S_IFREG | 0o644)
        files.append([name, ino, inode, []])
    for i in range(1500):
        for fl in files:
            blk = fs.alloc.alloc_block()
            dev.write_block(blk, bytes([i % 251]) * L.BLOCK_SIZE)
            fl[3].append((i, blk, 1))
    for name, ino, inode, ext in files:
        inode.size = len(ext) * L.BLOCK_SIZE
        fs.set_extents(inode, ext)
        fs.put_inode(ino, inode)
        ns.add_entry(ns.root(), name, ino, L.FT_REG_FILE)
    ns.flush()
    fs.flush()
    raw = tmp_path / "frag.raw"
    with open(raw, "wb") as f:
        f.truncate(1 << 30)
        dev.seal(RawImageSink(f))
    assert_clean(raw)
    img = Image(raw, tmp_path)
    data = img.cat("/a")
    assert len(data) == 1500 * L.BLOCK_SIZE
    assert all(data[i * L.BLOCK_SIZE] == i % 251 for i in range(0, 1500, 97))
