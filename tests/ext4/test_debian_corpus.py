"""Issue #3 evidence: realistic corpora through ``apply_layer``, judged by e2fsprogs and the OCI model.

Every stack is exported, ``e2fsck -fn`` must be clean and the tree read back through debugfs
must equal :func:`support.fsjudge.expected_tree` of the source tars (an independent model of
the changeset rules). Corpora: a three-layer image from real Debian packages
(:mod:`support.debimage`) plus its layer 1 re-applied on top, a directory of 100 000 files, a 520 MiB file (depth-1 extent
tree), a one-file layer over big stacks (its size), rebuild determinism, and our layers over
upstream's converted layers. Timings are printed (``pytest -s``).
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from overlaybd_provider.ext4.apply import ApplyResult, apply_layer
from overlaybd_provider.formats.blob import open_layer
from support.debcorpus import CAP_NET_RAW_EP, Entry, write_layer_tar
from support.debimage import DebianImage, build_debian_image
from support.fsjudge import (
    assert_e2fsck_clean,
    assert_trees_equal,
    expected_tree,
    export_stack,
    read_tree,
    run_debugfs,
)
from support.paths import overlaybd_cli

MIB = 1 << 20


@dataclass
class Stack:
    """Blobs applied bottom first, with their tars and results."""

    work: Path
    blobs: list[Path] = field(default_factory=list)
    tars: list[Path] = field(default_factory=list)
    results: list[ApplyResult] = field(default_factory=list)

    def apply(self, tar: Path, *, vsize_gb: int = 64) -> ApplyResult:
        out = self.work / f"layer{len(self.blobs) + 1}.blob"
        res = apply_layer(self.blobs, tar, out, vsize_gb=vsize_gb)
        self.blobs.append(out)
        self.tars.append(tar)
        self.results.append(res)
        return res


def judge(blobs: list[Path], tars: list[Path], raw: Path, **diff_kw) -> dict:
    """Export, e2fsck, and compare the image's tree with the model (run while debugfs works)."""
    export_stack(blobs, raw)
    with ThreadPoolExecutor(1) as pool:
        model = pool.submit(expected_tree, tars)
        assert_e2fsck_clean(raw)
        actual = read_tree(raw)
        expected = model.result()
    assert_trees_equal(actual, expected, **diff_kw)
    return actual


def mapped_bytes(blob: Path) -> int:
    """Data bytes a layer maps (its LSMT entries, zero entries excluded)."""
    with open_layer(blob) as lf:
        return sum(e.length for e in lf.lsmt.entries() if not e.zeroed) * 512


def extent_levels(raw: Path, path: str) -> tuple[int, int]:
    """(tree depth, number of leaf extents) from debugfs ``ex`` ("LEVEL/ DEPTH  ENTRY/ ENTRIES ...")."""
    out = run_debugfs(raw, [f"ex {path}"])
    rows = [(int(m[1]), int(m[2])) for ln in out.splitlines() if (m := _EX_ROW.match(ln))]
    depth = max((d for _lvl, d in rows), default=0)
    return depth, sum(1 for lvl, d in rows if lvl == d)


_EX_ROW = re.compile(r"^\s*(\d+)/\s*(\d+)\s+\d+/\s*\d+\s")


# ---------------------------------------------------------------------------------- Debian image

