"""Build a TurboOCIv1 meta layer: the ext4 of one OCI layer over its lowers, file data left in the source.

Same tar parse and metadata path as :mod:`ext4.apply`; the device is opened with
``turbo=True``, so every regular file's blocks are mapped to its data offset in the
*uncompressed* source tar (``ext4.fs.map_target_data``) instead of being stored. The source
blob is read once: gzip through :class:`~formats.gzcheckpoint.CheckpointingGunzip`, which
records the gzip.meta checkpoints on the way, and hashed, so its digest (the
``target-digest`` annotation) is checked against what the manifest promised. The sealed warp
LSMT is ZFile-compressed (lz4, 4 KiB, like ``overlaybd-commit -z --fastoci``) into
``ext4.fs.meta`` and packed with ``.turbo.ociv1`` and ``gzip.meta`` by :mod:`formats.turbo`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.ext4.apply import GIB
from overlaybd_provider.ext4.blockdev import SECTORS_PER_BLOCK, LowerStack, OverlayBlockDevice
from overlaybd_provider.ext4.changeset import apply_tar
from overlaybd_provider.ext4.errors import DiffIdMismatchError, Ext4Error
from overlaybd_provider.ext4.fs import Filesystem
from overlaybd_provider.ext4.layout import BLOCK_SIZE, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, Superblock
from overlaybd_provider.ext4.mkfs import MkfsOptions, mkfs
from overlaybd_provider.ext4.tarstream import ForwardReader, open_tar_stream
from overlaybd_provider.formats.gzcheckpoint import NotTurboCapable
from overlaybd_provider.formats.gzworker import InflateJob, open_checkpointing
from overlaybd_provider.formats.lsmt_writer import LSMTWriter
from overlaybd_provider.formats.turbo import (
    FS_META_SUFFIX,
    GZIP_META,
    IDENTIFIER,
    TurboBlobInfo,
    target_media_type,
    turbo_annotations,
    turbo_capability,
    write_turbo_blob,
)
from overlaybd_provider.formats.zfile import ZFileWriter

log = logging.getLogger(__name__)

_SEAL_BLOCKS = 256


class TurboSourceError(OverlaybdError):
    """The source layer blob is not the one expected (digest or size): a lying source."""

    retryable = False


class TurboUnsupported(OverlaybdError):
    """A TurboOCI option this writer does not offer yet."""


@dataclasses.dataclass(frozen=True)
class TurboLayerResult:
    """One TurboOCIv1 meta layer: push ``digest``/``size`` with ``annotations``; the image
    config's diff_id for this layer is ``diff_id`` (sha256 of the uncompressed meta tar)."""

    digest: str
    size: int
    diff_id: str
    annotations: dict[str, str]
    target_digest: str
    target_media_type: str
    source_kind: str  # "gzip" or "tar"
    source_size: int
    source_tar_size: int
    fs_meta_size: int
    gzip_index_size: int
    gzip_spans: int
    meta_blocks: int
    target_blocks: int
    files: int
    entries: int
    virtual_size: int
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class _HashingReader:
    """A plain tar source read front to back, hashed (its sha256 is the target digest)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self._h, self.compressed_size = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._h.update(data)
        self.compressed_size += len(data)
        return data

    def readinto(self, b: memoryview) -> int:
        n = self._f.readinto(b)  # type: ignore[attr-defined]
        self._h.update(memoryview(b)[:n])
        self.compressed_size += n
        return n

    @property
    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()

    def close(self) -> None:
        pass


def _vsize(lower: LowerStack | None, vsize_gb: int) -> int:
    if lower is None:
        return vsize_gb * GIB
    if lower.virtual_size:
        return lower.virtual_size
    sb = Superblock.from_bytes(lower.read(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE))
    return sb.blocks_count * BLOCK_SIZE


def _seal_warp(dev: OverlayBlockDevice, out: BinaryIO, *, vsize: int, uuid: str | None,
               parent_uuid: str | None, algorithm: str, block_size_kb: int) -> tuple[int, int]:
    """Warp LSMT of ``dev`` into a ZFile on ``out``; returns (meta blocks, target blocks)."""
    zw = ZFileWriter(out, algorithm=algorithm, block_size=block_size_kb * 1024)
    try:
        w = LSMTWriter(zw, virtual_size=vsize, uuid=uuid, parent_uuid=parent_uuid)  # type: ignore[arg-type]
        meta = target = 0
        for blk, cnt, where, sectors in dev.turbo_pieces():
            if sectors >= 0:
                w.add_target(blk * SECTORS_PER_BLOCK, sectors, where // 512)
                target += cnt
                continue
            for k in range(0, cnt, _SEAL_BLOCKS):
                n = min(_SEAL_BLOCKS, cnt - k)
                w.add_data((blk + k) * SECTORS_PER_BLOCK, dev.read_raw_slots(where + k, n))
            meta += cnt
        w.close()
        zw.close()
    except BaseException:
        zw.abort()
        raise
    return meta, target


def apply_turbo_to_stack(lower: LowerStack | None, source: BinaryIO, out: BinaryIO, *,
                         source_media_type: str | None = None, expected_digest: str | None = None,
                         expected_size: int | None = None, vsize_gb: int = 64, fstype: str = "ext4",
                         uuid: str | None = None, parent_uuid: str | None = None,
                         mkfs_options: MkfsOptions | str | None = None, algorithm: str = "lz4",
                         block_size_kb: int = 4, spool_dir: str | None = None, diff_id: str | None = None,
                         name: str = "source layer", inflate: InflateJob | None = None) -> TurboLayerResult:
    """Build the TurboOCIv1 meta blob of ``source`` (a seekable layer blob, read once from its
    current position to the end) over ``lower`` (None: mkfs first) and write it to ``out``.

    ``expected_digest``/``expected_size``: what the manifest says of the blob; ``diff_id``: what
    the image config says of the uncompressed tar. All are checked after the whole source was
    read and before anything is written to ``out``. ``inflate``: this gzip source's inflate, started
    ahead by :func:`formats.gzworker.start_inflate` (closed here, like one started here)."""
    started = time.monotonic()
    if fstype != "ext4":
        raise TurboUnsupported(f"TurboOCI with --fstype {fstype} is not supported yet (ext4 only)")
    head = source.read(512)
    ok, kind = turbo_capability(source_media_type, head)
    if not ok:
        raise NotTurboCapable(f"{name}: {kind}")
    source.seek(-len(head), os.SEEK_CUR)
    vsize = _vsize(lower, vsize_gb)
    gz = (open_checkpointing(source, name=name, hash_output=diff_id is not None, spool_dir=spool_dir,
                             job=inflate) if kind == "gzip" else None)
    stream: Any = gz if gz is not None else _HashingReader(source)
    dev = OverlayBlockDevice(lower, block_count=vsize // BLOCK_SIZE, spool_dir=spool_dir, turbo=True)
    try:
        if lower is None:
            opts = mkfs_options if isinstance(mkfs_options, MkfsOptions) else MkfsOptions.parse(mkfs_options)
            fs = mkfs(dev, opts)
        else:
            fs = Filesystem(dev)
        counter = ForwardReader(stream)  # type: ignore[arg-type]
        stats = apply_tar(fs, open_tar_stream(counter))
        while counter.read(1 << 20):  # the rest (tar padding, gzip trailer): hashed and checked
            pass
        digest = check_source(stream, gzip=gz is not None, name=name, expected_digest=expected_digest,
                              expected_size=expected_size, diff_id=diff_id)
        blob, fs_meta_size, gz_size, spans, meta_blocks, target_blocks = pack_meta_blob(
            dev, out, gz, fstype=fstype, vsize=vsize, uuid=uuid, parent_uuid=parent_uuid, algorithm=algorithm,
            block_size_kb=block_size_kb, spool_dir=spool_dir)
        tmt = target_media_type(source_media_type or "", kind == "gzip")
        log.debug("turbo layer: %d entries, %d meta + %d target blocks, fs meta %d bytes, gzip index %d bytes "
                  "(%d spans)", stats.entries, meta_blocks, target_blocks, fs_meta_size, gz_size, spans)
        return TurboLayerResult(
            digest=blob.digest, size=blob.size, diff_id=blob.diff_id,
            annotations=turbo_annotations(blob, digest, tmt), target_digest=digest, target_media_type=tmt,
            source_kind=kind, source_size=stream.compressed_size, source_tar_size=counter.count,
            fs_meta_size=fs_meta_size, gzip_index_size=gz_size, gzip_spans=spans, meta_blocks=meta_blocks,
            target_blocks=target_blocks, files=stats.files, entries=stats.entries, virtual_size=vsize,
            seconds=time.monotonic() - started)
    finally:
        dev.close()
        if gz is not None:
            gz.close()



def check_source(stream: Any, *, gzip: bool, name: str, expected_digest: str | None, expected_size: int | None,
                 diff_id: str | None) -> str:
    """The source blob's digest, once ``stream`` was read to its end: checked against what the
    manifest claims (digest, size) and its tar content against the config's ``diff_id``."""
    digest = stream.digest
    if expected_digest is not None and digest != expected_digest:
        raise TurboSourceError(f"{name}: content digest {digest} does not match the expected {expected_digest}")
    if expected_size is not None and stream.compressed_size != expected_size:
        raise TurboSourceError(f"{name}: {stream.compressed_size} bytes, expected {expected_size}")
    if diff_id is not None:
        got = stream.content_digest if gzip else digest
        if got != diff_id:
            raise DiffIdMismatchError(f"{name}: content {got} does not match the config's diff_id {diff_id}")
    return digest


