"""Build one overlaybd layer from an OCI layer tar on top of lower layers.

``apply_layer`` is the file-level entry (``overlaybd apply-layer`` uses it); ``apply_to_stack``
is the seam for the engine: an already open lower stack (or None: mkfs first), a tar stream,
and an output file. The upper block store is sealed straight into the LSMT writer, which
writes into the ZFile/blob writer, so nothing layer-sized is held in memory. Output goes to a
temporary name that is renamed only on success.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from overlaybd_provider.errors import writing
from overlaybd_provider.ext4.blockdev import LowerStack, OverlayBlockDevice
from overlaybd_provider.ext4.changeset import ApplyStats, apply_tar
from overlaybd_provider.ext4.errors import DiffIdMismatchError, Ext4Error
from overlaybd_provider.ext4.fs import Filesystem
from overlaybd_provider.ext4.layerdecode import DecodeJob, content_digest
from overlaybd_provider.ext4.layout import BLOCK_SIZE, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, Superblock
from overlaybd_provider.ext4.mkfs import MkfsOptions, mkfs
from overlaybd_provider.ext4.tarstream import ForwardReader, decompressed, open_tar_stream

log = logging.getLogger(__name__)

GIB = 1 << 30


@dataclass(frozen=True)
class ApplyResult:
    """What one apply produced: the blob's OCI digest and size, and what went into it."""

    digest: str
    size: int
    blocks_written: int
    files: int
    entries: int
    tar_bytes: int
    compression: str
    seconds: float


@dataclass(frozen=True)
class StackApplyStats:
    blocks_written: int
    stats: ApplyStats
    tar_bytes: int
    compression: str
    virtual_size: int
    digest: str  # sha256 of what was written to ``out`` ("sha256:..."), size in ``size``
    size: int


