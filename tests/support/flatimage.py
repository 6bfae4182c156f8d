"""A ten-layer source image for ``--flatten``: every layer changes what the ones below wrote.

Whiteouts of files and of a whole tree, opaque directories (refilled in the same layer), hard
links across layers (to a file of a lower layer, and a link made before its target is
replaced), xattrs (set, changed, a 3 000-byte value in an xattr block), devices, a fifo,
symlinks, a directory replaced by a file and back, a 3 MiB file deleted higher up (the blocks a
flattened layer never writes). Layers alternate plain and gzip.

    tars = write_ten_layers(tmp / "tars")          # [layer-01.tar, ... layer-10.tar]
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

T0 = 1_700_000_000


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", typ: bytes = tarfile.REGTYPE, *, mode: int = 0o644,
         uid: int = 0, gid: int = 0, link: str = "", xattrs: dict[str, bytes] | None = None,
         dev: tuple[int, int] = (0, 0), mtime: float = T0) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime, ti.linkname = typ, mode, uid, gid, mtime, link
    ti.devmajor, ti.devminor = dev
    if xattrs:
        ti.pax_headers = {"SCHILY.xattr." + k: v.decode("latin-1") for k, v in xattrs.items()}
    if typ == tarfile.REGTYPE:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def _d(name: str, mode: int = 0o755, mtime: float = T0) -> tuple:
    return (name, b"", tarfile.DIRTYPE, {"mode": mode, "mtime": mtime})


def _f(name: str, data: bytes, **kw: object) -> tuple:
    return (name, data, tarfile.REGTYPE, kw)


def _x(name: str, typ: bytes, **kw: object) -> tuple:
    return (name, b"", typ, kw)


def _pseudo(n: int, seed: int) -> bytes:
    out, x = bytearray(), seed or 1
    while len(out) < n:
        x = (x * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
        out += x.to_bytes(8, "little")
    return bytes(out[:n])


LAYERS: list[list[tuple]] = [
    # 1: the base
    [_d("app/"), _d("app/cfg/"), _d("app/tree/"), _d("app/tree/sub/"), _d("data/", 0o1777), _d("dev/"),
     _f("app/bin", b"\x7fELF" + _pseudo(20000, 1), mode=0o755, xattrs={"security.capability": b"\x01\x00\x00\x02"
                                                                        + bytes(16)}),
     _f("app/cfg/a.conf", b"a=1\n"), _f("app/cfg/b.conf", b"b=1\n"),
     _f("app/tree/sub/deep.txt", b"deep\n"), _f("app/tree/top.txt", b"top\n"),
     _f("app/shared", b"shared v1\n", uid=1000, gid=1000, mode=0o640),
     _x("app/shared-link", tarfile.LNKTYPE, link="app/shared"),
     _f("data/big.bin", _pseudo(3 << 20, 7)),
     _x("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)), _x("dev/sda", tarfile.BLKTYPE, mode=0o660, dev=(8, 0))],
    # 2: a file rewritten, a hard link across layers (to layer 1's file)
    [_f("app/cfg/a.conf", b"a=2\n", mtime=T0 + 2), _x("app/cross-link", tarfile.LNKTYPE, link="app/shared"),
     _f("app/v2.txt", b"two\n" * 100)],
    # 3: whiteouts of a file and of a whole tree
    [_x("app/cfg/.wh.b.conf", tarfile.REGTYPE), _x("app/.wh.tree", tarfile.REGTYPE), _f("app/three", b"3\n")],
    # 4: an opaque directory refilled in the same layer (entries before and after the marker)
    [_f("app/cfg/fresh.conf", b"fresh\n"), _x("app/cfg/.wh..wh..opq", tarfile.REGTYPE),
     _f("app/cfg/after.conf", b"after\n", mtime=T0 + 4.5)],
    # 5: xattrs: changed on a re-declared file, a big value (xattr block), an ACL-free user attr
    [_f("app/bin", b"\x7fELF" + _pseudo(20000, 5), mode=0o755, xattrs={"user.note": b"five", "user.big": b"B" * 3000}),
     _f("app/xattr-only", b"x", xattrs={"trusted.t": b"t" * 40})],
    # 6: a hard link made before its target is replaced in the same layer
    [_x("app/old-shared", tarfile.LNKTYPE, link="app/shared"),
     _f("app/shared", b"shared v6\n", uid=1000, gid=1000, mode=0o600)],
    # 7: the big file deleted (a flattened layer never stores its blocks)
    [_x("data/.wh.big.bin", tarfile.REGTYPE), _f("data/small.bin", _pseudo(5000, 9))],
    # 8: symlinks, a fifo, setuid, a device replaced
    [_x("app/sym-short", tarfile.SYMTYPE, link="three", mode=0o777),
     _x("app/sym-long", tarfile.SYMTYPE, link="/" + "l" * 200, mode=0o777),
     _x("app/fifo", tarfile.FIFOTYPE), _f("app/suid", b"#!/bin/sh\n", mode=0o4755),
     _x("dev/sda", tarfile.BLKTYPE, mode=0o600, dev=(8, 16))],
    # 9: a directory replaced by a file, a file by a directory
    [_f("app/cfg", b"now a file\n"), _d("app/three/", 0o750, T0 + 9), _f("app/three/inside", b"in\n")],
    # 10: back again, a root entry, many small files
    [_d("./", 0o755, T0 + 10), _x("app/.wh.cfg", tarfile.REGTYPE), _d("app/cfg/", 0o700, T0 + 10),
     _f("app/cfg/final.conf", b"final\n"),
     *[_f(f"data/many/f-{i:04d}", f"{i}\n".encode(), mtime=T0 + 10) for i in range(400)]],
]


def write_ten_layers(work: Path) -> list[Path]:
    """The ten layer tars (bottom first), PAX format."""
    work.mkdir(parents=True, exist_ok=True)
    out = []
    for n, entries in enumerate(LAYERS, 1):
        path = work / f"layer-{n:02d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
            for name, data, typ, kw in entries:
                _add(tf, name, data, typ, **kw)
        out.append(path)
    return out


def compress_flags() -> list[bool]:
    """Which layers :func:`support.obdimages.tar_layout` gzips: every other one."""
    return [n % 2 == 1 for n in range(len(LAYERS))]


def history() -> list[dict]:
    """A config history for the ten layers: an empty entry first (ENV), then one per layer."""
    out: list[dict] = [{"created": "2023-11-14T22:13:20Z", "created_by": "ENV A=1", "empty_layer": True}]
    out += [{"created": f"2023-11-14T22:13:{20 + n:02d}Z", "created_by": f"RUN step {n}"} for n in range(1, 11)]
    return out