@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> tuple[DebianImage, Stack]:
    work = tmp_path_factory.mktemp("debian")
    t0 = time.monotonic()
    image = build_debian_image(work)
    print(f"\n[corpus] debian tars built in {time.monotonic() - t0:.1f}s: "
          + ", ".join(f"{t.name} {t.stat().st_size / MIB:.1f} MiB" for t in image.tars))
    stack = Stack(work)
    # layer 4 re-applies layer 1 ("reinstall the base"): every replacement of layer 3 undone
    for tar in [*image.tars, image.tars[0]]:
        res = stack.apply(tar)
        print(f"[corpus] {tar.name}: {res.entries} entries, {res.blocks_written} blocks, "
              f"blob {res.size / MIB:.1f} MiB, {res.seconds:.1f}s")
    return image, stack


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
def test_debian_image_after_each_layer(debian: tuple[DebianImage, Stack], tmp_path: Path, layers: int) -> None:
    image, stack = debian
    t0 = time.monotonic()
    tree = judge(stack.blobs[:layers], stack.tars[:layers], tmp_path / "stack.raw")
    print(f"[corpus] debian stack of {layers}: {len(tree)} paths judged in {time.monotonic() - t0:.1f}s")
    assert len(tree) > 1000  # layer 3 deletes most of the docs, zoneinfo and perl
    perl, perl_link = (f"/{p}" for p in image.perl_links)
    gz, gz_link = (f"/{p}" for p in image.gzip_links)
    if layers == 1:
        assert tree[perl].hardlinks == tuple(sorted((perl, perl_link)))
        assert tree["/var/local"].mode == 0o2775 and tree["/var/local"].gid == 50
        assert tree["/etc/localtime"].type == "symlink"
        assert sum(1 for p, n in tree.items() if p.startswith("/usr/share/zoneinfo/") and n.type == "symlink") > 100
    elif layers in (2, 4):
        assert tree[f"/{image.ping}"].xattrs == {"security.capability": CAP_NET_RAW_EP}
        assert tree[gz_link].hardlinks == (() if layers == 4 else tuple(sorted((gz, gz_link))))
        links = [n for p, n in tree.items() if p.startswith("/etc/ssl/certs/") and n.type == "symlink"]
        assert len(links) == image.cert_links > 100
        assert sum(1 for n in links if len(n.target) > 59) > 50  # block symlinks
    if layers == 4:  # symlink -> directory, file -> directory tree, hard link -> symlink
        assert tree["/sbin"].type == "dir" and tree[f"/{image.perl_dir}"].type == "dir"
        assert tree["/bin/sh"].type == "symlink" and tree["/bin/dash"].hardlinks == ()
        assert tree[perl].hardlinks == tuple(sorted((perl, perl_link)))
    elif layers == 3:
        assert perl_link not in tree and tree[perl].hardlinks == ()
        assert gz not in tree and tree[gz_link].hardlinks == ()
        assert not any(p.startswith("/usr/share/man") for p in tree)
        assert sorted(p for p in tree if p.startswith("/usr/share/zoneinfo/")) == [
            "/usr/share/zoneinfo/Etc", "/usr/share/zoneinfo/Etc/UTC", "/usr/share/zoneinfo/UTC"]
        assert [p for p in tree if p.startswith("/usr/share/doc/")] == ["/usr/share/doc/README.layer3"]
        assert tree[f"/{image.perl_dir}"].type == "file"
        assert tree["/etc/issue.net"].type == "dir" and tree["/etc/localtime"].type == "file"
        assert tree["/bin/sh"].hardlinks == ("/bin/dash", "/bin/sh")
        assert tree["/bin/bash"].hardlinks == ("/bin/bash", "/usr/local/bin/bash-hl")
        assert tree["/usr/local"].mtime == 0 and tree["/var/local"].mode == 0o2770
        assert tree["/sbin"].target == b"usr/sbin" and not any(p.startswith("/sbin/") for p in tree)


def test_debian_rebuild_is_deterministic(debian: tuple[DebianImage, Stack], tmp_path: Path) -> None:
    """The same tar over the same lowers gives the same blob (mkfs layer included), through the
    API and the CLI, with either compression; and the corpus builder itself is reproducible."""
    image, stack = debian
    for i in (0, 1):
        again = apply_layer(stack.blobs[:i], stack.tars[i], tmp_path / f"l{i + 1}-again.blob", vsize_gb=64)
        assert again.digest == stack.results[i].digest
    zstd = [apply_layer(stack.blobs[:2], stack.tars[2], tmp_path / f"l3-zstd{k}.blob", algorithm="zstd",
                        block_size_kb=64).digest for k in (1, 2)]
    assert zstd[0] == zstd[1] != stack.results[2].digest
    cli = tmp_path / "l3-cli.blob"
    subprocess.run([*overlaybd_cli(), "apply-layer", *(a for b in stack.blobs[:2] for a in ("--lower", str(b))),
                    str(stack.tars[2]), str(cli)], check=True, capture_output=True)
    assert "sha256:" + hashlib.sha256(cli.read_bytes()).hexdigest() == stack.results[2].digest
    rebuilt = build_debian_image(tmp_path / "again")
    assert [hashlib.sha256(t.read_bytes()).digest() for t in rebuilt.tars] == \
        [hashlib.sha256(t.read_bytes()).digest() for t in image.tars]


