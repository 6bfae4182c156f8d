"""Fixtures of the verify tests: a feature-rich three-layer source image and our conversion of it.

The layers exercise every rule ``overlaybd verify`` models: whiteouts of files and trees, opaque
directories refilled in the same layer (before and after the marker), hard links within a layer
and to lower layers (made before the target is replaced), PAX records (``SCHILY.xattr.*`` incl.
a POSIX ACL and a 3 000-byte value that needs an xattr block, fractional ``mtime``, 32-bit
uid/gid), character/block devices (old and new encodings), a fifo, setuid/setgid/sticky modes,
symlinks of 59/60/300 bytes, a 255-byte name, a name that is not UTF-8, a 3 000-entry (htree) directory, a mostly-zero
file, a ``./`` root entry. Layer 1 is a plain tar, layer 2 gzip, layer 3 zstd.
"""

from __future__ import annotations

import io
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from support.obdimages import convert, tar_layout

CAP = bytes.fromhex("0100000200200000000000000000000000000000")
ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in
                                      [(0x01, 6, 0xFFFFFFFF), (0x02, 4, 1000), (0x04, 4, 0xFFFFFFFF),
                                       (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)])
T0 = 1_700_000_000


class _Tar:
    def __init__(self, path: Path) -> None:
        self.tf = tarfile.open(path, "w", format=tarfile.PAX_FORMAT,  # noqa: SIM115 - closed by close()
                               encoding="utf-8", errors="surrogateescape")

    def add(self, name: str, data: bytes = b"", typ: bytes = tarfile.REGTYPE, *, mode: int = 0o644, uid: int = 0,
            gid: int = 0, link: str = "", xattrs: dict[str, bytes] | None = None, dev: tuple[int, int] = (0, 0),
            mtime: float = T0) -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime, ti.linkname = typ, mode, uid, gid, mtime, link
        ti.devmajor, ti.devminor = dev
        if xattrs:
            ti.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()}
        if typ == tarfile.REGTYPE:
            ti.size = len(data)
            self.tf.addfile(ti, io.BytesIO(data))
        else:
            self.tf.addfile(ti)

    def close(self) -> None:
        self.tf.close()


#: layer 3: (name, data, options of _Tar.add); tests derive wrong sources from it
TOP_LAYER: list[tuple[str, bytes, dict]] = [
    ("./", b"", {"typ": tarfile.DIRTYPE, "mode": 0o755, "mtime": T0 + 999}),
    ("srv/sticky/new", b"refilled\n", {}),
    ("srv/sticky/.wh..wh..opq", b"", {}),
    ("srv/.wh.setgid", b"", {}),
    ("srv/setgid/", b"", {"typ": tarfile.DIRTYPE, "mode": 0o2770, "gid": 50, "mtime": T0 + 3}),
    ("srv/setgid/again", b"again\n", {}),
    ("srv/links/", b"", {"typ": tarfile.DIRTYPE, "mode": 0o700, "mtime": T0 + 3.5}),
    ("srv/links/s59", b"", {"typ": tarfile.LNKTYPE, "link": "srv/links/second", "mode": 0o640, "uid": 1000,
                            "gid": 1000}),
    ("srv/implied/deep/file", b"parents implied\n", {"uid": 7, "gid": 8}),
    ("srv/tty", b"", {"typ": tarfile.CHRTYPE, "mode": 0o620, "gid": 5, "dev": (5, 0)}),
]


def write_entries(path: Path, entries: list[tuple[str, bytes, dict]]) -> Path:
    t = _Tar(path)
    for name, data, kw in entries:
        t.add(name, data, **kw)
    t.close()
    return path


