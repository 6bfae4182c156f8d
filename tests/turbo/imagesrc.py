"""Source images for the TurboOCI engine tests: OCI layouts of hand-made layer tars (gzip, plain
or zstd) with the features a converter gets wrong: whiteouts, opaque directories, hard links
across layers, xattrs, symlinks, PAX nanosecond mtimes, a wide directory."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

from overlaybd_provider.oci.layout import LayoutStore

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, *, kind: bytes = tarfile.REGTYPE,
         link: str = "", mode: int = 0o644, xattrs: dict[str, str] | None = None, nsec: int = 0) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = kind, link, mode
    ti.mtime, ti.uid, ti.gid = 1_700_000_000, 1000, 1000
    pax = {f"SCHILY.xattr.{k}": v for k, v in (xattrs or {}).items()}
    if nsec:
        pax["mtime"] = f"1700000000.{nsec:09d}"
    ti.pax_headers = pax
    if data is not None:
        ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data) if data is not None else None)


def feature_tars(big: int = 3 << 20, wide: int = 2000, kept: int = 0) -> list[bytes]:
    """Three uncompressed layer tars, bottom first. ``big``: a file of layer 0 that layer 2 whites
    out; ``kept``: a file of that size in layer 1 that stays in the image (0: none)."""
    out = []
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("etc", "usr", "usr/bin", "var", "var/cache", "opt", "wide"):
            _add(tf, d, kind=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "etc/os-release", b"NAME=turbo-test\n", nsec=123456789)
        _add(tf, "usr/bin/tool", bytes(range(256)) * 4099, mode=0o755, xattrs={"user.origin": "base"})
        _add(tf, "usr/bin/alias", kind=tarfile.LNKTYPE, link="usr/bin/tool")
        _add(tf, "usr/bin/sym", kind=tarfile.SYMTYPE, link="tool")
        _add(tf, "var/cache/a", b"cache a\n")
        _add(tf, "var/cache/b", b"cache b\n")
        _add(tf, "opt/big.bin", hashlib.sha256(b"x").digest() * (big // 32))
        for i in range(wide):
            _add(tf, f"wide/f{i:05d}", f"{i}\n".encode())
    out.append(buf.getvalue())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "etc/.wh.os-release", b"")
        _add(tf, "var/cache", kind=tarfile.DIRTYPE, mode=0o750)
        _add(tf, "var/cache/.wh..wh..opq", b"")
        _add(tf, "var/cache/c", b"cache c (opaque dir)\n", xattrs={"user.layer": "1"})
        _add(tf, "usr/bin/tool2", kind=tarfile.LNKTYPE, link="usr/bin/tool")  # hard link to a lower file
        _add(tf, "etc/motd", b"hello from layer 1\n" * 1000, nsec=987654321)
        _add(tf, "opt/random.bin", random.Random(7).randbytes(2 << 20))  # incompressible
        if kept:  # 8 MiB of noise (a gzip layer big enough for the inflate child), then a 16 KiB repeat
            rng = random.Random(8)
            head, block = rng.randbytes(8 << 20), rng.randbytes(16 << 10)
            _add(tf, "srv", kind=tarfile.DIRTYPE, mode=0o755)
            _add(tf, "srv/large.bin", (head + block * (kept // len(block) + 1))[:kept])
    out.append(buf.getvalue())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "opt/.wh.big.bin", b"")
        _add(tf, "opt/app", b"#!/bin/sh\necho app\n" * 50, mode=0o755, xattrs={"security.capability": "x"})
        _add(tf, "wide/.wh.f00007", b"")
    out.append(buf.getvalue())
    return out


def compress(tar: bytes, media_type: str) -> bytes:
    if media_type == OCI_GZIP:
        return gzip.compress(tar, compresslevel=6, mtime=0)
    if media_type == OCI_ZSTD:
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(tar)
    return tar


def write_layout(layout: Path, tag: str, tars: list[bytes], media_types: list[str], *, arch: str = "amd64",
                 diff_id_lies: dict[int, str] | None = None) -> str:
    """An OCI image of the given layer tars (compressed per media type); returns its digest."""
    store = LayoutStore(layout)
    layers, diff_ids = [], []
    for tar, mt in zip(tars, media_types, strict=True):
        blob = compress(tar, mt)
        layers.append({"mediaType": mt, "digest": _put(store, layout, blob), "size": len(blob)})
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    for i, lie in (diff_id_lies or {}).items():
        diff_ids[i] = lie
    config = json.dumps({"architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}, separators=(",", ":")).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": _put(store, layout, config), "size": len(config)},
                "layers": layers}
    return store.push_manifest(json.dumps(manifest, separators=(",", ":")).encode(), manifest["mediaType"],
                               tag).digest


def _put(store: LayoutStore, layout: Path, blob: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    layout.mkdir(parents=True, exist_ok=True)
    tmp = layout.parent / f".blob-{digest[7:19]}"
    tmp.write_bytes(blob)
    store.push_blob(tmp, digest, len(blob))
    tmp.unlink()
    return digest