def pack_meta_blob(dev: OverlayBlockDevice, out: BinaryIO, gz: Any, *, fstype: str, vsize: int,
                   uuid: str | None, parent_uuid: str | None, algorithm: str, block_size_kb: int,
                   spool_dir: str | None) -> tuple[TurboBlobInfo, int, int, int, int, int]:
    """Seal the warp file of ``dev`` and pack it (with the gzip index of ``gz`` when the source is
    gzip) into the ``turboOCIv1.tar.gz`` meta blob written to ``out``; returns the blob and the
    fs-meta size, gzip-index size, its span count, meta blocks and target blocks."""
    with contextlib.ExitStack() as spools:
        fsmeta = spools.enter_context(tempfile.TemporaryFile(dir=spool_dir, prefix="fsmeta-"))
        meta_blocks, target_blocks = _seal_warp(dev, fsmeta, vsize=vsize, uuid=uuid, parent_uuid=parent_uuid,
                                                algorithm=algorithm, block_size_kb=block_size_kb)
        fsmeta.flush()
        fs_meta_size = fsmeta.tell()
        fsmeta.seek(0)
        members: list[tuple[str, BinaryIO | bytes]] = [(f"{fstype}{FS_META_SUFFIX}", fsmeta), (IDENTIFIER, b"")]
        gz_size = spans = 0
        if gz is not None:
            gzf = spools.enter_context(tempfile.TemporaryFile(dir=spool_dir, prefix="gzmeta-"))
            gzinfo = gz.finish_index(gzf)
            gzf.flush()
            gzf.seek(0)
            gz_size, spans = gzinfo.index_file_size, gzinfo.entries
            members.append((GZIP_META, gzf))
        blob = write_turbo_blob(out, members)
    return blob, fs_meta_size, gz_size, spans, meta_blocks, target_blocks