def test_one_file_layer_over_debian_image_is_small(debian: tuple[DebianImage, Stack], tmp_path: Path) -> None:
    _image, stack = debian
    tar = write_layer_tar(tmp_path / "one.tar", None, [Entry("etc/motd", data=b"hello from the top\n")])
    out = tmp_path / "one.blob"
    res = apply_layer(stack.blobs, tar, out)
    mapped = mapped_bytes(out)
    print(f"[corpus] one-file layer over the debian image: {res.blocks_written} blocks, {mapped} bytes mapped, "
          f"blob {res.size} bytes")
    assert mapped < 64 * 1024
    tree = judge([*stack.blobs, out], [*stack.tars, tar], tmp_path / "s.raw")
    assert tree["/etc/motd"].size == len(b"hello from the top\n")


# ---------------------------------------------------------------------------------- 100 000 files

def _many_tar(path: Path, entries: list[tuple[str, bytes | None]]) -> Path:
    """Plain ustar members (as most layer tars are); data None = whiteout-style empty file."""
    with open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in entries:
            ti = tarfile.TarInfo(name)
            if name.endswith("/"):
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                tf.addfile(ti)
                continue
            body = data or b""
            ti.size, ti.mode, ti.mtime, ti.uid = len(body), 0o644, 1_700_000_000 + len(name), 100
            tf.addfile(ti, io.BytesIO(body))
    return path


def _object_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.mark.slow
def test_directory_of_100k_files(tmp_path: Path) -> None:
    """A content-addressed cache: 100 000 files with 64-hex names in one directory (a
    two-level htree), then a layer that whites out a tenth, rewrites 1 000 and adds 5 000."""
    n, objects = 100_000, "var/cache/objects/"
    names = [_object_name(str(i)) for i in range(n)]
    files = sorted((objects + h, b"" if i % 4 == 0 else f"object {i}\n".encode() * (i % 5 + 1))
                   for i, h in enumerate(names))
    tar1 = _many_tar(tmp_path / "many1.tar", [("var/", None), ("var/cache/", None), (objects, None), *files])
    changes = [(f"{objects}.wh.{names[i]}", None) for i in range(0, n, 10)]
    changes += [(objects + names[i], b"rewritten\n") for i in range(5, n, 100)]
    changes += [(objects + _object_name(f"new {i}"), f"new {i}\n".encode()) for i in range(5000)]
    tar2 = _many_tar(tmp_path / "many2.tar", sorted(changes))
    stack = Stack(tmp_path)
    r1 = stack.apply(tar1, vsize_gb=4)
    r2 = stack.apply(tar2)
    print(f"\n[corpus] 100k files: layer 1 {r1.seconds:.1f}s ({r1.entries / r1.seconds:.0f} entries/s), "
          f"layer 2 ({r2.entries} entries over 100k) {r2.seconds:.1f}s")
    # quadratic behaviour would take many minutes here; linear is 15-25 s on a loaded 2-core machine
    assert r1.seconds < 150 and r2.seconds < 90
    tree = judge(stack.blobs, stack.tars, tmp_path / "two.raw")
    dump = run_debugfs(tmp_path / "two.raw", [f"htree_dump /{objects}"], allow_errors=True)
    assert "Indirect levels: 1" in dump  # e2fsck has checked the two-level htree
    assert len([p for p in tree if p.startswith("/" + objects)]) == n - n // 10 + 5000
    assert tree[f"/{objects}{names[5]}"].size == len(b"rewritten\n") and f"/{objects}{names[10]}" not in tree


# ---------------------------------------------------------------------------------- big file

BIG_BLOCKS = 133_120  # 520 MiB: more than 4 groups' data areas -> at least 5 extents


