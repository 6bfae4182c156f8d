"""The image oracle itself, proven on mke2fs-made images and on upstream's converted layers."""

from __future__ import annotations

import io
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support import ext4img
from support.fsjudge import (
    EMPTY_SHA256,
    Node,
    assert_e2fsck_clean,
    assert_trees_equal,
    diff_trees,
    expected_tree,
    export_available,
    export_stack,
    read_tree,
    run_debugfs,
)

T0 = 1_600_000_000


def _populate(src: Path) -> None:
    (src / "d/sub").mkdir(parents=True)
    (src / "d/sub/file").write_bytes(b"content\n" * 1000)
    (src / "empty").write_bytes(b"")
    (src / 'we ird "q" \u00e9\udcff').write_bytes(b"odd name")  # space, quotes, UTF-8, a raw 0xff byte
    os.link(src / "d/sub/file", src / "hard")
    os.symlink("d/sub/file", src / "fast")
    os.symlink("/" + "v" * 299, src / "slow")
    os.mkfifo(src / "fifo")
    os.mknod(src / "null", 0o20666, os.makedev(1, 3))
    os.chmod(src / "null", 0o666)  # mknod honours the umask
    os.mknod(src / "sda", 0o60660, os.makedev(259, 300))
    (src / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "suid", 0o4755)
    (src / "sticky").mkdir()
    os.chmod(src / "sticky", 0o1777)
    (src / "setgid").mkdir()
    os.chmod(src / "setgid", 0o2770)
    os.chown(src / "setgid", 1000, 50)
    os.chown(src / "d/sub/file", 1000, 1001)
    os.setxattr(src / "empty", "user.small", b"s")
    os.setxattr(src / "empty", "trusted.big", b"B" * 3000)
    os.setxattr(src / "d", "security.capability", bytes.fromhex("0100000200200000000000000000000000000000"))
    for p in [*src.rglob("*"), src]:
        os.utime(p, (T0, T0), follow_symlinks=False)


@pytest.fixture(scope="module")
def mke2fs_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("judge")
    src = tmp / "src"
    src.mkdir()
    _populate(src)
    img = ext4img.make_image(tmp / "judge.img", size="32M", src_dir=src)
    assert_e2fsck_clean(img)
    return img


def test_read_tree_sees_everything(mke2fs_image: Path) -> None:
    t = read_tree(mke2fs_image)
    assert set(t) == {
        "/", "/lost+found", "/d", "/d/sub", "/d/sub/file", "/empty", "/hard", "/fast", "/slow",
        "/fifo", "/null", "/sda", "/suid", "/sticky", "/setgid", '/we ird "q" \u00e9\udcff',
    }
    assert t['/we ird "q" \u00e9\udcff'].size == 8
    f = t["/d/sub/file"]
    assert (f.type, f.uid, f.gid, f.size, f.mtime, f.mtime_ns) == ("file", 1000, 1001, 8000, T0, 0)
    import hashlib

    assert f.sha256 == hashlib.sha256(b"content\n" * 1000).hexdigest()
    assert f.hardlinks == ("/d/sub/file", "/hard") == t["/hard"].hardlinks
    assert t["/empty"].sha256 == EMPTY_SHA256
    assert t["/empty"].xattrs == {"user.small": b"s", "trusted.big": b"B" * 3000}
    assert t["/d"].xattrs == {"security.capability": bytes.fromhex("0100000200200000000000000000000000000000")}
    assert (t["/fast"].type, t["/fast"].target, t["/fast"].mode) == ("symlink", b"d/sub/file", 0o777)
    assert (t["/slow"].target, t["/slow"].size) == (b"/" + b"v" * 299, 300)
    assert t["/fifo"].type == "fifo"
    assert (t["/null"].type, t["/null"].rdev, t["/null"].mode) == ("chr", (1, 3), 0o666)
    assert (t["/sda"].type, t["/sda"].rdev) == ("blk", (259, 300))
    assert t["/suid"].mode == 0o4755 and t["/sticky"].mode == 0o1777
    assert (t["/setgid"].mode, t["/setgid"].uid, t["/setgid"].gid) == (0o2770, 1000, 50)
    assert t["/lost+found"].mode == 0o700 and t["/d"].size is None


