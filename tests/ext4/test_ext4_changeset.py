"""OCI changeset semantics across layers: whiteouts, opaque dirs, replacement, links, times."""

from __future__ import annotations

import logging
import tarfile

import pytest
from overlaybd_provider.errors import OverlaybdError

from .judge import d, f, make_tar


def lnk(name: str, target: str) -> dict:
    return {"name": name, "type": tarfile.LNKTYPE, "linkname": target, "mode": 0o644}


def test_whiteout_deletes_lower_file_and_tree(stack) -> None:
    stack.apply([d("a"), f("a/keep", b"k"), f("a/gone", b"g" * 10000), d("a/sub"), f("a/sub/x", b"x" * 50000),
                 f("top", b"t")])
    stack.apply([f("a/.wh.gone"), f("a/.wh.sub"), f(".wh.top"), f("a/.wh.missing")])
    img = stack.image()  # e2fsck checks freed blocks/inodes and link counts
    assert img.listdir("/a") == {"keep": img.stat("/a/keep").ino}
    assert not img.exists("/top")
    assert img.stat("/a").links == 2


def test_opaque_hides_lower_only_whatever_the_order(stack) -> None:
    stack.apply([f("o/lower1", b"1"), d("o/lowerdir"), f("o/lowerdir/y", b"y"), f("o/both", b"old")])
    # opaque marker after and before this layer's own entries
    stack.apply([f("o/new1", b"n"), f("o/.wh..wh..opq"), f("o/new2", b"m"), f("o/both", b"new"),
                 f("p/.wh..wh..opq")])
    img = stack.image()
    assert sorted(img.listdir("/o")) == ["both", "new1", "new2"]
    assert img.cat("/o/both") == b"new"
    assert img.exists("/p") and img.listdir("/p") == {}


def test_opaque_keeps_this_layers_subtree_but_hides_lower_children(stack) -> None:
    stack.apply([f("o/d/lowerfile", b"1"), f("o/x", b"x")])
    stack.apply([f("o/d/mine", b"m"), f("o/.wh..wh..opq")])
    img = stack.image()
    assert sorted(img.listdir("/o")) == ["d"]
    assert sorted(img.listdir("/o/d")) == ["mine"]


def test_file_dir_replacement_both_ways(stack) -> None:
    stack.apply([f("was_file", b"f", mode=0o4755), d("was_dir"), f("was_dir/child", b"c"), d("was_dir/sub")])
    stack.apply([d("was_file", mode=0o700), f("was_file/inner", b"i"), f("was_dir", b"now a file")])
    img = stack.image()
    assert img.stat("/was_file").kind == "directory" and img.stat("/was_file").mode == 0o700
    assert img.cat("/was_file/inner") == b"i"
    assert img.stat("/was_dir").kind == "regular" and img.cat("/was_dir") == b"now a file"


def test_duplicate_entries_last_wins(stack) -> None:
    stack.apply([f("dup", b"first"), f("dup", b"second", mode=0o600), d("dd", mode=0o700, mtime=5),
                 d("dd", mode=0o750, mtime=7), f("x/y", b"1"), f("x", b"file wins")])
    img = stack.image()
    assert img.cat("/dup") == b"second" and img.stat("/dup").mode == 0o600
    st = img.stat("/dd")
    assert st.mode == 0o750 and st.mtime == 7
    assert img.stat("/x").kind == "regular" and img.cat("/x") == b"file wins"


def test_merge_dir_metadata_and_dir_times_survive_children(stack) -> None:
    stack.apply([d("m", mode=0o755, mtime=100), f("m/old", b"o")])
    stack.apply([d("m", mode=0o711, uid=3, mtime=200), f("m/new", b"n", mtime=300), d("m/sub", mtime=400),
                 f("m/sub/z", b"z")])
    img = stack.image()
    m = img.stat("/m")
    assert m.mode == 0o711 and m.uid == 3 and m.mtime == 200 and m.links == 3
    assert sorted(img.listdir("/m")) == ["new", "old", "sub"]
    assert img.stat("/m/sub").mtime == 400


def test_root_entry_sets_root_metadata(stack) -> None:
    stack.apply([d("./", mode=0o700, mtime=42, uid=9), f("./a", b"a")])
    img = stack.image()
    root = img.stat("/")
    assert root.mode == 0o700 and root.mtime == 42 and root.uid == 9