def _big_tar(path: Path, name: str, blocks: int) -> str:
    """One file whose every 4 KiB block is distinct (block number stamped), returns its sha256."""
    pattern = bytes(range(256)) * 16
    digest = hashlib.sha256()
    with open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = blocks * 4096, 0o640, 1_700_000_000
        tf.addfile(ti, _Blocks(blocks, pattern, digest))
    return digest.hexdigest()


class _Blocks(io.RawIOBase):
    def __init__(self, blocks: int, pattern: bytes, digest) -> None:
        self.blocks, self.pattern, self.digest, self.pos = blocks, pattern, digest, 0

    def read(self, n: int = -1) -> bytes:
        end = min(self.blocks * 4096, self.pos + n)
        first, last = self.pos // 4096, -(-end // 4096)
        buf = b"".join(b.to_bytes(8, "little") + self.pattern[8:] for b in range(first, last))
        out = buf[self.pos - first * 4096 : end - first * 4096]
        self.pos = end
        self.digest.update(out)
        return out


@pytest.fixture(scope="module")
def big_stack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Stack, str]:
    work = tmp_path_factory.mktemp("big")
    sha = _big_tar(work / "big.tar", "srv/blob.bin", BIG_BLOCKS)
    stack = Stack(work)
    res = stack.apply(work / "big.tar", vsize_gb=1)
    (work / "big.tar").unlink()  # the model would re-hash it: keep the digest instead
    print(f"\n[corpus] 520 MiB file: apply {res.seconds:.1f}s, blob {res.size / MIB:.1f} MiB")
    return stack, sha


@pytest.mark.slow
def test_big_file_depth1_extent_tree(big_stack: tuple[Stack, str], tmp_path: Path) -> None:
    stack, sha = big_stack
    raw = export_stack(stack.blobs, tmp_path / "big.raw")
    assert_e2fsck_clean(raw)
    depth, leaves = extent_levels(raw, "/srv/blob.bin")
    assert depth == 1 and leaves >= 5, (depth, leaves)
    tree = read_tree(raw)
    node = tree["/srv/blob.bin"]
    assert (node.size, node.mode, node.sha256) == (BIG_BLOCKS * 4096, 0o640, sha)


def test_one_file_layer_over_big_image_is_small(big_stack: tuple[Stack, str], tmp_path: Path) -> None:
    stack, _sha = big_stack
    tar = write_layer_tar(tmp_path / "one.tar", None, [Entry("srv/note.txt", data=b"small\n")])
    out = tmp_path / "one.blob"
    res = apply_layer(stack.blobs, tar, out)
    mapped = mapped_bytes(out)
    print(f"[corpus] one-file layer over 520 MiB: {res.blocks_written} blocks, {mapped} bytes mapped")
    assert mapped < 64 * 1024
    raw = export_stack([*stack.blobs, out], tmp_path / "s.raw")
    assert_e2fsck_clean(raw)
    assert run_debugfs(raw, ["cat /srv/note.txt"]).endswith("\nsmall\n")


# ---------------------------------------------------------------------------------- mixed stacks

