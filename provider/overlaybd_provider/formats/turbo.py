"""TurboOCIv1 layer blobs: ``turboOCIv1.tar.gz`` = ``<fstype>.fs.meta`` + ``.turbo.ociv1`` (+ ``gzip.meta``).

Packing follows accelerated-container-image ``buildArchiveFromFiles``/``addFileToArchive``
(``cmd/convertor/builder/builder_utils.go``): Go ``archive/tar`` headers carrying only name,
mode, size and type (USTAR, no times or owners), two zero blocks at the end and no record
padding, in one gzip member. We deflate with pinned zlib-ng at level 9 (upstream: Go's
``compress/gzip`` default level) behind the header Go writes (mtime 0, OS 255), so the bytes
are the same on every machine. The descriptor (``turboOCI_builder.go`` ``UploadLayer``) and
the config diff_id (``UploadImage``: the digest of the uncompressed meta tar) come from
:func:`turbo_annotations` and :class:`TurboBlobInfo`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from typing import Any, BinaryIO

from overlaybd_provider.formats.errors import BadMagicError, FormatError, InputFileError
from overlaybd_provider.formats.gzindex import GzIndex, GzIndexInfo, GzipRandomAccess
from overlaybd_provider.formats.lsmt_index import LSMT_HT_SIZE, is_lsmt_header
from overlaybd_provider.formats.source import ByteSource, FileRange
from overlaybd_provider.formats.warp import WarpLayer
from overlaybd_provider.formats.zfile import ZFileReader
from overlaybd_provider.formats.zfile_header import ZFILE_HEADER_SIZE, is_zfile_header

TURBO_VERSION = "0.1.0-turbo.ociv1"  # pkg/version TurboOCIVersionNumber
IDENTIFIER = ".turbo.ociv1"
GZIP_META = "gzip.meta"
FS_META_SUFFIX = ".fs.meta"
BLOB_NAME = "turboOCIv1.tar.gz"
ANN_VERSION = "containerd.io/snapshot/overlaybd/version"
ANN_BLOB_DIGEST = "containerd.io/snapshot/overlaybd/blob-digest"
ANN_BLOB_SIZE = "containerd.io/snapshot/overlaybd/blob-size"
ANN_TARGET_DIGEST = "containerd.io/snapshot/overlaybd/turbo-oci/target-digest"
ANN_TARGET_MEDIA_TYPE = "containerd.io/snapshot/overlaybd/turbo-oci/target-media-type"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BLOB_LEVEL = 9
_GZIP_HEAD = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # deflate, no flags, mtime 0, XFL 2 (level 9), OS 255
_CHUNK = 1 << 20


class TurboFormatError(FormatError):
    """A TurboOCIv1 meta blob is malformed or does not fit the source layer given with it."""


# -- can a layer be TurboOCI? ------------------------------------------------------------------
def turbo_capability(media_type: str | None = None, head: bytes | None = None) -> tuple[bool, str]:
    """``(True, "gzip"|"tar")`` when a source layer can get a TurboOCIv1 meta layer, else
    ``(False, why)``. Upstream's ``isGzipLayer`` accepts only uncompressed and gzip layers
    (zstd has no random-access index there); give such a layer a native overlaybd layer.
    ``head`` (the first bytes of the blob) wins over the media type when given."""
    if head is not None:
        if head[:2] == GZIP_MAGIC:
            return True, "gzip"
        if head[:4] == ZSTD_MAGIC:
            return False, "zstd-compressed layer: TurboOCIv1 reads only gzip and plain tar sources"
        if len(head) >= 262 and head[257:262] == b"ustar":
            return True, "tar"
        if media_type is None:
            return False, "not a gzip or tar layer"
    mt = (media_type or "").lower()
    if "zstd" in mt:
        return False, "zstd-compressed layer: TurboOCIv1 reads only gzip and plain tar sources"
    if mt.endswith("gzip"):
        return True, "gzip"
    if mt.endswith(".tar") or mt.endswith("diff.tar"):
        return True, "tar"
    return False, f"media type {media_type!r} is not a gzip or tar layer"


def target_media_type(source_media_type: str, is_gzip: bool) -> str:
    """The ``turbo-oci/target-media-type`` annotation: Docker types stay Docker (UploadLayer)."""
    if "docker" in source_media_type:
        return DOCKER_LAYER_GZIP if is_gzip else DOCKER_LAYER
    return OCI_LAYER_GZIP if is_gzip else OCI_LAYER


def turbo_layer_media_type(oci: bool) -> str:
    """The meta layer's own descriptor media type (``mediaTypeImageLayerGzip``)."""
    return OCI_LAYER_GZIP if oci else DOCKER_LAYER_GZIP


