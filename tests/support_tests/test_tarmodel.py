"""The OCI changeset model behind ``expected_tree``: one scenario per rule."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest
import zstandard
from support.fsjudge import EMPTY_SHA256, expected_tree


def _tar(path: Path, members: list[dict], *, compress: str | None = None) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            ti = tarfile.TarInfo(m["name"])
            ti.type = m.get("type", tarfile.REGTYPE)
            ti.mode = m.get("mode", 0o644)
            ti.uid, ti.gid = m.get("uid", 0), m.get("gid", 0)
            ti.mtime = m.get("mtime", 1700000000)
            ti.linkname = m.get("link", "")
            ti.devmajor, ti.devminor = m.get("dev", (0, 0))
            if "xattrs" in m:
                ti.pax_headers = {"SCHILY.xattr." + k: v.decode("latin-1") for k, v in m["xattrs"].items()}
            if "pax_mtime" in m:
                ti.pax_headers = {**ti.pax_headers, "mtime": m["pax_mtime"]}
            data = m.get("data", b"")
            if ti.type == tarfile.REGTYPE:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    raw = buf.getvalue()
    if compress == "gz":
        raw = gzip.compress(raw)
    elif compress == "zstd":
        raw = zstandard.ZstdCompressor().compress(raw)
    path.write_bytes(raw)
    return path


D = tarfile.DIRTYPE


def test_fresh_root_and_lost_found(tmp_path: Path) -> None:
    tree = expected_tree([_tar(tmp_path / "l.tar", [])])
    assert set(tree) == {"/", "/lost+found"}
    assert (tree["/"].type, tree["/"].mode, tree["/"].mtime) == ("dir", 0o755, 0)
    assert (tree["/lost+found"].mode, tree["/lost+found"].uid) == (0o700, 0)


def test_files_dirs_links_devices(tmp_path: Path) -> None:
    tar = _tar(tmp_path / "l.tar", [
        {"name": "./", "type": D, "mode": 0o1755, "uid": 5, "mtime": 1600000000},
        {"name": "a/b/file", "data": b"hello", "mode": 0o4755, "uid": 1000, "gid": 50},
        {"name": "a/hl", "type": tarfile.LNKTYPE, "link": "a/b/file", "mode": 0o4755, "uid": 1000, "gid": 50},
        {"name": "a/sym", "type": tarfile.SYMTYPE, "link": "b/file", "mode": 0o644},
        {"name": "dev/null", "type": tarfile.CHRTYPE, "dev": (1, 3), "mode": 0o666},
        {"name": "dev/sda", "type": tarfile.BLKTYPE, "dev": (8, 0), "mode": 0o660},
        {"name": "dev/fifo", "type": tarfile.FIFOTYPE},
        {"name": "empty", "data": b""},
    ])
    t = expected_tree([tar])
    assert (t["/"].mode, t["/"].uid, t["/"].mtime) == (0o1755, 5, 1600000000)
    # implied parents: 0755 root-owned, mtime 0
    assert (t["/a"].mode, t["/a"].uid, t["/a"].mtime, t["/a/b"].mtime) == (0o755, 0, 0, 0)
    f = t["/a/b/file"]
    assert (f.type, f.mode, f.uid, f.gid, f.size) == ("file", 0o4755, 1000, 50, 5)
    assert f.hardlinks == ("/a/b/file", "/a/hl") == t["/a/hl"].hardlinks
    assert (t["/a/sym"].type, t["/a/sym"].mode, t["/a/sym"].target, t["/a/sym"].size) == ("symlink", 0o777, b"b/file", 6)
    assert (t["/dev/null"].type, t["/dev/null"].rdev) == ("chr", (1, 3))
    assert (t["/dev/sda"].type, t["/dev/sda"].rdev) == ("blk", (8, 0))
    assert t["/dev/fifo"].type == "fifo"
    assert t["/empty"].sha256 == EMPTY_SHA256 and t["/dev"].size is None


def test_whiteouts_and_opaque_spare_same_layer(tmp_path: Path) -> None:
    lower = _tar(tmp_path / "1.tar", [
        {"name": "d/", "type": D, "mtime": 5},
        {"name": "d/old1", "data": b"1"},
        {"name": "d/sub/old2", "data": b"2"},
        {"name": "x/keep", "data": b"k"},
        {"name": "x/gone", "data": b"g"},
        {"name": "x/gonedir/deep", "data": b"g"},
    ])
    upper = _tar(tmp_path / "2.tar", [
        {"name": "d/before-opq", "data": b"b"},  # same layer, before the marker: kept
        {"name": "d/.wh..wh..opq"},
        {"name": "d/after-opq", "data": b"a"},
        {"name": "x/.wh.gone"},
        {"name": "x/.wh.gonedir"},
        {"name": "x/.wh.never-existed"},
        {"name": "x/.wh..wh.plnk.1234"},  # other .wh..wh. meta files are ignored
    ])
    t = expected_tree([lower, upper])
    assert sorted(p for p in t if p.startswith("/d/")) == ["/d/after-opq", "/d/before-opq"]
    assert t["/d"].mtime == 5  # the opaque directory itself stays (with its lower metadata)
    assert sorted(p for p in t if p.startswith("/x/")) == ["/x/keep"]
    assert not any(".wh." in p for p in t)


def test_replacements_and_duplicates(tmp_path: Path) -> None:
    lower = _tar(tmp_path / "1.tar", [
        {"name": "f2d", "data": b"file"},
        {"name": "d2f/", "type": D},
        {"name": "d2f/child", "data": b"c"},
        {"name": "merge/", "type": D, "mode": 0o700, "mtime": 1},
        {"name": "merge/lower", "data": b"l"},
    ])
    upper = _tar(tmp_path / "2.tar", [
        {"name": "f2d/", "type": D, "mode": 0o750},
        {"name": "f2d/inside", "data": b"i"},
        {"name": "d2f", "data": b"now a file"},
        {"name": "merge/", "type": D, "mode": 0o755, "mtime": 2},
        {"name": "dup", "data": b"first"},
        {"name": "dup", "data": b"second!"},
    ])
    t = expected_tree([lower, upper])
    assert (t["/f2d"].type, t["/f2d"].mode) == ("dir", 0o750) and "/f2d/inside" in t
    assert t["/d2f"].type == "file" and "/d2f/child" not in t
    assert (t["/merge"].mode, t["/merge"].mtime) == (0o755, 2) and "/merge/lower" in t
    assert t["/dup"].size == 7


def test_hard_link_keeps_old_inode_when_target_replaced(tmp_path: Path) -> None:
    lower = _tar(tmp_path / "1.tar", [
        {"name": "orig", "data": b"shared"},
        {"name": "second", "type": tarfile.LNKTYPE, "link": "orig"},
    ])
    upper = _tar(tmp_path / "2.tar", [
        {"name": "fourth", "type": tarfile.LNKTYPE, "link": "orig"},
        {"name": "orig", "data": b"rewritten", "mode": 0o600},
    ])
    t = expected_tree([lower, upper])
    assert t["/second"].hardlinks == ("/fourth", "/second")
    assert t["/fourth"].sha256 == t["/second"].sha256 != t["/orig"].sha256
    assert t["/orig"].hardlinks == () and t["/orig"].mode == 0o600


def test_pax_mtime_xattrs_and_compression(tmp_path: Path) -> None:
    members = [
        {"name": "frac", "data": b"x", "pax_mtime": "1700000000.75"},
        {"name": "neg", "data": b"x", "pax_mtime": "-1.25"},
        {"name": "attrs", "data": b"x", "xattrs": {"user.a": b"1", "security.capability": b"\x01\x00"}},
        {"name": "sym", "type": tarfile.SYMTYPE, "link": "attrs", "xattrs": {"user.no": b"x", "trusted.yes": b"y"}},
    ]
    for compress in (None, "gz", "zstd"):
        t = expected_tree([_tar(tmp_path / f"l-{compress}.tar", members, compress=compress)])
        assert (t["/frac"].mtime, t["/frac"].mtime_ns) == (1700000000, 750000000)
        assert (t["/neg"].mtime, t["/neg"].mtime_ns) == (-2, 750000000)
        assert t["/attrs"].xattrs == {"user.a": b"1", "security.capability": b"\x01\x00"}
        assert t["/sym"].xattrs == {"trusted.yes": b"y"}  # no user.* on symlinks (Linux refuses)


def test_hard_link_to_missing_target_is_an_error(tmp_path: Path) -> None:
    tar = _tar(tmp_path / "l.tar", [{"name": "hl", "type": tarfile.LNKTYPE, "link": "nowhere"}])
    with pytest.raises(AssertionError, match="missing"):
        expected_tree([tar])