def test_read_tree_decodes_nanoseconds_and_epoch_bits(tmp_path: Path, mke2fs_image: Path) -> None:
    img = tmp_path / "copy.img"
    img.write_bytes(mke2fs_image.read_bytes())
    ino = ext4img.lookup(img, "/empty")
    # extra = nsec << 2 | epoch bits: 750 ms, epoch 1 → seconds + 2**32
    run_debugfs(img, [f"sif <{ino}> mtime 0x10", f"sif <{ino}> mtime_extra {(750_000_000 << 2) | 1:#x}"], write=True)
    node = read_tree(img)["/empty"]
    assert (node.mtime, node.mtime_ns) == (0x10 + (1 << 32), 750_000_000)
    run_debugfs(img, [f"sif <{ino}> mtime 0xffffffff", f"sif <{ino}> mtime_extra 0"], write=True)
    assert read_tree(img)["/empty"].mtime == -1


def test_e2fsck_judge_has_teeth(tmp_path: Path, mke2fs_image: Path) -> None:
    img = tmp_path / "broken.img"
    img.write_bytes(mke2fs_image.read_bytes())
    ino = ext4img.lookup(img, "/d/sub/file")
    run_debugfs(img, [f"sif <{ino}> links_count 7"], write=True)
    with pytest.raises(pytest.fail.Exception, match="not clean"):
        assert_e2fsck_clean(img)


def test_diff_reports_fields_and_honours_allowances() -> None:
    base = Node(type="file", mode=0o644, uid=0, gid=0, mtime=5, size=1, sha256="aa")
    actual = {"/": Node(type="dir", mode=0o755, uid=0, gid=0, mtime=0), "/f": base, "/extra": base}
    expected = {
        "/": Node(type="dir", mode=0o755, uid=0, gid=0, mtime=0),
        "/f": Node(type="file", mode=0o600, uid=0, gid=0, mtime=4, mtime_ns=5, size=1, sha256="aa"),
        "/missing": base,
    }
    diffs = diff_trees(actual, expected)
    assert "/extra: unexpected file in the image" in diffs
    assert "/missing: missing from the image (expected file)" in diffs
    assert "/f: mode is 0o644, expected 0o600" in diffs
    assert any(d.startswith("/f: mtime is 5") for d in diffs)
    allow = {"/f": {"mode": 0o644, "mtime": 5, "mtime_ns": 0}}
    assert diff_trees(actual, expected, allow=allow, ignore=lambda p: p in ("/extra", "/missing")) == []
    with pytest.raises(pytest.fail.Exception, match="difference"):
        assert_trees_equal(actual, expected)
    # the inode number is informational only
    assert Node(type="fifo", mode=0, uid=0, gid=0, mtime=0, inode=5) == Node(type="fifo", mode=0, uid=0, gid=0, mtime=0)