def apply_turbo_layer(lowers: Sequence[str | os.PathLike[str]], source_path: str | os.PathLike[str],
                      out_path: str | os.PathLike[str], *, source_media_type: str | None = None,
                      expected_digest: str | None = None, diff_id: str | None = None,
                      **kwargs: object) -> TurboLayerResult:
    """File-level entry (``overlaybd apply-layer --turbo-oci``): lowers are native blobs or
    ``turbo:META,SOURCE`` specs, bottom first; ``out_path`` is replaced only on success."""
    from overlaybd_provider.formats.stack import LayerStack
    from overlaybd_provider.formats.turbo import open_layer_spec

    out_path = Path(out_path)
    tmp_name = None
    with contextlib.ExitStack() as ctx:
        layers = [ctx.enter_context(open_layer_spec(p, spool_dir=str(out_path.parent))) for p in lowers]
        stack = LayerStack([lf.lsmt for lf in layers], check_chain=False) if layers else None
        try:
            src = ctx.enter_context(open(source_path, "rb"))
        except OSError as exc:
            raise Ext4Error(f"{source_path}: cannot open: {exc.strerror}") from None
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent or ".")
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
            with os.fdopen(fd, "wb") as out:
                res = apply_turbo_to_stack(stack, src, out, source_media_type=source_media_type,
                                           expected_digest=expected_digest, diff_id=diff_id,
                                           spool_dir=str(out_path.parent),
                                           name=str(source_path), **kwargs)  # type: ignore[arg-type]
            os.replace(tmp_name, out_path)
            tmp_name = None
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
    return res
