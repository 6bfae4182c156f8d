"""Deliberately wrong converted images: a swapped layer, damaged metadata.

* a layer replaced by another image's layer at the same position (manifest and config
  rewritten, so the image is well-formed) must be reported as the files that changed;
* damaged metadata in an upper layer (block bitmap, group free count, link count, directory
  entry type, htree leaf order) must be caught by the structural checks alone (``--fsck
  never``), and e2fsck on an ``overlaybd export`` of the same stack (the test's own judge) must
  complain about the same thing.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
from overlaybd_provider.formats.blob import open_layer
from overlaybd_provider.formats.stack import LayerStack
from overlaybd_provider.verify.device import BlockDevice
from overlaybd_provider.verify.e2fsck import export_metadata
from overlaybd_provider.verify.ext4read import Ext4Reader
from overlaybd_provider.verify.findings import Findings
from overlaybd_provider.verify.fsck import Checker
from support.ext4img import inode_blocks, inode_offset, lookup
from support.fsjudge import e2fsck, export_stack
from support.obdimages import (
    convert,
    layer_blobs,
    patched_layer,
    read_block,
    replace_layer,
    tar_layout,
    verify_cli,
)

from .conftest import write_entries


def _top(path: Path, motd: bytes, extra: list[tuple[str, bytes, dict]]) -> Path:
    return write_entries(path, [("etc/", b"", {"typ": tarfile.DIRTYPE, "mode": 0o755}),
                                ("etc/motd", motd, {}), ("etc/hostname", b"box\n", {}), *extra])


def test_swapped_layer_is_reported_as_the_changed_files(feature_tars: list[Path], tmp_path: Path) -> None:
    base = feature_tars[0]
    top_a = _top(tmp_path / "a.tar", b"welcome to A\n", [])
    top_b = _top(tmp_path / "b.tar", b"welcome to B\n", [("etc/only-b", b"b\n", {})])
    src_a = tar_layout(tmp_path / "src-a", "v1", [base, top_a])
    src_b = tar_layout(tmp_path / "src-b", "v1", [base, top_b])
    dst_a = convert(src_a, f"oci:{tmp_path / 'dst'}:a")
    dst_b = convert(src_b, f"oci:{tmp_path / 'dst-b'}:b")
    assert verify_cli(src_a, dst_a).returncode == 0
    wrong = replace_layer(dst_a, 1, layer_blobs(dst_b)[1], "a-with-b-top")
    proc = verify_cli(src_a, wrong)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == ("2 differences: 0 mtime, 1 content, 0 size, 0 missing, 1 extra, 0 type, 0 mode, 0 owner, "
                        "0 xattr, 0 symlink, 0 hardlink, 0 device, 0 filesystem")
    assert re.fullmatch(r"/etc/motd: content sha256 [0-9a-f]{16}\.\.\. in source, [0-9a-f]{16}\.\.\. in image", lines[1])
    assert lines[2] == "/etc/only-b: file in the image, not in the source"


def test_layer_from_another_base_breaks_the_filesystem(feature_images, feature_tars, tmp_path: Path) -> None:
    """The features image's top layer on top of a different lower: metadata of two filesystems mixed."""
    src, dst = feature_images
    other = tar_layout(tmp_path / "other-src", "v1", [_top(tmp_path / "t.tar", b"x\n", [])])
    other_dst = convert(other, f"oci:{tmp_path / 'other'}:v1")
    wrong = replace_layer(dst, 0, layer_blobs(other_dst)[0], "other-base")
    proc = verify_cli(src, wrong, "--fsck", "never")
    assert proc.returncode == 1, proc.stderr
    summary = proc.stdout.splitlines()[0]
    assert int(re.search(r"(\d+) filesystem", summary).group(1)) > 0
    assert int(re.search(r"(\d+) missing", summary).group(1)) > 0


# ------------------------------------------------------------------------------- damaged metadata

def _u32(data: bytes, off: int) -> int:
    return struct.unpack_from("<I", data, off)[0]


def _group0(raw: Path) -> dict[str, int]:
    out = subprocess.run(["dumpe2fs", str(raw)], capture_output=True, text=True, check=True).stdout
    g0 = out.split("\nGroup 1:")[0].split("\nGroup 0:")[1]
    return {"block_bitmap": int(re.search(r"Block bitmap at (\d+)", g0).group(1)),
            "free": int(re.search(r"(\d+) free blocks", g0).group(1))}