def test_hard_links_to_lower_paths_and_replacing_the_original(stack) -> None:
    stack.apply([f("links/orig", b"v1"), lnk("links/second", "links/orig")])
    stack.apply([lnk("other/third", "links/orig"), f("links/orig", b"v2 new inode")])
    img = stack.image()
    s = img.stats(["/links/orig", "/links/second", "/other/third"])
    assert s["/links/second"].ino == s["/other/third"].ino != s["/links/orig"].ino
    assert s["/links/second"].links == 2 and s["/links/orig"].links == 1
    assert img.cat("/other/third") == b"v1" and img.cat("/links/orig") == b"v2 new inode"


def test_deleting_a_hard_linked_file_keeps_the_other_link(stack) -> None:
    stack.apply([f("h/a", b"shared"), lnk("h/b", "h/a"), lnk("h2/c", "h/a")])
    stack.apply([f("h/.wh.a"), f(".wh.h2")])
    img = stack.image()
    st = img.stat("/h/b")
    assert st.links == 1 and img.cat("/h/b") == b"shared"


def test_path_cleaning_stays_inside_root(stack) -> None:
    stack.apply([f("../../escape", b"e"), f("/abs/file", b"a"), f("./x/../y//z", b"z")])
    img = stack.image()
    assert img.cat("/escape") == b"e" and img.cat("/abs/file") == b"a" and img.cat("/y/z") == b"z"
    assert not img.exists("/x")


def test_big_directory_rebuilt_once(stack) -> None:
    names = [f"file-{i:06d}-{'x' * 20}" for i in range(3000)]
    stack.apply([d("big")] + [f(f"big/{n}") for n in names])
    stack.apply([f("big/.wh." + names[5]), f("big/added")])
    img = stack.image()
    st = img.stat("/big")
    assert st.flags & 0x1000  # htree
    listing = img.listdir("/big")
    assert len(listing) == 3000 and "added" in listing and names[5] not in listing


def test_inserts_split_full_htree_leaves_in_place(stack, tmp_path) -> None:
    """Our htree leaves are packed full: new names split leaves (kernel-style) instead of a
    rebuild; the tree must stay e2fsck-clean (hash ranges) and equal the changeset model."""
    from support.fsjudge import assert_trees_equal, expected_tree, read_tree

    from .judge import make_tar

    names = [f"big/file-{i:05d}-{'x' * (i % 50)}" for i in range(4000)]
    t1, t2 = tmp_path / "t1.tar", tmp_path / "t2.tar"
    t1.write_bytes(make_tar([d("big")] + [f(n) for n in names]))
    t2.write_bytes(make_tar([f(f"big/new-{i:04d}-{'y' * (i % 90)}", b"n") for i in range(150)]
                            + [f("big/.wh." + n.split("/")[1]) for n in names[::9]]))
    stack.apply(t1)
    first = stack.image().stat("/big")
    res = stack.apply(t2)
    img = stack.image()
    st = img.stat("/big")
    assert st.flags & 0x1000 and st.size > first.size  # grew by split leaves, still indexed
    assert st.extents.startswith(first.extents)  # edited in place: original blocks kept, new ones appended
    # 150 data blocks + inode-table blocks of 150 new and 445 deleted inodes + the leaves
    assert res.blocks_written < 150 + 10 + 4000 // 16 + first.size // 4096 + 50  # + split leaves
    assert_trees_equal(read_tree(img.raw), expected_tree([t1, t2]))


# -- out-of-range metadata never wraps -----------------------------------------------------------

@pytest.mark.parametrize("fmt, field, value", [
    (tarfile.PAX_FORMAT, "uid", 1 << 40),        # PAX uid: used to be stored as 0 (root)
    (tarfile.GNU_FORMAT, "uid", (1 << 32) + 1000),  # base-256: used to become 1000
    (tarfile.PAX_FORMAT, "uid", -5),             # used to become 4294967291
    (tarfile.GNU_FORMAT, "gid", -5),             # negative base-256
    (tarfile.PAX_FORMAT, "gid", 1 << 32),
])
def test_owner_outside_32_bits_is_refused(stack, fmt: int, field: str, value: int) -> None:
    with pytest.raises(OverlaybdError) as info:
        stack.apply(make_tar([f("ok", b"1"), f("etc/owned", b"x", **{field: value})], fmt))
    assert str(info.value) == f"etc/owned: {field} {value} outside 0..4294967295"