def test_model_and_reader_agree_on_an_extracted_tar(tmp_path: Path) -> None:
    """tar → extracted by tarfile → mke2fs -d → read_tree equals expected_tree of the same tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(name: str, typ: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: object) -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mtime, ti.mode = typ, T0, kw.get("mode", 0o644)
            ti.uid, ti.gid = kw.get("uid", 0), kw.get("gid", 0)
            ti.linkname = kw.get("link", "")
            ti.devmajor, ti.devminor = kw.get("dev", (0, 0))
            if "xattrs" in kw:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in kw["xattrs"].items()}
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if typ == tarfile.REGTYPE else None)

        add("etc/", tarfile.DIRTYPE, mode=0o755)
        add("etc/passwd", data=b"root:x:0:0\n", uid=0)
        add("home/", tarfile.DIRTYPE, mode=0o755)
        add("home/u/", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000)
        add("home/u/notes", data=b"n" * 5000, uid=1000, gid=1000, xattrs={"user.tag": "v"})
        add("home/u/link", tarfile.LNKTYPE, link="home/u/notes", uid=1000, gid=1000)
        add("bin/", tarfile.DIRTYPE, mode=0o755)
        add("bin/sh", data=b"\x7fELF", mode=0o4755)
        add("bin/ash", tarfile.SYMTYPE, link="sh", mode=0o777)
        add("dev/", tarfile.DIRTYPE, mode=0o755)
        add("dev/zero", tarfile.CHRTYPE, mode=0o666, dev=(1, 5))
    tar = tmp_path / "layer.tar"
    tar.write_bytes(buf.getvalue())
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(tar) as tf:
        tf.extractall(src, numeric_owner=True, filter="fully_trusted")
    # what tarfile's extractor does not restore: xattrs and symlink times
    os.setxattr(src / "home/u/notes", "user.tag", b"v")
    os.utime(src / "bin/ash", (T0, T0), follow_symlinks=False)
    for d in ("etc", "home", "home/u", "bin", "dev"):
        os.utime(src / d, (T0, T0))
    img = ext4img.make_image(tmp_path / "x.img", size="16M", src_dir=src)
    assert_e2fsck_clean(img)
    actual = read_tree(img)
    expected = expected_tree([tar])
    # mke2fs -d gives '/' and lost+found its own (current) times
    assert_trees_equal(actual, expected, ignore=lambda p: p in ("/", "/lost+found"))
    assert actual["/home/u/notes"].hardlinks == ("/home/u/link", "/home/u/notes")


# ------------------------------------------------------------------ upstream's converted images

pytestmark_export = pytest.mark.skipif(not export_available(), reason="`overlaybd export` not available yet")


@pytestmark_export
def test_upstream_2layer_matches_model(fixtures_dir: Path, tmp_path: Path) -> None:
    fx = fixtures_dir / "upstream-2layer"
    raw = export_stack([fx / "layer-1.blob", fx / "layer-2.blob"], tmp_path / "stack.raw")
    assert_e2fsck_clean(raw)
    actual = read_tree(raw)
    assert_trees_equal(actual, expected_tree([fx / "layer1.tar", fx / "layer2.tar"]))
    assert actual["/data/xattr-file"].xattrs == {"user.test": b"hello-xattr"}
    assert "/data/delete-me" not in actual


# upstream ignores PAX mtime and keeps the rounded ustar field (fixtures README); the
# correct value is 1700000000 s + 750000000 ns. This is the only allowed deviation.
UPSTREAM_FEATURES_DEVIATIONS = {"/srv/frac-mtime": {"mtime": 1700000001, "mtime_ns": 0}}


@pytestmark_export
def test_upstream_features_match_model(fixtures_dir: Path, upstream_features_raw: Path) -> None:
    fx = fixtures_dir / "upstream-features"
    raw = upstream_features_raw
    with ThreadPoolExecutor(1) as pool:  # the model runs while debugfs and e2fsck work
        model = pool.submit(expected_tree, [fx / "feat1.tar.gz", fx / "feat2.tar.gz"])
        assert_e2fsck_clean(raw)
        actual = read_tree(raw)
        expected = model.result()
    assert_trees_equal(actual, expected, allow=UPSTREAM_FEATURES_DEVIATIONS)
    # and the allowance is really needed (the model is right, upstream is not)
    assert len(diff_trees(actual, expected)) == 2
    assert len([p for p in actual if p.startswith("/srv/huge/")]) == 119_999
    links = actual["/srv/links/second"].hardlinks
    assert links == ("/srv/fourth-link", "/srv/links/second", "/srv/third-link")
    assert actual["/srv/links/orig"].hardlinks == ()
    assert actual["/srv/bin-ping"].xattrs["security.capability"][:4] == b"\x01\x00\x00\x02"
    assert actual["/srv/x/after-opq"].type == "file" and "/srv/x/big-xattr" not in actual
