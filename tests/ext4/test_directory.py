"""Directory blocks: layout unit checks, corrupt-input errors, and e2fsck/debugfs on real images."""

from __future__ import annotations

import re
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.ext4 import htree
from overlaybd_provider.ext4.directory import (
    EXT2_FT_DIR,
    EXT2_FT_FIFO,
    EXT2_FT_REG_FILE,
    DirEntry,
    build_directory_blocks,
    dirent_rec_len,
    file_type_from_mode,
    parse_directory_blocks,
)
from overlaybd_provider.ext4.dirhash import dirhash
from overlaybd_provider.ext4.errors import DirectoryCorruptError, DirectoryLimitError
from overlaybd_provider.ext4.htree import node_limit, parse_dx_index, root_limit
from support import ext4img
from support.fsjudge import assert_e2fsck_clean, e2fsck, run_debugfs

SEED = [0x04030201, 0x08070605, 0x0C0B0A09, 0x100F0E0D]  # ext4img.TEST_HASH_SEED as s_hash_seed words


def _records(block: bytes) -> list[tuple[int, int, bytes, int]]:
    out, off = [], 0
    while off < len(block):
        ino, rec_len, nlen, ft = struct.unpack_from("<IHBB", block, off)
        out.append((ino, rec_len, block[off + 8 : off + 8 + nlen], ft))
        off += rec_len
    return out


def test_linear_block_layout() -> None:
    entries = [DirEntry(b"a", 12, EXT2_FT_REG_FILE), DirEntry(b"dir", 13, EXT2_FT_DIR), DirEntry(b"x" * 9, 14, 7)]
    layout = build_directory_blocks(20, 2, entries, hash_seed=None)
    assert not layout.indexed and len(layout.blocks) == 1
    recs = _records(layout.blocks[0])
    assert recs == [
        (20, 12, b".", EXT2_FT_DIR),
        (2, 12, b"..", EXT2_FT_DIR),
        (12, 12, b"a", 1),
        (13, 12, b"dir", 2),
        (14, 4096 - 48, b"x" * 9, 7),
    ]
    parsed = parse_directory_blocks(layout.blocks)
    assert parsed.parent_inode == 2 and not parsed.indexed
    assert parsed.entries == entries


def test_empty_directory_is_one_block() -> None:
    layout = build_directory_blocks(11, 2, [], hash_seed=None)
    assert len(layout.blocks) == 1 and not layout.indexed
    assert _records(layout.blocks[0]) == [(11, 12, b".", 2), (2, 4084, b"..", 2)]
    assert parse_directory_blocks(layout.blocks).entries == []


def test_fits_one_block_exactly_then_spills_to_htree() -> None:
    # 12 + 12 + n * 16 <= 4096 → 254 eight-byte names fit exactly
    names = [b"n%07d" % i for i in range(255)]
    assert all(dirent_rec_len(len(n)) == 16 for n in names)
    fits = build_directory_blocks(12, 2, [DirEntry(n, 100, 1) for n in names[:254]], hash_seed=None)
    assert len(fits.blocks) == 1 and not fits.indexed
    spills = build_directory_blocks(12, 2, [DirEntry(n, 100, 1) for n in names], hash_seed=None)
    assert spills.indexed and len(spills.blocks) == 2  # dx root + one leaf (255 * 16 <= 4096)