def write_feature_layers(work: Path) -> list[Path]:
    work.mkdir(parents=True, exist_ok=True)
    a = _Tar(work / "feat-a.tar")
    for d, mode, gid in [("srv", 0o755, 0), ("srv/big", 0o755, 0), ("srv/x", 0o755, 0), ("srv/dev", 0o755, 0),
                         ("srv/links", 0o755, 0), ("srv/sticky", 0o1777, 0), ("srv/setgid", 0o2775, 50)]:
        a.add(d + "/", typ=tarfile.DIRTYPE, mode=mode, gid=gid)
    for i in range(3000):
        a.add(f"srv/big/entry-{i:05d}.conf", f"value {i}\n".encode() * (i % 5), uid=i % 3, gid=i % 5)
    blob = bytearray(6 << 20)
    for off in range(0, len(blob), 1 << 20):
        blob[off:off + 4096] = bytes((off >> 12) + k & 0xFF for k in range(4096))
    a.add("srv/sparse-ish.bin", bytes(blob), mode=0o600)
    a.add("srv/bin-ping", b"\x7fELF" + bytes(range(256)) * 40, mode=0o755, xattrs={"security.capability": CAP})
    a.add("srv/x/big-xattr", b"payload", xattrs={"user.big": b"B" * 3000, "user.small": b"s", "trusted.t": b"t" * 40})
    a.add("srv/acl-file", b"acl\n", mode=0o640, xattrs={"system.posix_acl_access": ACL})
    a.add("srv/links/orig", b"shared content\n", mode=0o640, uid=1000, gid=1000)
    a.add("srv/links/second", typ=tarfile.LNKTYPE, link="srv/links/orig", mode=0o640, uid=1000, gid=1000)
    a.add("srv/third-link", typ=tarfile.LNKTYPE, link="srv/links/orig", mode=0o640, uid=1000, gid=1000)
    for n, tgt in [("s59", "t" * 59), ("s60", "u" * 60), ("s300", "/" + "v" * 299), ("rel", "../links/orig")]:
        a.add(f"srv/links/{n}", typ=tarfile.SYMTYPE, link=tgt, mode=0o777)
    a.add("srv/dev/null", typ=tarfile.CHRTYPE, mode=0o666, dev=(1, 3))
    a.add("srv/dev/sda", typ=tarfile.BLKTYPE, mode=0o660, dev=(8, 0))
    a.add("srv/dev/huge", typ=tarfile.CHRTYPE, mode=0o600, dev=(300, 70000))
    a.add("srv/dev/fifo", typ=tarfile.FIFOTYPE, mode=0o644)
    a.add("srv/" + "L" * 255, b"long name\n")
    a.add("srv/suid", b"#!/bin/sh\n", mode=0o4755)
    a.add("srv/frac-mtime", b"x", mtime=T0 + 0.75)
    a.add("srv/big-ids", b"ids\n", uid=3_000_000, gid=70_000)
    a.add("srv/empty", b"")
    a.add("srv/caf\udce9-latin1-name", b"not UTF-8\n")  # a name that is not valid UTF-8 (byte 0xe9)
    a.close()

    b = _Tar(work / "feat-b.tar")
    for i in range(0, 3000, 5):
        b.add(f"srv/big/.wh.entry-{i:05d}.conf")
    for i in range(300):
        b.add(f"srv/big/new-{i:05d}.conf", b"new\n", mtime=T0 + 2)
    b.add("srv/x/after-opq", b"kept\n")
    b.add("srv/x/.wh..wh..opq")
    b.add("srv/dev", b"now a file\n")
    b.add("srv/suid/", typ=tarfile.DIRTYPE, mode=0o755)
    b.add("srv/suid/inside", b"dir now\n")
    b.add("srv/fourth-link", typ=tarfile.LNKTYPE, link="srv/links/orig", mode=0o640, uid=1000, gid=1000)
    b.add("srv/links/orig", b"rewritten content\n", mode=0o600, uid=1000, gid=1000)
    b.add("srv/link-to-symlink", typ=tarfile.LNKTYPE, link="srv/links/rel", mode=0o777)
    b.add("srv/.wh.no-such-file")
    b.close()

    write_entries(work / "feat-c.tar", TOP_LAYER)
    zst = work / "feat-c.tar.zst"
    with (work / "feat-c.tar").open("rb") as src, zst.open("wb") as dst:
        zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
    return [work / "feat-a.tar", work / "feat-b.tar", work / "feat-c.tar"]


@pytest.fixture(scope="session")
def feature_tars(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The three plain layer tars (bottom first)."""
    return write_feature_layers(tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="session")
def feature_images(feature_tars: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(source ``oci:`` ref with plain/gzip/zstd layers, our converted ``oci:`` ref)."""
    work = tmp_path_factory.mktemp("feature-images")
    zst = feature_tars[2].with_name(feature_tars[2].name + ".zst")
    src = tar_layout(work / "src", "v1", [feature_tars[0], feature_tars[1], zst], compress=[False, True, False])
    return src, convert(src, f"oci:{work / 'dst'}:v1")


@pytest.fixture(scope="session")
def oracle_convert(shared_dir: Path):
    """``convert(tars, outdir) -> [blob...]`` with upstream's own tools (``oracle-convert.sh``);
    skips when the oracle is not installed or its binaries do not start on this machine."""
    bin_dir = shared_dir / "oracle" / "bin"
    script = bin_dir / "oracle-convert.sh"
    if not script.is_file():
        pytest.skip(f"upstream oracle not available at {bin_dir}")
    probe = subprocess.run([str(bin_dir / "overlaybd-create"), "--help"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"upstream overlaybd-create does not start here (exit {probe.returncode})")

    def run(tars: list[Path], out: Path) -> list[Path]:
        proc = subprocess.run(["bash", str(script), *map(str, tars), str(out)], capture_output=True, text=True,
                              timeout=600, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"oracle-convert.sh failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return [out / f"layer-{i + 1}.blob" for i in range(len(tars))]

    return run
