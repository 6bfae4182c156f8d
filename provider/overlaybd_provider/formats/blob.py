"""Layer blobs: write ``tar(ZFile(LSMT))`` like ``overlaybd-commit -z -t`` and open any nesting.

:func:`open_layer` probes tar → ZFile → LSMT by magic exactly like overlaybd (layer-blob.md §3)
and returns a :class:`LayerFile`. :class:`LayerBlobWriter` streams LSMT bytes into a wrapped
ZFile on a seekable file: it writes a 1536-byte placeholder, the ZFile, the tar tail, then
back-patches the tar header and hashes the result in one read-back pass (the size is only
known at the end, and the ZFile header is rewritten too, so the digest cannot be computed
while streaming).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from overlaybd_provider.formats.errors import BadMagicError, InputFileError
from overlaybd_provider.formats.lsmt_index import LSMT_HT_SIZE, is_lsmt_header
from overlaybd_provider.formats.lsmt_reader import LSMTReader
from overlaybd_provider.formats.source import ByteSource, FileRange, SubRange
from overlaybd_provider.formats.tarwrap import (
    PAYLOAD_OFFSET_PAX,
    TarPayload,
    blob_size,
    probe_tar,
    tar_prefix,
    tar_suffix,
)
from overlaybd_provider.formats.zfile import ZFileInfo, ZFileReader, ZFileWriter
from overlaybd_provider.formats.zfile_header import ZFILE_HEADER_SIZE, is_zfile_header

_HASH_CHUNK = 4 << 20


@dataclasses.dataclass(frozen=True)
class BlobInfo:
    """A written layer blob: OCI ``digest`` (``sha256:…``), ``size`` and the ZFile facts."""

    digest: str
    size: int
    zfile: ZFileInfo


class LayerBlobWriter:
    """Write LSMT bytes (``write``) as a tar-wrapped ZFile to ``out`` (seekable and readable,
    e.g. opened ``"w+b"``), starting at its current position. Never closes ``out``."""

    def __init__(
        self,
        out: BinaryIO,
        *,
        algorithm: str = "lz4",
        block_size: int = 4096,
        level: int | None = None,
        verify: bool = True,
        threads: int | None = None,
        name: str | None = None,
    ):
        self._out = out
        self._start = out.tell()
        out.write(b"\0" * PAYLOAD_OFFSET_PAX)
        self._zw = ZFileWriter(
            out, algorithm=algorithm, block_size=block_size, level=level, verify=verify,
            overwrite_header=True, threads=threads, name=name,
        )

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self._zw.write(data)

    def abort(self) -> None:
        self._zw.abort()

    def close(self) -> BlobInfo:
        zinfo = self._zw.close()
        out = self._out
        out.write(tar_suffix(zinfo.size))
        end = out.tell()
        out.seek(self._start)
        out.write(tar_prefix(zinfo.size))
        out.seek(end)
        out.flush()
        digest = _sha256_range(out, self._start, end - self._start)
        return BlobInfo(digest=f"sha256:{digest}", size=end - self._start, zfile=zinfo)

    def __enter__(self) -> LayerBlobWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_layer_blob(
    out: BinaryIO,
    lsmt: ByteSource | Iterable[bytes],
    *,
    algorithm: str = "lz4",
    block_size: int = 4096,
    level: int | None = None,
    threads: int | None = None,
) -> BlobInfo:
    """Compress a sealed LSMT (a source or an iterable of chunks) into a layer blob on ``out``."""
    with LayerBlobWriter(
        out, algorithm=algorithm, block_size=block_size, level=level, threads=threads
    ) as writer:
        if isinstance(lsmt, ByteSource):
            for pos in range(0, lsmt.size, _HASH_CHUNK):
                writer.write(lsmt.read(pos, min(_HASH_CHUNK, lsmt.size - pos)))
        else:
            for chunk in lsmt:
                writer.write(chunk)
        return writer.close()


def wrap_zfile(out: BinaryIO, zfile: ByteSource) -> tuple[str, int]:
    """Wrap existing ZFile bytes unchanged (one pass, hashed on the fly); returns (digest, size)."""
    head = tar_prefix(zfile.size)
    out.write(head)
    h = hashlib.sha256(head)
    for pos in range(0, zfile.size, _HASH_CHUNK):
        chunk = zfile.read(pos, min(_HASH_CHUNK, zfile.size - pos))
        out.write(chunk)
        h.update(chunk)
    tail = tar_suffix(zfile.size)
    out.write(tail)
    h.update(tail)
    return f"sha256:{h.hexdigest()}", blob_size(zfile.size)


def _sha256_range(f: BinaryIO, start: int, length: int) -> str:
    h = hashlib.sha256()
    try:
        fd: int | None = f.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fd = None
    pos = start
    end = start + length
    saved = None if fd is not None else f.tell()
    while pos < end:
        n = min(_HASH_CHUNK, end - pos)
        if fd is not None:
            chunk = os.pread(fd, n, pos)
        else:
            f.seek(pos)
            chunk = f.read(n)
        if not chunk:
            raise OSError(f"short read while hashing {getattr(f, 'name', '<stream>')} at offset {pos}")
        h.update(chunk)
        pos += len(chunk)
    if saved is not None:
        f.seek(saved)
    return h.hexdigest()


@dataclasses.dataclass
class LayerFile:
    """An opened layer in whatever nesting it came: ``nesting`` lists the wrappers found,
    outermost first (e.g. ``["tar", "zfile", "lsmt"]``)."""

    name: str
    size: int
    nesting: list[str]
    tar: TarPayload | None
    zfile: ZFileReader | None
    lsmt: LSMTReader
    _owned: BinaryIO | None = None

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> LayerFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_layer(path_or_file: str | os.PathLike[str] | BinaryIO, *, name: str | None = None) -> LayerFile:
    """Open a layer blob, a bare ZFile or a bare LSMT (layer-blob.md §3)."""
    owned: BinaryIO | None = None
    if isinstance(path_or_file, (str, os.PathLike)):
        name = name or str(path_or_file)
        try:
            owned = f = open(Path(path_or_file), "rb")  # noqa: SIM115 - closed by LayerFile.close
        except OSError as exc:
            raise InputFileError(f"{name}: cannot open: {exc.strerror or exc}") from None
    else:
        f = path_or_file
    try:
        src: ByteSource = FileRange(f, name=name)
        nesting: list[str] = []
        tar = probe_tar(src)
        payload: ByteSource = src
        if tar is not None:
            nesting.append("tar")
            payload = SubRange(src, tar.offset, tar.size)
        zreader = None
        if payload.size >= ZFILE_HEADER_SIZE and is_zfile_header(payload.read(0, ZFILE_HEADER_SIZE)):
            nesting.append("zfile")
            zreader = ZFileReader(payload)
            payload = zreader
        if payload.size < LSMT_HT_SIZE or not is_lsmt_header(payload.read(0, LSMT_HT_SIZE)):
            where = f"the {nesting[-1]} payload" if nesting else "offset 0"
            raise BadMagicError(f"{src.name}: not an overlaybd layer: no tar, ZFile or LSMT magic at {where}")
        nesting.append("lsmt")
        lsmt = LSMTReader(payload, name=src.name)
        return LayerFile(src.name, src.size, nesting, tar, zreader, lsmt, owned)
    except BaseException:
        if owned is not None:
            owned.close()
        raise