# -- writing -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TurboBlobInfo:
    """The written meta blob: OCI ``digest``/``size``, and ``diff_id`` (sha256 of the tar)."""

    digest: str
    size: int
    diff_id: str
    tar_size: int


def turbo_annotations(blob: TurboBlobInfo, target_digest: str, target_media_type: str) -> dict[str, str]:
    """The layer descriptor annotations upstream pushes with a TurboOCIv1 meta layer."""
    return {
        ANN_VERSION: TURBO_VERSION,
        ANN_BLOB_DIGEST: blob.digest,
        ANN_BLOB_SIZE: str(blob.size),
        ANN_TARGET_DIGEST: target_digest,
        ANN_TARGET_MEDIA_TYPE: target_media_type,
    }


def go_tar_header(name: str, size: int, mode: int = 0o644) -> bytes:
    """The USTAR header Go's ``tar.Writer`` writes for ``Header{Name, Mode, Size, Typeflag: '0'}``."""
    if len(name.encode()) > 100:
        raise ValueError("member name too long")
    h = bytearray(512)
    h[0:len(name)] = name.encode()
    for off, width, value in ((100, 8, mode), (108, 8, 0), (116, 8, 0), (124, 12, size), (136, 12, 0),
                              (329, 8, 0), (337, 8, 0)):
        h[off:off + width] = b"%0*o\0" % (width - 1, value)
    h[156] = ord("0")
    h[257:265] = b"ustar\x0000"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