def test_our_layer_on_upstream_2layer_base(debian: tuple[DebianImage, Stack], fixtures_dir: Path,
                                           tmp_path: Path) -> None:
    """Layer 2 of the Debian image, plus changes to upstream's files, over upstream's layer 1."""
    image, _stack = debian
    fx = fixtures_dir / "upstream-2layer"
    t = 1_700_000_100
    tar = write_layer_tar(tmp_path / "ours.tar", image.roots[1], [
        Entry("data/.wh.big.bin"),
        Entry("data/keep/", tarfile.DIRTYPE, mode=0o755, mtime=t),  # file -> directory
        Entry("data/keep/inside", data=b"now a directory\n", mtime=t),
        Entry("home/user", data=b"directory -> file\n", uid=1000, gid=1000, mtime=t),
        Entry("opq/.wh..wh..opq"),
        Entry("opq/fresh", data=b"only me\n", mtime=t),
        Entry("etc/motd", data=b"motd from our layer\n", mtime=t),
        Entry("usr/bin/tool-third", tarfile.LNKTYPE, linkname="usr/bin/tool", mode=0o755,
              mtime=1_699_999_999),  # a third name for upstream's hard-linked inode
        Entry("data/xattr-file", data=b"rewritten\n", xattrs={"user.test": b"v2", "trusted.x": b"y"}, mtime=t),
    ], xattrs={image.ping: {"security.capability": CAP_NET_RAW_EP}})
    stack = Stack(tmp_path, blobs=[fx / "layer-1.blob"], tars=[fx / "layer1.tar"])
    res = stack.apply(tar)
    print(f"\n[corpus] our layer over upstream-2layer/layer-1: {res.entries} entries, {res.seconds:.1f}s")
    tree = judge(stack.blobs, stack.tars, tmp_path / "mixed.raw")
    assert tree["/usr/bin/tool"].hardlinks == ("/usr/bin/tool", "/usr/bin/tool-hardlink", "/usr/bin/tool-third")
    assert tree[f"/{image.ping}"].xattrs == {"security.capability": CAP_NET_RAW_EP}
    assert "/data/big.bin" not in tree and tree["/home/user"].type == "file"


# upstream stores the rounded ustar mtime instead of PAX mtime 1700000000.75 (fixtures README)
UPSTREAM_FEATURES_DEVIATIONS = {"/srv/frac-mtime": {"mtime": 1700000001, "mtime_ns": 0}}


@pytest.mark.slow
def test_our_layer_on_upstream_features_stack(debian: tuple[DebianImage, Stack], fixtures_dir: Path,
                                              tmp_path: Path) -> None:
    """Over upstream's two feature layers: grow and prune its two-level htree directory, make
    its 5 000-entry directory opaque, replace its big file, link to its thrice-linked inode."""
    image, _stack = debian
    fx = fixtures_dir / "upstream-features"
    t = 1_700_000_200
    extra = [Entry(f"srv/huge/.wh.h{i:07d}") for i in range(100, 300)]
    extra += [Entry(f"srv/huge/n{i:07d}", data=f"{i}\n".encode(), mtime=t) for i in range(3000)]
    extra += [Entry("srv/huge/h0050000", data=b"overwritten\n", mode=0o600, mtime=t)]
    extra += [Entry("srv/big/.wh..wh..opq")] + [Entry(f"srv/big/only-{i}", data=b"o\n", mtime=t) for i in range(10)]
    extra += [
        Entry("srv/sparse-ish.bin", data=b"small now\n", mtime=t),
        Entry("srv/fifth-link", tarfile.LNKTYPE, linkname="srv/links/second", mode=0o640, uid=1000, gid=1000,
              mtime=1_700_000_000),
        Entry("srv/.wh.x"),
        Entry("srv/links/s300", tarfile.SYMTYPE, linkname="/" + "w" * 99, mode=0o777, mtime=t),
        Entry("srv/dev/", tarfile.DIRTYPE, mode=0o755, mtime=t),  # upstream layer 2 made it a file
        Entry("srv/dev/null", tarfile.CHRTYPE, mode=0o666, mtime=t, dev=(1, 3)),
    ]
    tar = write_layer_tar(tmp_path / "ours.tar", image.roots[1], extra)
    stack = Stack(tmp_path, blobs=[fx / "layer-1.blob", fx / "layer-2.blob"],
                  tars=[fx / "feat1.tar.gz", fx / "feat2.tar.gz"])
    res = stack.apply(tar)
    print(f"\n[corpus] our layer over upstream-features 1+2: {res.entries} entries, {res.blocks_written} blocks, "
          f"{res.seconds:.1f}s")
    tree = judge(stack.blobs, stack.tars, tmp_path / "mixed.raw", allow=UPSTREAM_FEATURES_DEVIATIONS)
    assert len([p for p in tree if p.startswith("/srv/huge/")]) == 120_000 - 1 - 200 + 3000
    assert tree["/srv/links/second"].hardlinks == (
        "/srv/fifth-link", "/srv/fourth-link", "/srv/links/second", "/srv/third-link")
    assert sorted(p for p in tree if p.startswith("/srv/big/")) == [f"/srv/big/only-{i}" for i in range(10)]