def test_owner_limits_and_garbage_pax_ids(stack) -> None:
    stack.apply(make_tar([f("max", b"x", uid=(1 << 32) - 1, gid=(1 << 32) - 1)], tarfile.PAX_FORMAT))
    st = stack.image().stat("/max")
    assert (st.uid, st.gid) == ((1 << 32) - 1, (1 << 32) - 1)
    with pytest.raises(OverlaybdError, match=r"^bad: PAX uid 'root' is not a number$"):
        stack.apply([f("bad", b"x", pax_headers={"uid": "root"})])  # tarfile would make it 0


def test_mtimes_beyond_ext4_are_clamped_with_one_warning(stack, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="overlaybd_provider.ext4.changeset")
    stack.apply([
        f("ok", b"x", pax_headers={"mtime": "1700000000.5"}),
        f("ancient", b"x", pax_headers={"mtime": "-1000000000000"}),  # used to land in year 2401
        d("future", pax_headers={"mtime": "1099511627776.25"}),
        f("future/f", b"x", pax_headers={"mtime": "Infinity"}),
        f("edge_lo", b"x", pax_headers={"mtime": str(-(1 << 31))}),
        f("edge_hi", b"x", pax_headers={"mtime": str((1 << 34) - 1 - (1 << 31)) + ".5"}),
    ])
    img = stack.image()
    st = img.stats(["/ok", "/ancient", "/future", "/future/f", "/edge_lo", "/edge_hi"])
    got = {p: (s.mtime, s.mtime_ns, s.atime, s.ctime) for p, s in st.items()}
    lo, hi = -(1 << 31), (1 << 34) - 1 - (1 << 31)
    assert got == {
        "/ok": (1700000000, 500000000, 1700000000, 1700000000),
        "/ancient": (lo, 0, lo, lo),
        "/future": (hi, 0, hi, hi),
        "/future/f": (hi, 0, hi, hi),
        "/edge_lo": (lo, 0, lo, lo),
        "/edge_hi": (hi, 500000000, hi, hi),
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{stack.tmp / 'layer0.tar'}: 3 entries have times ext4 cannot store, clamped to "
                        f"{lo}..{hi} (first: 'ancient', mtime -1000000000000)"]


# -- whiteouts of names near the 255-byte limit ---------------------------------------------------

def test_whiteout_of_a_255_byte_name(stack) -> None:
    """``.wh.`` + a 252..255-byte name is 256..259 bytes: the whiteout entry is never written,
    only its target must fit ext4's 255 bytes (upstream applies it)."""
    names = ["a" * 252, "b" * 255, "c" * 255]
    stack.apply([d("dir"), *(f(f"dir/{n}", n[:1].encode()) for n in names), d("d" * 255), f(f"{'d' * 255}/x", b"x")])
    stack.apply([f(f"dir/.wh.{names[0]}"), f(f"dir/.wh.{names[1]}"), f(f".wh.{'d' * 255}"),
                 f(f"dir/.wh..wh.{'m' * 250}")])  # a meta entry of 258 bytes: ignored
    img = stack.image()
    assert sorted(img.listdir("/dir")) == [names[2]]
    assert not img.exists("/" + "d" * 255)


def test_opaque_dir_with_255_byte_children(stack) -> None:
    stack.apply([f("o/" + "l" * 255, b"lower")])
    stack.apply([f("o/.wh..wh..opq"), f("o/" + "n" * 255, b"new")])
    assert sorted(stack.image().listdir("/o")) == ["n" * 255]


def test_whiteout_target_longer_than_255_is_refused(stack) -> None:
    with pytest.raises(OverlaybdError, match=r"^dir/\.wh\.z+: whiteout of a name of 256 bytes \(ext4 allows 255\)$"):
        stack.apply([f("dir/.wh." + "z" * 256)])
    with pytest.raises(OverlaybdError, match=r"name component of 256 bytes"):
        stack.apply([f("dir/" + "z" * 256)])  # an ordinary name is still limited
