"""Native overlaybd layer and TurboOCIv1 meta layer of one source layer, from **one** pass.

``overlaybd convert SRC DST --turbo-oci-destination DST2`` writes both images. Decompressing and
parsing the tar twice would double the dominant cost, so the source blob is inflated once (by
:class:`~formats.gzcheckpoint.CheckpointingGunzip`, which records the gzip.meta checkpoints on
the way), hashed once, parsed once, and every tar entry is applied to two filesystems: the
TurboOCI one first (it never reads file data: regular files are mapped to their offset in the
tar), then the native one, which takes the data. A GNU sparse member (both need its expanded
data) is spooled once and replayed to both. The bytes written equal those of
:func:`ext4.apply.apply_to_stack` and :func:`ext4.turbo.apply_turbo_to_stack` on the same input
(tested); all source checks run before either layer is sealed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tarfile
import tempfile
import time
from typing import Any, BinaryIO

from overlaybd_provider.ext4.apply import StackApplyStats
from overlaybd_provider.ext4.blockdev import LowerStack, OverlayBlockDevice
from overlaybd_provider.ext4.changeset import ApplyStats, ChangesetApplier, apply_members
from overlaybd_provider.ext4.fs import Filesystem
from overlaybd_provider.ext4.layout import BLOCK_SIZE
from overlaybd_provider.ext4.mkfs import MkfsOptions, mkfs
from overlaybd_provider.ext4.namespace import Namespace
from overlaybd_provider.ext4.tarstream import ForwardReader, open_tar_stream
from overlaybd_provider.ext4.turbo import (
    TurboLayerResult,
    _HashingReader,
    _vsize,
    check_source,
    pack_meta_blob,
)
from overlaybd_provider.formats.gzcheckpoint import NotTurboCapable
from overlaybd_provider.formats.gzworker import InflateJob, open_checkpointing
from overlaybd_provider.formats.turbo import (
    target_media_type,
    turbo_annotations,
    turbo_capability,
)

__all__ = ["DualResult", "apply_both_to_stack"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DualResult:
    native: StackApplyStats
    turbo: TurboLayerResult


class _Replay:
    """The tar reader, except that one (sparse) member's data comes from a spooled copy."""

    def __init__(self, tf: Any, spool: BinaryIO) -> None:
        self._tf, self._spool = tf, spool

    def extractfile(self, _ti: tarfile.TarInfo) -> BinaryIO:
        self._spool.seek(0)
        return self._spool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tf, name)


def _apply_both(native: Filesystem, turbo: Filesystem, tf: Any, name: str) -> tuple[ApplyStats, ApplyStats]:
    """``changeset.apply_tar`` for two filesystems fed by one tar reader."""
    an, at = ChangesetApplier(native, Namespace(native)), ChangesetApplier(turbo, Namespace(turbo))
    take = getattr(tf, "take_buffered", None)
    if take is not None:
        an._take = take  # the turbo applier never takes data (it maps it), so the buffer is the native's

    def both(ti: tarfile.TarInfo) -> None:
        if ti.size and getattr(ti, "sparse", None) is not None and ti.isreg():
            with tempfile.TemporaryFile(prefix="sparse-") as spool:
                src = tf.extractfile(ti)
                shutil.copyfileobj(src, spool, 1 << 20)
                replay = _Replay(tf, spool)
                at.apply_entry(replay, ti)
                an.apply_entry(replay, ti)
        else:
            at.apply_entry(tf, ti)
            an.apply_entry(tf, ti)

    def finish() -> None:
        at.finish()
        an.finish()

    apply_members(tf, both, finish)
    if an.first_clamped is not None:
        entry, sec = an.first_clamped
        log.warning("%s: %d entries have times ext4 cannot store, clamped (first: %r, mtime %d)", name,
                    an.stats.clamped_times, entry, sec)
    return an.stats, at.stats


def _open_fs(dev: OverlayBlockDevice, lower: LowerStack | None, mkfs_options: MkfsOptions | str | None) -> Filesystem:
    if lower is None:
        opts = mkfs_options if isinstance(mkfs_options, MkfsOptions) else MkfsOptions.parse(mkfs_options)
        return mkfs(dev, opts)
    return Filesystem(dev)