def _damage(kind: str, blobs: list[Path], raw: Path) -> dict[int, bytes]:
    """{block: new content} for one kind of damage, located with e2fsprogs on the clean export."""
    if kind == "block-bitmap":
        target = inode_blocks(raw, lookup(raw, "/srv/bin-ping"))[0]
        g = _group0(raw)
        assert target < 32768
        block = bytearray(read_block(blobs, g["block_bitmap"]))
        block[target // 8] &= ~(1 << (target % 8))
        return {g["block_bitmap"]: bytes(block)}
    if kind == "free-count":
        block = bytearray(read_block(blobs, 1))  # group descriptor table, group 0 first
        struct.pack_into("<H", block, 12, struct.unpack_from("<H", block, 12)[0] + 5)
        return {1: bytes(block)}
    if kind == "link-count":
        off = inode_offset(raw, lookup(raw, "/srv/suid/inside"))
        block = bytearray(read_block(blobs, off // 4096))
        struct.pack_into("<H", block, off % 4096 + 26, 2)
        return {off // 4096: bytes(block)}
    if kind == "dirent-type":
        blk = inode_blocks(raw, lookup(raw, "/srv/links"))[0]
        block = bytearray(read_block(blobs, blk))
        pos = 0
        while pos < 4096:  # the first entry after '.' and '..'
            rec_len, name_len = struct.unpack_from("<HB", block, pos + 4)
            name = bytes(block[pos + 8:pos + 8 + name_len])
            if name not in (b".", b".."):
                block[pos + 7] = 5  # FIFO
                break
            pos += rec_len
        return {blk: bytes(block)}
    if kind == "htree-leaf":
        blocks = inode_blocks(raw, lookup(raw, "/srv/big"))
        a, b = read_block(blobs, blocks[1]), read_block(blobs, blocks[2])
        return {blocks[1]: b, blocks[2]: a}  # two leaves swapped: names outside their hash range
    raise AssertionError(kind)


CASES = {
    # kind: (our structural finding, e2fsck's message)
    "block-bitmap": (r"block bitmap differences in group 0: 1 in use but marked free \(first \d+\)",
                     r"Block bitmap differences:\s+\+\d+"),
    "free-count": (r"free blocks count wrong for group 0 \(\d+, counted=\d+\)",
                   r"Free blocks count wrong for group #0 \(\d+, counted=\d+\)"),
    "link-count": (r"inode \d+ ref count is 2, should be 1", r"Inode \d+ ref count is 2, should be 1"),
    "dirent-type": (r"directory entry file type 5 does not match", r"has an incorrect filetype \(was 5, should be 1\)"),
    "htree-leaf": (r"leaf block #\d+ holds names hashing outside its index range", r"has bad (min|max) hash"),
}


@pytest.fixture(scope="module")
def clean_export(feature_images, tmp_path_factory) -> Path:
    _src, dst = feature_images
    raw = tmp_path_factory.mktemp("clean") / "image.raw"
    export_stack(layer_blobs(dst), raw)
    rc, text = e2fsck(raw)
    assert rc == 0, text
    return raw


@pytest.mark.parametrize("kind", sorted(CASES))
def test_damaged_metadata_is_caught_and_e2fsck_agrees(kind: str, feature_images, clean_export: Path,
                                                      tmp_path: Path) -> None:
    src, dst = feature_images
    blobs = layer_blobs(dst)
    patches = _damage(kind, blobs, clean_export)
    damaged_top = patched_layer(blobs, tmp_path / "damaged.blob", patches)
    wrong = replace_layer(dst, len(blobs) - 1, damaged_top, f"damaged-{kind}")
    ours, theirs = CASES[kind]

    proc = verify_cli(src, wrong, "--fsck", "never", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (plat,) = json.loads(proc.stdout)["platforms"]
    problems = [d["text"] for d in plat["differences"] if d["category"] == "filesystem"]
    assert any(re.search(ours, ln) for ln in problems), problems
    assert plat["e2fsck"]["ran"] is False

    raw = tmp_path / "damaged.raw"
    export_stack([*blobs[:-1], damaged_top], raw)
    rc, text = e2fsck(raw)
    assert rc == 4 and re.search(theirs, text), text

    if kind != "htree-leaf":  # one structural finding per e2fsck problem, the same numbers
        assert len(problems) == len(re.findall(r"^(?!Pass |e2fsck |Fix\? |.*\*{5}|.* files \()\S.*$", text,
                                              re.M)), (problems, text)
    if kind in ("free-count", "link-count"):  # and the same numbers (inode, counts)
        numbers = lambda text: sorted(re.findall(r"\d+", text))  # noqa: E731
        theirs_lines = [ln for ln in text.splitlines() if re.search(CASES[kind][1], ln)]
        assert numbers(" ".join(problems)) == numbers(" ".join(theirs_lines)), (problems, text)

    both = verify_cli(src, wrong, "--fsck", "always", "--json")
    assert both.returncode == 1
    (plat,) = json.loads(both.stdout)["platforms"]
    assert plat["e2fsck"]["exit_code"] == 4
    assert any(re.search(theirs, ln) for ln in plat["e2fsck"]["problems"]), plat["e2fsck"]["problems"]
    assert any(re.search(ours, d["text"]) for d in plat["differences"])


def _metadata_export(blobs: list[Path], out: Path) -> Path:
    """What ``--fsck`` gives e2fsck: the blocks pass 1 found to be metadata, file data left as holes."""
    files = [open_layer(b) for b in blobs]
    try:
        dev = BlockDevice(LayerStack([f.lsmt for f in files], check_chain=False))
        checker = Checker(Ext4Reader(dev), Findings())
        checker.scan()
        export_metadata(dev, checker.export_runs, out)
    finally:
        for f in files:
            f.close()
    return out


@pytest.mark.parametrize("kind", [None, "block-bitmap", "link-count", "htree-leaf"])
def test_e2fsck_says_the_same_on_the_metadata_export_as_on_the_full_disk(kind, feature_images, clean_export: Path,
                                                                        tmp_path: Path) -> None:
    """The premise of the metadata-only export: e2fsck never reads file data, so its verdict on the
    export equals its verdict on the whole merged disk (``overlaybd export``), word for word."""
    _src, dst = feature_images
    blobs = layer_blobs(dst)
    if kind is not None:
        blobs = [*blobs[:-1], patched_layer(blobs, tmp_path / "damaged.blob", _damage(kind, blobs, clean_export))]
    full = export_stack(blobs, tmp_path / "full.raw")
    meta = _metadata_export(blobs, tmp_path / "meta.raw")
    assert meta.stat().st_blocks * 512 < full.stat().st_blocks * 512 / 2  # much less on disk
    (rc_full, text_full), (rc_meta, text_meta) = e2fsck(full), e2fsck(meta)
    assert (rc_meta, text_meta.replace(str(meta), "IMAGE")) == (rc_full, text_full.replace(str(full), "IMAGE"))
    assert rc_full == (0 if kind is None else 4)