class _GzipSink:
    """One gzip member to ``out``, hashing the compressed bytes and the tar bytes."""

    def __init__(self, out: BinaryIO, level: int) -> None:
        from zlib_ng import zlib_ng

        self._out = out
        self._c = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -15, 9)
        self._crc = 0
        self.raw = 0
        self.size = 0
        self._h = hashlib.sha256()
        self._diff = hashlib.sha256()
        self._emit(_GZIP_HEAD)

    def _emit(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self._h.update(data)
            self.size += len(data)

    def write(self, data: bytes | memoryview) -> None:
        self._diff.update(data)
        self._crc = zlib.crc32(data, self._crc)
        self.raw += len(data)
        self._emit(self._c.compress(data))

    def close(self) -> TurboBlobInfo:
        self._emit(self._c.flush())
        self._emit(struct.pack("<II", self._crc, self.raw & 0xFFFFFFFF))
        return TurboBlobInfo(f"sha256:{self._h.hexdigest()}", self.size, f"sha256:{self._diff.hexdigest()}",
                             self.raw)


def _pack_file(sink: _GzipSink, name: str, f: BinaryIO) -> int:
    size = os.fstat(f.fileno()).st_size - f.tell()
    sink.write(go_tar_header(name, size))
    left = size
    while left:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            raise OSError(f"{name}: shrank while being packed")
        sink.write(chunk)
        left -= len(chunk)
    return size


def write_turbo_blob(out: BinaryIO, members: Sequence[tuple[str, str | os.PathLike[str] | bytes | BinaryIO]], *,
                     level: int = BLOB_LEVEL) -> TurboBlobInfo:
    """Pack ``(name, path | bytes | file object at its start)`` members into a TurboOCIv1
    tar.gz on ``out``, streaming; returns digest, size and diff_id."""
    sink = _GzipSink(out, level)
    for name, what in members:
        if isinstance(what, bytes):
            sink.write(go_tar_header(name, len(what)))
            sink.write(what)
            size = len(what)
        elif isinstance(what, (str, os.PathLike)):
            with open(what, "rb") as f:
                size = _pack_file(sink, name, f)
        else:
            size = _pack_file(sink, name, what)
        if size % 512:
            sink.write(bytes(512 - size % 512))
    sink.write(bytes(1024))
    return sink.close()


# -- reading -------------------------------------------------------------------------------
@dataclasses.dataclass
class TurboLayerFile:
    """An opened TurboOCIv1 layer: the warp LSMT (``lsmt``, usable in a LayerStack) and facts."""

    name: str
    fstype: str
    target_kind: str  # "gzip" or "tar"
    target_name: str
    lsmt: WarpLayer
    gzindex: GzIndexInfo | None
    members: list[str]
    zfile: ZFileReader | None
    _owned: list[Any] = dataclasses.field(default_factory=list)

    nesting = ["turbo"]  # what callers that print a layer's nesting show

    def describe(self, *, target_digest: bool = True) -> dict[str, Any]:
        """What ``overlaybd inspect turbo:META,SOURCE`` prints; ``target_digest`` hashes the
        source blob (the ``turbo-oci/target-digest`` annotation it must match)."""
        r = self.lsmt
        target: dict[str, Any] = {"file": self.target_name, "kind": self.target_kind,
                                  "uncompressed_size": r.target.inner.size}
        if target_digest:
            target["digest"], target["size"] = file_digest(self.target_name)
        info: dict[str, Any] = {
            "file": self.name, "format": "TurboOCIv1", "fstype": self.fstype, "members": ", ".join(self.members),
            "target": target,
            "lsmt": {"uuid": r.uuid, "parent_uuid": r.parent_uuid, "virtual_size": r.virtual_size,
                     "entries": r.entry_count, "meta_bytes": r.meta_sectors * 512,
                     "target_bytes": r.target_sectors * 512},
        }
        if self.zfile is not None:
            info["fs_meta_zfile"] = {"algorithm": self.zfile.algorithm, "block_size": self.zfile.block_size,
                                     "original_file_size": self.zfile.size}
        if self.gzindex is not None:
            g = self.gzindex
            info["gzip_index"] = {"spans": g.entries, "span": g.span, "gzip_file_size": g.gzip_file_size,
                                  "uncompressed_size": g.uncompressed_size, "index_file_size": g.index_file_size}
        return info

    def close(self) -> None:
        for f in reversed(self._owned):
            with contextlib.suppress(OSError):
                f.close()
        self._owned.clear()

    def __enter__(self) -> TurboLayerFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_digest(path: str | os.PathLike[str]) -> tuple[str, int]:
    """``("sha256:…", size)`` of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return f"sha256:{h.hexdigest()}", size


def describe_meta_blob(path: str | os.PathLike[str], *, spool_dir: str | None = None) -> dict[str, Any]:
    """A TurboOCIv1 meta blob on its own (no source): members, fs meta LSMT and gzip index."""
    from overlaybd_provider.formats.lsmt_reader import LSMTReader

    owned: list[Any] = []
    try:
        src = _open_file(path, owned)
        members = _unpack_meta_blob(src, spool_dir, owned)
        digest, size = file_digest(path)
        info: dict[str, Any] = {"file": str(path), "format": "TurboOCIv1 meta blob", "digest": digest,
                                "size": size, "members": {k: v.size for k, v in sorted(members.items())}}
        metas = sorted(k for k in members if k.endswith(FS_META_SUFFIX))
        if not metas:
            raise TurboFormatError(f"{path}: a gzip tar without a *{FS_META_SUFFIX} member is not a TurboOCIv1 "
                                   "meta blob (a source layer? inspect turbo:META_BLOB,SOURCE_BLOB)")
        meta = members[metas[0]]
        payload: ByteSource = meta
        if meta.size >= ZFILE_HEADER_SIZE and is_zfile_header(meta.read(0, ZFILE_HEADER_SIZE)):
            payload = ZFileReader(meta)
        r = LSMTReader(payload, name=f"{path}:{metas[0]}", warp=True)
        target = sum(r.ends[i] - r.offsets[i] for i, t in enumerate(r.tags) if t)
        info["lsmt"] = {"uuid": r.uuid, "parent_uuid": r.parent_uuid, "virtual_size": r.virtual_size,
                        "entries": r.entry_count, "meta_bytes": (r.mapped_sectors - target) * 512,
                        "target_bytes": target * 512}
        if GZIP_META in members:
            g = GzIndex(members[GZIP_META]).info
            info["gzip_index"] = {"spans": g.entries, "span": g.span, "gzip_file_size": g.gzip_file_size,
                                  "uncompressed_size": g.uncompressed_size}
        return info
    finally:
        for f in reversed(owned):
            f.close()


def _open_file(path: str | os.PathLike[str], owned: list[Any]) -> FileRange:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by TurboLayerFile.close
    except OSError as exc:
        raise InputFileError(f"{path}: cannot open: {exc.strerror or exc}") from None
    owned.append(f)
    return FileRange(f, name=str(path))


def _unpack_meta_blob(src: FileRange, spool_dir: str | None, owned: list[Any]) -> dict[str, ByteSource]:
    """Inflate the meta tar.gz into an unlinked spool file and window its members."""
    spool = tempfile.TemporaryFile(dir=spool_dir, prefix="turbo-meta-")  # noqa: SIM115
    owned.append(spool)
    d = zlib.decompressobj(31)
    pos = 0
    try:
        while pos < src.size:
            n = min(_CHUNK, src.size - pos)
            spool.write(d.decompress(src.read(pos, n)))
            pos += n
            if d.eof:
                break
        spool.write(d.flush())
    except zlib.error as exc:
        raise TurboFormatError(f"{src.name}: corrupt TurboOCI meta blob: {exc}") from None
    if not d.eof:
        raise TurboFormatError(f"{src.name}: truncated TurboOCI meta blob (gzip stream ends early)")
    spool.flush()
    spool.seek(0)
    members: dict[str, ByteSource] = {}
    try:
        with tarfile.open(fileobj=spool, mode="r:") as tf:
            for m in tf:
                if m.isreg():
                    members[os.path.basename(m.name)] = FileRange(spool, offset=m.offset_data, size=m.size,
                                                                  name=f"{src.name}:{os.path.basename(m.name)}")
    except tarfile.TarError as exc:
        raise TurboFormatError(f"{src.name}: TurboOCI meta blob is not a tar: {exc}") from None
    return members


def _fs_meta_lsmt(meta: ByteSource, target: ByteSource, name: str) -> tuple[WarpLayer, ZFileReader | None]:
    zreader = None
    payload: ByteSource = meta
    if meta.size >= ZFILE_HEADER_SIZE and is_zfile_header(meta.read(0, ZFILE_HEADER_SIZE)):
        zreader = ZFileReader(meta)
        payload = zreader
    if payload.size < LSMT_HT_SIZE or not is_lsmt_header(payload.read(0, LSMT_HT_SIZE)):
        raise BadMagicError(f"{meta.name}: TurboOCI fs meta is not a ZFile or LSMT")
    return WarpLayer(payload, target, name=name), zreader


def open_turbo_layer(meta: str | os.PathLike[str], source: str | os.PathLike[str],
                     gzindex: str | os.PathLike[str] | None = None, *,
                     spool_dir: str | None = None) -> TurboLayerFile:
    """Open a TurboOCIv1 layer: ``meta`` is the ``turboOCIv1.tar.gz`` blob (or a bare
    ``*.fs.meta``, then a gzip source needs ``gzindex``); ``source`` the original layer blob."""
    owned: list[Any] = []
    try:
        msrc = _open_file(meta, owned)
        ssrc = _open_file(source, owned)
        fstype = "ext4"
        if msrc.size >= 2 and msrc.read(0, 2) == GZIP_MAGIC:
            members = _unpack_meta_blob(msrc, spool_dir, owned)
            metas = sorted(k for k in members if k.endswith(FS_META_SUFFIX))
            if not metas:
                raise TurboFormatError(f"{meta}: TurboOCI meta blob has no *{FS_META_SUFFIX} member "
                                       f"(members: {', '.join(sorted(members)) or 'none'})")
            fs_meta = members[metas[0]]
            fstype = metas[0][: -len(FS_META_SUFFIX)]
            gz_meta = members.get(GZIP_META)
            names = list(members)  # in blob order
        else:
            fs_meta, gz_meta, names = msrc, None, [os.path.basename(str(meta))]
        if gzindex is not None:
            gz_meta = _open_file(gzindex, owned)
        head = ssrc.read(0, min(ssrc.size, 512))
        ok, kind = turbo_capability(head=head)
        if not ok:
            raise TurboFormatError(f"{source}: {kind}")
        if kind == "tar" and gz_meta is not None:
            raise TurboFormatError(f"{meta}: the meta has a {GZIP_META} (a gzip source) but the source {source} "
                                   "is a plain tar: wrong source for this layer?")
        target: ByteSource = ssrc
        gzinfo = None
        if kind == "gzip":
            if gz_meta is None:
                raise TurboFormatError(f"{meta}: the source {source} is gzip but the meta has no {GZIP_META}")
            index = GzIndex(gz_meta)
            target = GzipRandomAccess(ssrc, index, name=str(source))
            gzinfo = index.info
        lsmt, zreader = _fs_meta_lsmt(fs_meta, target, str(meta))
        return TurboLayerFile(str(meta), fstype, kind, str(source), lsmt, gzinfo, names, zreader, owned)
    except BaseException:
        for f in reversed(owned):
            f.close()
        raise


TURBO_PREFIXES = ("turbo:", "turbo-blob:")


def is_turbo_spec(spec: str) -> bool:
    return str(spec).startswith(TURBO_PREFIXES)


def open_layer_spec(spec: str | os.PathLike[str], *, spool_dir: str | None = None) -> Any:
    """A native layer file, or ``turbo:META,SOURCE[,GZINDEX]`` (``turbo-blob:`` too, the
    oracle's spelling): returns an object with ``.lsmt``, ``.name``, ``.nesting`` and ``.close()``."""
    text = str(spec)
    if not is_turbo_spec(text):
        from overlaybd_provider.formats.blob import open_layer

        return open_layer(spec)
    parts = text.split(":", 1)[1].split(",")
    if len(parts) not in (2, 3) or not all(parts):
        raise InputFileError(f"{text}: expected turbo:META_BLOB,SOURCE_BLOB[,GZIP_INDEX]")
    return open_turbo_layer(parts[0], parts[1], parts[2] if len(parts) == 3 else None, spool_dir=spool_dir)