def test_htree_root_and_leaf_ranges() -> None:
    entries = [DirEntry(b"file-%05d.txt" % i, 1000 + i, 1) for i in range(3000)]
    layout = build_directory_blocks(77, 5, entries, hash_seed=SEED, hash_version=1, signed_hash=True)
    blocks = layout.blocks
    root = blocks[0]
    assert _records(root)[:2] == [(77, 12, b".", 2), (5, 4084, b"..", 2)]
    assert struct.unpack_from("<IBBBB", root, 24) == (0, 1, 8, 0, 0)
    limit, count, first = struct.unpack_from("<HHI", root, 32)
    assert limit == root_limit(4096) == 508 and count == len(blocks) - 1 and first == 1
    index = parse_dx_index(blocks)
    assert index.indirect_levels == 0 and index.node_blocks == []
    bounds = [h & ~1 for h, _b in index.leaves[1:]] + [0xFFFFFFFF]
    lower = 0
    seen = []
    for (h, leaf), upper in zip(index.leaves, bounds, strict=True):
        lower = h & ~1
        hashes = [dirhash(name, version=1, seed=SEED, signed=True)[0] for _i, _r, name, _f in _records(blocks[leaf])]
        assert hashes == sorted(hashes)
        assert all(lower <= x <= upper for x in hashes)
        seen.extend(hashes)
    assert seen == sorted(seen)
    parsed = parse_directory_blocks(blocks)
    assert parsed.indexed and parsed.parent_inode == 5
    assert sorted(parsed.entries, key=lambda e: e.name) == entries


def test_two_level_htree_limits() -> None:
    entries = [DirEntry(b"a-fairly-long-file-name-%016d" % i, 12, 1) for i in range(60000)]
    layout = build_directory_blocks(12, 2, entries, hash_seed=None)
    index = parse_dx_index(layout.blocks)
    assert index.indirect_levels == 1
    assert len(index.leaves) > root_limit(4096)
    assert len(layout.blocks) == 1 + len(index.leaves) + len(index.node_blocks)
    node = layout.blocks[index.node_blocks[0]]
    assert struct.unpack_from("<IHBB", node, 0) == (0, 4096, 0, 0)
    assert struct.unpack_from("<HH", node, 8) == (node_limit(4096), node_limit(4096))
    assert len(parse_directory_blocks(layout.blocks).entries) == 60000