class _HashingWriter:
    """Pass-through writer that hashes and counts (the sealed LSMT is written front to back)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out, self._h, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._h.update(data)
        self.size += len(data)
        return self._out.write(data)

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        self._out.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()


@dataclass(frozen=True)
class TarInput:
    """One source tar of an apply: the stream, the diff_id its uncompressed content must have
    and the verified digest of the stream itself (saves hashing a plain tar); see
    :func:`apply_to_stack`."""

    tar: BinaryIO
    diff_id: str | None = None
    source_digest: str | None = None
    #: the decode of ``tar``'s file, started ahead (``layerdecode.start_decode``); the caller closes it
    job: DecodeJob | None = None


def apply_to_stack(lower: LowerStack | None, tar: BinaryIO, out: BinaryIO, *, vsize_gb: int = 64,
                   raw: bool = False, algorithm: str = "lz4", block_size_kb: int = 4,
                   uuid: str | None = None, parent_uuid: str | None = None,
                   mkfs_options: MkfsOptions | str | None = None,
                   spool_dir: str | None = None, diff_id: str | None = None,
                   source_digest: str | None = None) -> StackApplyStats:
    """Apply ``tar`` over ``lower`` and write the layer to ``out`` (LSMT if ``raw``, else blob).

    ``out`` must be seekable and readable for blobs (the blob writer back-patches and hashes).
    ``diff_id``: the sha256 the uncompressed tar must have (the image config's claim); checked
    after the whole tar was read and before anything is sealed, so a lying source never yields a
    layer. ``source_digest``: the verified digest of ``tar`` itself (saves hashing a plain tar).
    """
    return apply_tars_to_stack(lower, [TarInput(tar, diff_id, source_digest)], out, vsize_gb=vsize_gb, raw=raw,
                               algorithm=algorithm, block_size_kb=block_size_kb, uuid=uuid,
                               parent_uuid=parent_uuid, mkfs_options=mkfs_options, spool_dir=spool_dir)


def apply_tars_to_stack(lower: LowerStack | None, tars: Sequence[TarInput], out: BinaryIO, *,
                        vsize_gb: int = 64, raw: bool = False, algorithm: str = "lz4", block_size_kb: int = 4,
                        uuid: str | None = None, parent_uuid: str | None = None,
                        mkfs_options: MkfsOptions | str | None = None,
                        spool_dir: str | None = None, trim: bool = False) -> StackApplyStats:
    """Apply several tars in order onto **one** upper layer over ``lower``, then seal it once
    (``--flatten``). Each tar is applied with its own layer state (OCI whiteouts hide only what
    is below their own layer) and checked against its diff_id before the next one starts
    (:class:`DiffIdMismatchError` names the tar by its position when there are several).
    ``trim`` (no lower only): blocks a later tar freed are left out of the layer (:mod:`.trim`)."""
    from overlaybd_provider.formats.blob import LayerBlobWriter
    from overlaybd_provider.formats.lsmt_writer import LSMTWriter

    if not tars:
        raise ValueError("apply_tars_to_stack needs at least one tar")
    if lower is None:
        vsize = vsize_gb * GIB
    elif lower.virtual_size:
        vsize = lower.virtual_size
    else:  # upper layers may carry virtual_size 0: the filesystem itself knows its size
        sb = Superblock.from_bytes(lower.read(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE))
        vsize = sb.blocks_count * BLOCK_SIZE
    compressor = None
    if not raw and block_size_kb * 1024 == BLOCK_SIZE:
        # 4 KiB ZFile blocks map 1:1 onto LSMT blocks: compress file data while the tar is read
        from overlaybd_provider.formats.zfile_codec import BatchCompressor
        from overlaybd_provider.formats.zfile_header import ALGORITHMS

        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown ZFile algorithm {algorithm!r} (use lz4 or zstd)")
        compressor = BatchCompressor(ALGORITHMS[algorithm], BLOCK_SIZE, zstd_threads=min(2, os.cpu_count() or 1))
    dev = OverlayBlockDevice(lower, block_count=vsize // BLOCK_SIZE, spool_dir=spool_dir, compressor=compressor,
                             expect_bytes=_total_size(tars))
    try:
        if lower is None:
            opts = mkfs_options if isinstance(mkfs_options, MkfsOptions) else MkfsOptions.parse(mkfs_options)
            fs = mkfs(dev, opts)
        else:
            fs = Filesystem(dev)
        stats, tar_bytes, kinds = ApplyStats(), 0, []
        for n, item in enumerate(tars):
            one, count, compression = _apply_one(fs, item, n if len(tars) > 1 else None)
            tar_bytes += count
            kinds.append(compression)
            for name in ("entries", "files", "dirs", "data_bytes", "clamped_times"):
                setattr(stats, name, getattr(stats, name) + getattr(one, name))
        compression = ",".join(dict.fromkeys(kinds))
        if trim:
            from overlaybd_provider.ext4.trim import trim_free_blocks

            log.debug("flattened layer: %d free blocks left out", trim_free_blocks(fs, dev))
        if compressor is not None:
            from overlaybd_provider.ext4.seal import seal_blob

            info, blocks = seal_blob(dev, out, virtual_size=vsize, uuid=uuid, parent_uuid=parent_uuid,
                                     algorithm=algorithm)
            digest, size = info.digest, info.size
        elif raw:
            hw = _HashingWriter(out)
            writer = LSMTWriter(hw, virtual_size=vsize, uuid=uuid, parent_uuid=parent_uuid)  # type: ignore[arg-type]
            blocks = dev.seal(writer)
            writer.close()
            digest, size = hw.digest, hw.size
        else:
            blob = LayerBlobWriter(out, algorithm=algorithm, block_size=block_size_kb * 1024)
            try:
                writer = LSMTWriter(blob, virtual_size=vsize, uuid=uuid, parent_uuid=parent_uuid)  # type: ignore[arg-type]
                blocks = dev.seal(writer)
                writer.close()
                info = blob.close()
                digest, size = info.digest, info.size
            except BaseException:
                blob.abort()
                raise
        log.debug("layer: %d entries, %d blocks written, %d tar bytes (%s)", stats.entries, blocks,
                  tar_bytes, compression)
    except BaseException:
        _close_quietly(dev)
        raise
    dev.close()
    return StackApplyStats(blocks, stats, tar_bytes, compression, vsize, digest, size)


def _apply_one(fs: Filesystem, item: TarInput, position: int | None) -> tuple[ApplyStats, int, str]:
    """One tar onto ``fs`` (its own layer state), drained and checked against its diff_id."""
    tar = item.tar
    stream, compression = decompressed(tar, digest=item.diff_id is not None, plain_digest=item.source_digest,
                                       job=item.job)
    try:
        counter = ForwardReader(stream)
        tf = open_tar_stream(counter)
        stats = apply_tar(fs, tf, name=str(getattr(tar, "name", "layer")))
        while counter.read(1 << 20):  # drain padding: counts the whole tar, checks gzip/zstd trailers
            pass
        if item.diff_id is not None and (got := content_digest(stream)) != item.diff_id:
            where = f"source layer {position + 1}: " if position is not None else ""
            raise DiffIdMismatchError(f"{where}content {got} does not match the config's diff_id {item.diff_id}")
    except BaseException:
        _close_quietly(stream)  # stops a decoder process still running; the first error wins
        raise
    stream.close()
    return stats, counter.count, compression


def _total_size(tars: Sequence[TarInput]) -> int | None:
    sizes = [_file_size(t.tar) for t in tars]
    return None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[misc]


def _file_size(f: BinaryIO) -> int | None:
    """Bytes left in ``f`` when it is a regular file (a hint: start the compressor at once)."""
    try:
        st = os.fstat(f.fileno())
        return st.st_size - f.tell() if stat.S_ISREG(st.st_mode) else None
    except (OSError, AttributeError, ValueError):
        return None


def _close_quietly(obj: object) -> None:
    """Close after an error without replacing it: the error being raised is what the user sees."""
    try:
        obj.close()  # type: ignore[attr-defined]
    except Exception as exc:  # logged: the original error propagates
        log.debug("closing %r after an error failed too: %s", obj, exc)


#: one source tar of :func:`apply_layers`: ``(path or stream, diff_id, source_digest)``
TarSpec = tuple["str | os.PathLike[str] | BinaryIO", "str | None", "str | None"]


def apply_layer(lowers: Sequence[str | os.PathLike[str]], tar_path_or_fileobj: str | os.PathLike[str] | BinaryIO,
                out_path: str | os.PathLike[str], *, vsize_gb: int = 64, algorithm: str = "lz4",
                block_size_kb: int = 4, raw: bool = False, uuid: str | None = None,
                parent_uuid: str | None = None, mkfs_options: MkfsOptions | str | None = None,
                diff_id: str | None = None, source_digest: str | None = None) -> ApplyResult:
    """Apply one layer tar over the lower blobs (bottom first) and write ``out_path``
    (``diff_id``/``source_digest``: see :func:`apply_to_stack`)."""
    return apply_layers(lowers, [(tar_path_or_fileobj, diff_id, source_digest)], out_path, vsize_gb=vsize_gb,
                        algorithm=algorithm, block_size_kb=block_size_kb, raw=raw, uuid=uuid,
                        parent_uuid=parent_uuid, mkfs_options=mkfs_options)


def _open_lowers(lowers: Sequence[str | os.PathLike[str]], out_path: Path) -> list[Any]:
    """The lower blobs, native or ``turbo:META,SOURCE``; a bottom layer has none and imports none
    of their readers (~20 ms of a one-file layer's start-up)."""
    if not lowers:
        return []
    from overlaybd_provider.formats.turbo import open_layer_spec

    return [open_layer_spec(p, spool_dir=str(out_path.parent)) for p in lowers]


def apply_layers(lowers: Sequence[str | os.PathLike[str]], tars: Sequence[TarSpec],
                 out_path: str | os.PathLike[str], *, vsize_gb: int = 64, algorithm: str = "lz4",
                 block_size_kb: int = 4, raw: bool = False, uuid: str | None = None,
                 parent_uuid: str | None = None, mkfs_options: MkfsOptions | str | None = None,
                 trim: bool = False, decode_jobs: Sequence[DecodeJob | None] = ()) -> ApplyResult:
    """Apply several layer tars, bottom first, onto one upper layer over the lower blobs and write
    it to ``out_path`` (one tar: :func:`apply_layer`; several: a flattened layer, ``trim``: see
    :func:`apply_tars_to_stack`). ``decode_jobs``: per tar, its decode started ahead (or None)."""
    started = time.monotonic()
    out_path = Path(out_path)
    layers = _open_lowers(lowers, out_path)
    tmp_name = None
    try:
        stack = None
        if layers:
            from overlaybd_provider.formats.stack import LayerStack

            stack = LayerStack([lf.lsmt for lf in layers], check_chain=False)
        with contextlib.ExitStack() as stack_ctx:
            inputs = []
            jobs = list(decode_jobs) + [None] * (len(tars) - len(decode_jobs))
            for (tar_path_or_fileobj, diff_id, source_digest), job in zip(tars, jobs, strict=True):
                if isinstance(tar_path_or_fileobj, (str, os.PathLike)):
                    try:
                        tar = stack_ctx.enter_context(open(tar_path_or_fileobj, "rb"))
                    except OSError as exc:
                        raise Ext4Error(f"{tar_path_or_fileobj}: cannot open: {exc.strerror}") from None
                else:
                    tar = tar_path_or_fileobj
                inputs.append(TarInput(tar, diff_id, source_digest, job))
            # the output, its temporary name and the spool files all live in out_path's directory:
            # a full disk there (or in the compressor process writing the spool) names out_path
            with writing(out_path):
                fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp",
                                                dir=out_path.parent or ".")
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(fd, 0o666 & ~umask)
                out = os.fdopen(fd, "w+b")
                try:
                    res = apply_tars_to_stack(stack, inputs, out, vsize_gb=vsize_gb, raw=raw, algorithm=algorithm,
                                              block_size_kb=block_size_kb, uuid=uuid, parent_uuid=parent_uuid,
                                              mkfs_options=mkfs_options, spool_dir=str(out_path.parent),
                                              trim=trim)
                    out.flush()
                except BaseException:
                    _close_quietly(out)  # its flush may fail again on a full disk: the first error wins
                    raise
                out.close()
                os.replace(tmp_name, out_path)
        tmp_name = None
        return ApplyResult(res.digest, res.size, res.blocks_written, res.stats.files, res.stats.entries,
                           res.tar_bytes, res.compression, time.monotonic() - started)
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        for lf in layers:
            lf.close()
