"""Layer-level properties: determinism, minimal upper layers, scale (100 000 files), CLI."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

from overlaybd_provider.ext4.apply import apply_layer
from overlaybd_provider.formats.blob import open_layer

from .judge import Image, assert_clean, d, export_stack, f, make_tar


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deterministic_output(tmp_path: Path) -> None:
    tar1 = tmp_path / "1.tar"
    tar1.write_bytes(make_tar([d("etc"), f("etc/a", os.urandom(70_000)), f("b", b"b", uid=5),
                               {"name": "l", "type": tarfile.SYMTYPE, "linkname": "b"}]))
    tar2 = tmp_path / "2.tar"
    tar2.write_bytes(make_tar([f("etc/.wh.a"), f("c/d", b"d" * 9000)]))
    digests = []
    for run in ("x", "y"):
        a = apply_layer([], tar1, tmp_path / f"{run}1.blob", vsize_gb=1, uuid="11111111-2222-3333-4444-555555555555")
        b = apply_layer([tmp_path / f"{run}1.blob"], tar2, tmp_path / f"{run}2.blob", vsize_gb=1)
        digests.append((a.digest, b.digest, _sha(tmp_path / f"{run}1.blob"), _sha(tmp_path / f"{run}2.blob")))
    assert digests[0] == digests[1]
    assert digests[0][0] == "sha256:" + digests[0][2]


def test_small_file_on_big_image_gives_a_tiny_layer(stack, tmp_path: Path) -> None:
    """200 MB lower image; adding one small file must store only a handful of blocks."""
    big = tmp_path / "base.tar"
    with tarfile.open(big, "w") as tf:
        for i in range(4):
            ti = tarfile.TarInfo(f"opt/blob{i}.bin")
            data = os.urandom(50 << 20)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for i in range(300):
            ti = tarfile.TarInfo(f"usr/lib/f{i}")
            tf.addfile(ti)
    base = stack.apply(big, vsize_gb=64)
    assert base.blocks_written > 50_000
    res = stack.apply([f("etc/motd", b"hello\n")])
    # superblock, descriptor block, block + inode bitmap, root's inode-table block (link count),
    # the new inodes' table block, root dir block, new /etc dir block, file data
    assert res.blocks_written <= 9, res
    img = stack.image()
    assert img.cat("/etc/motd") == b"hello\n"
    layer = open_layer(stack.blobs[-1])
    try:
        assert layer.size < 20_000
    finally:
        layer.close()


def test_hundred_thousand_files_in_one_directory(stack, tmp_path: Path) -> None:
    tar = tmp_path / "many.tar"
    n = 100_000
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo("many")
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
        for i in range(n):
            ti = tarfile.TarInfo(f"many/file-{i:06d}")
            ti.size = 4
            tf.addfile(ti, io.BytesIO(b"%04d" % (i % 10000)))
    res = stack.apply(tar, vsize_gb=2)
    assert res.files == n
    img = stack.image()
    st = img.stat("/many")
    assert st.flags & 0x1000 and st.links == 2
    listing = img.listdir("/many")
    assert len(listing) == n and "file-099999" in listing
    assert img.cat("/many/file-012345") == b"2345"
    # a second layer touching the big directory: one whiteout and one new name
    res2 = stack.apply([f("many/.wh.file-000007"), f("many/zz-new", b"z")])
    img = stack.image()
    listing = img.listdir("/many")
    assert len(listing) == n and "file-000007" not in listing and "zz-new" in listing
    # edited in place: 1-2 leaf blocks + inode/bitmap/sb metadata + the new file, not 1000+ blocks
    assert res2.blocks_written < 15, res2


def test_cli_apply_layer_raw_and_blob(tmp_path: Path, overlaybd_cmd: list[str]) -> None:
    tar = tmp_path / "l.tar"
    tar.write_bytes(make_tar([f("a", b"a")]))
    blob, raw = tmp_path / "l.blob", tmp_path / "l.lsmt"
    refused = subprocess.run([*overlaybd_cmd, "apply-layer", str(tar), str(blob), "--bs", "64"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--bs 64 is not offered" in refused.stderr and not blob.exists()
    subprocess.run([*overlaybd_cmd, "apply-layer", str(tar), str(blob), "--vsize", "1", "--algorithm", "zstd",
                    "--bs", "32"], check=True, capture_output=True)
    subprocess.run([*overlaybd_cmd, "apply-layer", "--raw", str(tar), str(raw), "--vsize", "1",
                    "--uuid", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"], check=True, capture_output=True)
    tar2 = tmp_path / "l2.tar"
    tar2.write_bytes(make_tar([f("b", b"b")]))
    top = tmp_path / "top.blob"
    out = subprocess.run([*overlaybd_cmd, "apply-layer", "--lower", str(raw), str(tar2), str(top),
                          "--parent-uuid", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", "--json"],
                         check=True, capture_output=True, text=True).stdout
    assert '"files": 1' in out
    with open(raw, "rb") as fh:
        assert fh.read(4) == b"LSMT"
    for lf_path, nesting in ((blob, ["tar", "zfile", "lsmt"]), (raw, ["lsmt"])):
        lf = open_layer(lf_path)
        try:
            assert lf.nesting == nesting
        finally:
            lf.close()
    rawimg = export_stack([raw, top], tmp_path / "s.raw")
    assert_clean(rawimg)
    img = Image(rawimg, tmp_path)
    assert img.cat("/a") == b"a" and img.cat("/b") == b"b"


class _Fill:
    """A file-like source of ``size`` bytes of one value (cheap big members)."""

    def __init__(self, size: int, byte: int) -> None:
        self.left, self.byte = size, byte

    def read(self, n: int) -> bytes:
        n = min(n, self.left)
        self.left -= n
        return bytes([self.byte]) * n


def test_space_freed_by_a_lower_layer_is_reused_after_wrap(stack, tmp_path: Path) -> None:
    """Allocation is sequential after the highest used block; when it reaches the end of the
    device it wraps and reuses blocks freed in *lower* layers (never ones freed in this one)."""
    for name, size, byte in (("a.tar", 600 << 20, 1), ("c.tar", 500 << 20, 2)):
        with tarfile.open(tmp_path / name, "w") as tf:
            ti = tarfile.TarInfo(name.replace(".tar", ".bin"))
            ti.size = size
            tf.addfile(ti, _Fill(size, byte))
    stack.apply(tmp_path / "a.tar", vsize_gb=1)
    stack.apply([f(".wh.a.bin")])
    stack.apply(tmp_path / "c.tar")
    img = stack.image()
    st = img.stat("/c.bin")
    assert st.size == 500 << 20 and st.extents.count("(") >= 4
    starts = [int(m) for m in re.findall(r"\):(\d+)-", st.extents)]
    assert min(starts) < 1000  # wrapped: reuses the first data blocks a.bin had


def test_insert_into_upstream_two_level_htree_in_place(stack, fixtures_dir: Path) -> None:
    """/srv/huge of upstream-features is a two-level htree of 120 000 names: new names go into the
    leaves its index selects (e2fsck checks every hash range), without rewriting the directory."""
    stack.blobs.append(fixtures_dir / "upstream-features" / "layer-1.blob")
    names = [f"srv/huge/new-{i:03d}-{'q' * (i % 40)}" for i in range(40)]
    res = stack.apply([f(n, b"n") for n in names])
    assert res.blocks_written < 120, res
    img = stack.image()
    st = img.stats(["/" + n for n in names[:5]])
    assert all(v is not None and v.size == 1 for v in st.values())