def test_hash_collisions_get_continuation_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal major hashes straddling leaves: the next index entry carries bit 0 (kernel semantics)."""

    def fake_many(names, **_kw):
        return [(0x5000 if n.startswith(b"c") else 0x1000 * (i + 10), i) for i, n in enumerate(names)]

    monkeypatch.setattr(htree, "dirhash_many", fake_many)
    entries = [DirEntry(b"c%09d" % i, 12, 1) for i in range(600)] + [DirEntry(b"z%09d" % i, 12, 1) for i in range(5)]
    index = parse_dx_index(build_directory_blocks(12, 2, entries, hash_seed=None).blocks)
    hashes = [h for h, _b in index.leaves]
    assert hashes[0] == 0  # entry 0's hash is implicit
    continued = [h for h in hashes[1:] if h == 0x5001]
    assert len(continued) >= 2  # 600 colliding 16-byte records span 3+ leaves
    assert all(h & 1 == 0 for h in hashes[1:] if h != 0x5001)


@pytest.mark.parametrize(
    "entry",
    [
        DirEntry(b"", 12, 1),
        DirEntry(b"x" * 256, 12, 1),
        DirEntry(b"a/b", 12, 1),
        DirEntry(b".", 12, 2),
        DirEntry(b"..", 12, 2),
        DirEntry(b"ok", 0, 1),
        DirEntry(b"ok", 12, 9),
    ],
)
def test_invalid_entries_rejected(entry: DirEntry) -> None:
    with pytest.raises(DirectoryLimitError):
        build_directory_blocks(12, 2, [entry], hash_seed=None)


def test_name_length_255_accepted_and_duplicates_rejected() -> None:
    layout = build_directory_blocks(12, 2, [DirEntry(b"L" * 255, 13, 1)], hash_seed=None)
    assert parse_directory_blocks(layout.blocks).entries[0].name == b"L" * 255
    with pytest.raises(DirectoryLimitError, match="duplicate"):
        build_directory_blocks(12, 2, [DirEntry(b"a", 13, 1), DirEntry(b"a", 14, 1)], hash_seed=None)


def test_too_many_leaves_for_two_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(htree, "root_limit", lambda bs: 2)
    monkeypatch.setattr(htree, "node_limit", lambda bs: 2)
    entries = [DirEntry(b"%0200d" % i, 12, 1) for i in range(200)]
    with pytest.raises(DirectoryLimitError, match="large_dir"):
        build_directory_blocks(12, 2, entries, hash_seed=None)


def _corrupt(block: bytes, off: int, fmt: str, *vals: int) -> bytes:
    b = bytearray(block)
    struct.pack_into(fmt, b, off, *vals)
    return bytes(b)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: _corrupt(b, 28, "<H", 0), "bad rec_len"),  # third record rec_len 0
        (lambda b: _corrupt(b, 28, "<H", 14), "bad rec_len"),  # not a multiple of 4
        (lambda b: _corrupt(b, 28, "<H", 8000), "bad rec_len"),  # past the block end
        (lambda b: _corrupt(b, 30, "<B", 200), "name_len"),  # name longer than the record
        (lambda b: _corrupt(b, 8, "<B", 2), "not '.'"),
        (lambda b: b[:100], "bytes, expected 4096"),
    ],
)
def test_corrupt_blocks_raise(mutate, message: str) -> None:
    block = build_directory_blocks(12, 2, [DirEntry(b"abc", 13, 1), DirEntry(b"d", 14, 1)], hash_seed=None).blocks[0]
    with pytest.raises(DirectoryCorruptError, match=message) as info:
        parse_directory_blocks([mutate(block)])
    assert isinstance(info.value, OverlaybdError)


def test_corrupt_dx_index_raises() -> None:
    entries = [DirEntry(b"f%06d" % i, 12, 1) for i in range(2000)]
    blocks = list(build_directory_blocks(12, 2, entries, hash_seed=None).blocks)
    blocks[0] = _corrupt(blocks[0], 32, "<H", 100)  # wrong limit
    with pytest.raises(DirectoryCorruptError, match="limit"):
        parse_dx_index(blocks)
    with pytest.raises(DirectoryCorruptError):
        parse_directory_blocks([])


def test_file_type_from_mode() -> None:
    assert file_type_from_mode(0o100644) == 1
    assert file_type_from_mode(0o040755) == 2
    assert file_type_from_mode(0o120777) == 7
    assert file_type_from_mode(0o010644) == EXT2_FT_FIFO


# ------------------------------------------------------------------ real e2fsprogs as the judge

def _judge_directory(tmp_path: Path, entries_count: int, name_fmt: bytes, *, signed: bool = True,
                     targets: int = 4) -> tuple[Path, list[DirEntry], float]:
    """Build a directory of fifo entries with our writer, install it as /big in a mke2fs image."""
    img = ext4img.make_image(tmp_path / "dir.img", size="96M")
    if not signed:
        run_debugfs(img, ["ssv flags 2"], write=True)  # EXT2_FLAGS_UNSIGNED_HASH
    seed, signed_flag = ext4img.hash_info(img)
    assert seed == SEED and signed_flag == signed
    run_debugfs(img, [f"mknod t{k} p" for k in range(targets)], write=True)
    tinos = [ext4img.lookup(img, f"/t{k}") for k in range(targets)]
    entries = [DirEntry(name_fmt % i, tinos[i % targets], EXT2_FT_FIFO) for i in range(entries_count)]
    t0 = time.process_time()  # CPU time: other processes loading the machine do not count
    probe = build_directory_blocks(99, 2, entries, hash_seed=seed, signed_hash=signed)
    elapsed = time.process_time() - t0
    ino, phys = ext4img.install_directory(img, "big", len(probe.blocks), tmp_path)
    layout = build_directory_blocks(ino, 2, entries, hash_seed=seed, signed_hash=signed)
    assert len(layout.blocks) == len(probe.blocks)
    ext4img.write_blocks(img, phys, layout.blocks)
    ext4img.finish_directory(img, "big", ino, indexed=layout.indexed, root_links=4)
    refs = [entries_count // targets + (1 if k < entries_count % targets else 0) for k in range(targets)]
    run_debugfs(img, [f"sif <{t}> links_count {r + 1}" for t, r in zip(tinos, refs, strict=True)], write=True)
    return img, entries, elapsed


def _debugfs_names(img: Path, path: str) -> set[bytes]:
    out = run_debugfs(img, [f"ls -p {path}"])
    names = set()
    for line in out.splitlines()[1:]:
        m = re.match(r"^/\d+/\d+/\d+/\d+/(.*)/\d*/$", line)
        if m:
            names.add(m.group(1).encode("utf-8", "surrogateescape"))
    return names - {b".", b".."}


def test_e2fsck_accepts_linear_and_small_htree(tmp_path: Path) -> None:
    img, entries, _ = _judge_directory(tmp_path, 40, b"e%d")
    assert_e2fsck_clean(img)
    assert _debugfs_names(img, "/big") == {e.name for e in entries}
    (tmp_path / "b").mkdir()
    img2, entries2, _ = _judge_directory(tmp_path / "b", 2500, b"entry-%06d.conf")
    assert_e2fsck_clean(img2)
    assert _debugfs_names(img2, "/big") == {e.name for e in entries2}
    # debugfs finds entries through the index
    out = run_debugfs(img2, ["dirsearch /big entry-001234.conf", "htree_dump /big"], allow_errors=True)
    assert "Entry found at logical block" in out
    assert "Indirect levels: 0" in out


def test_e2fsck_accepts_unsigned_hash_with_high_bytes(tmp_path: Path) -> None:
    img, entries, _ = _judge_directory(tmp_path, 3000, b"\xe9t\xe9-\xff%06d", signed=False)
    assert_e2fsck_clean(img)
    assert _debugfs_names(img, "/big") == {e.name for e in entries}


def test_e2fsck_accepts_100k_single_level(tmp_path: Path) -> None:
    img, entries, elapsed = _judge_directory(tmp_path, 100_000, b"h%07d")
    assert elapsed < 1.5, f"building 100 000 entries took {elapsed:.2f} s of CPU"
    assert_e2fsck_clean(img)
    names = _debugfs_names(img, "/big")
    assert len(names) == 100_000 and names == {e.name for e in entries}


def test_e2fsck_accepts_100k_two_level(tmp_path: Path) -> None:
    img, entries, elapsed = _judge_directory(tmp_path, 100_000, b"a-longer-name-for-two-levels-%012d")
    assert elapsed < 1.5, f"building 100 000 entries took {elapsed:.2f} s of CPU"
    assert_e2fsck_clean(img)
    out = run_debugfs(img, ["htree_dump /big"], allow_errors=True)
    assert "Indirect levels: 1" in out
    ino = ext4img.lookup(img, "/big")
    blocks = ext4img.read_blocks(img, ext4img.inode_blocks(img, ino))
    parsed = parse_directory_blocks(blocks, indexed=True)
    assert parsed.parent_inode == 2
    assert sorted(e.name for e in parsed.entries) == sorted(e.name for e in entries)


def test_e2fsck_notices_wrong_hash_signedness(tmp_path: Path) -> None:
    """The judge has teeth: leaves sorted with the wrong char signedness are reported."""
    img = ext4img.make_image(tmp_path / "neg.img", size="32M")
    run_debugfs(img, ["ssv flags 2", "mknod t0 p"], write=True)  # filesystem says unsigned
    t0 = ext4img.lookup(img, "/t0")
    entries = [DirEntry(b"\xe9t\xe9-\xff%06d" % i, t0, EXT2_FT_FIFO) for i in range(3000)]
    probe = build_directory_blocks(99, 2, entries, hash_seed=SEED, signed_hash=True)
    ino, phys = ext4img.install_directory(img, "big", len(probe.blocks), tmp_path)
    layout = build_directory_blocks(ino, 2, entries, hash_seed=SEED, signed_hash=True)
    ext4img.write_blocks(img, phys, layout.blocks)
    ext4img.finish_directory(img, "big", ino, indexed=True, root_links=4)
    run_debugfs(img, [f"sif <{t0}> links_count 3001"], write=True)
    rc, text = e2fsck(img)
    assert rc != 0 and "HTREE" in text.upper(), text


# ------------------------------------------------------------------ upstream's two-level htree

def test_parse_and_rebuild_upstream_huge_directory(upstream_features_raw: Path, tmp_path: Path) -> None:
    """/srv/huge (120 000 files, one whited out by layer 2) as upstream's libext2fs wrote it."""
    raw = upstream_features_raw
    ino = ext4img.lookup(raw, "/srv/huge")
    blocks = ext4img.read_blocks(raw, ext4img.inode_blocks(raw, ino))
    index = parse_dx_index(blocks)
    assert index.indirect_levels == 1 and index.hash_version == 1
    parsed = parse_directory_blocks(blocks)
    assert parsed.indexed and parsed.parent_inode == ext4img.lookup(raw, "/srv")
    names = sorted(e.name for e in parsed.entries)
    assert names == [b"h%07d" % i for i in range(120_000) if i != 7]
    assert {e.file_type for e in parsed.entries} == {EXT2_FT_REG_FILE}
    # upstream's index agrees with our hash (zero seed, signed): every leaf within its range
    bounds = [h & ~1 for h, _b in index.leaves[1:]] + [0xFFFFFFFF]
    for (h, leaf), upper in zip(index.leaves[:50], bounds[:50], strict=True):
        off = 0
        while off < 4096:
            e_ino, rec_len, nlen, _ft = struct.unpack_from("<IHBB", blocks[leaf], off)
            if e_ino:
                major = dirhash(blocks[leaf][off + 8 : off + 8 + nlen], version=1, seed=None, signed=True)[0]
                assert (h & ~1) <= major <= upper
            off += rec_len

    # rebuild it with our writer (fifo targets instead of 120 000 inodes) and let e2fsck judge
    img = ext4img.make_image(tmp_path / "huge.img", size="128M")
    seed, signed = ext4img.hash_info(img)
    run_debugfs(img, [f"mknod t{k} p" for k in range(3)], write=True)
    tinos = [ext4img.lookup(img, f"/t{k}") for k in range(3)]
    entries = [DirEntry(e.name, tinos[i % 3], EXT2_FT_FIFO) for i, e in enumerate(parsed.entries)]
    probe = build_directory_blocks(99, 2, entries, hash_seed=seed, signed_hash=signed)
    dino, phys = ext4img.install_directory(img, "huge", len(probe.blocks), tmp_path)
    layout = build_directory_blocks(dino, 2, entries, hash_seed=seed, signed_hash=signed)
    ext4img.write_blocks(img, phys, layout.blocks)
    ext4img.finish_directory(img, "huge", dino, indexed=True, root_links=4)
    refs = [sum(1 for e in entries if e.inode == t) for t in tinos]
    run_debugfs(img, [f"sif <{t}> links_count {r + 1}" for t, r in zip(tinos, refs, strict=True)], write=True)
    assert_e2fsck_clean(img)
    assert len(_debugfs_names(img, "/huge")) == 119_999


_name = st.binary(min_size=1, max_size=255).filter(lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b".."))


@settings(max_examples=40, deadline=None)
@given(names=st.sets(_name, max_size=1500), signed=st.booleans(), seed=st.sampled_from([None, SEED]))
def test_roundtrip_property(names: set[bytes], signed: bool, seed: list[int] | None) -> None:
    entries = [DirEntry(n, 12 + i, 1 + i % 7) for i, n in enumerate(sorted(names))]
    layout = build_directory_blocks(11, 2, entries, hash_seed=seed, signed_hash=signed)
    assert all(len(b) == 4096 for b in layout.blocks)
    parsed = parse_directory_blocks(layout.blocks, indexed=layout.indexed)
    assert sorted(parsed.entries, key=lambda e: e.name) == entries
    if layout.indexed:
        index = parse_dx_index(layout.blocks)
        assert sorted(b for _h, b in index.leaves) == list(range(1, len(index.leaves) + 1))
        hashes = [h & ~1 for h, _b in index.leaves]
        assert hashes == sorted(hashes)