def apply_both_to_stack(native_lower: LowerStack | None, turbo_lower: LowerStack | None, source: BinaryIO,
                        native_out: BinaryIO, turbo_out: BinaryIO, *, source_media_type: str | None = None,
                        expected_digest: str | None = None, expected_size: int | None = None,
                        diff_id: str | None = None, vsize_gb: int = 64, algorithm: str = "lz4",
                        block_size_kb: int = 4, uuid: str | None = None, parent_uuid: str | None = None,
                        mkfs_options: MkfsOptions | str | None = None, spool_dir: str | None = None,
                        name: str = "source layer", inflate: InflateJob | None = None) -> DualResult:
    """Both layers of ``source`` (a seekable gzip/tar layer blob, read once from its current
    position): the native blob over ``native_lower`` to ``native_out`` (seekable, readable) and
    the TurboOCIv1 meta blob over ``turbo_lower`` to ``turbo_out``. Raises ``NotTurboCapable``
    before reading anything when the source cannot be TurboOCI (build them separately then)."""
    from overlaybd_provider.ext4.seal import seal_blob
    from overlaybd_provider.formats.zfile_codec import BatchCompressor
    from overlaybd_provider.formats.zfile_header import ALGORITHMS

    started = time.monotonic()
    head = source.read(512)
    ok, kind = turbo_capability(source_media_type, head)
    if not ok:
        raise NotTurboCapable(f"{name}: {kind}")
    source.seek(-len(head), os.SEEK_CUR)
    nvsize, tvsize = _vsize(native_lower, vsize_gb), _vsize(turbo_lower, vsize_gb)
    if block_size_kb * 1024 != BLOCK_SIZE:
        raise NotTurboCapable(f"{name}: one-pass native+TurboOCI needs 4 KiB ZFile blocks (--bs 4)")
    compressor = BatchCompressor(ALGORITHMS[algorithm], BLOCK_SIZE, zstd_threads=min(2, os.cpu_count() or 1))
    gz = (open_checkpointing(source, name=name, hash_output=diff_id is not None, spool_dir=spool_dir,
                             job=inflate) if kind == "gzip" else None)
    stream: Any = gz if gz is not None else _HashingReader(source)
    ndev = OverlayBlockDevice(native_lower, block_count=nvsize // BLOCK_SIZE, spool_dir=spool_dir,
                              compressor=compressor, expect_bytes=expected_size)
    tdev = OverlayBlockDevice(turbo_lower, block_count=tvsize // BLOCK_SIZE, spool_dir=spool_dir, turbo=True)
    try:
        nfs, tfs = _open_fs(ndev, native_lower, mkfs_options), _open_fs(tdev, turbo_lower, mkfs_options)
        counter = ForwardReader(stream)  # type: ignore[arg-type]
        nstats, tstats = _apply_both(nfs, tfs, open_tar_stream(counter), name)
        while counter.read(1 << 20):  # tar padding, gzip trailer: hashed and checked
            pass
        digest = check_source(stream, gzip=gz is not None, name=name, expected_digest=expected_digest,
                              expected_size=expected_size, diff_id=diff_id)
        info, blocks = seal_blob(ndev, native_out, virtual_size=nvsize, uuid=uuid, parent_uuid=parent_uuid,
                                 algorithm=algorithm)
        native = StackApplyStats(blocks, nstats, counter.count, kind, nvsize, info.digest, info.size)
        blob, fs_meta_size, gz_size, spans, meta_blocks, target_blocks = pack_meta_blob(
            tdev, turbo_out, gz, fstype="ext4", vsize=tvsize, uuid=None, parent_uuid=None, algorithm="lz4",
            block_size_kb=4, spool_dir=spool_dir)
        tmt = target_media_type(source_media_type or "", kind == "gzip")
        turbo = TurboLayerResult(
            digest=blob.digest, size=blob.size, diff_id=blob.diff_id,
            annotations=turbo_annotations(blob, digest, tmt), target_digest=digest, target_media_type=tmt,
            source_kind=kind, source_size=stream.compressed_size, source_tar_size=counter.count,
            fs_meta_size=fs_meta_size, gzip_index_size=gz_size, gzip_spans=spans, meta_blocks=meta_blocks,
            target_blocks=target_blocks, files=tstats.files, entries=tstats.entries, virtual_size=tvsize,
            seconds=time.monotonic() - started)
        return DualResult(native, turbo)
    finally:
        ndev.close()
        tdev.close()
        if gz is not None:
            gz.close()
