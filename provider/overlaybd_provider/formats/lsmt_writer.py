"""Write a sealed LSMT layer the way ``overlaybd-commit`` compacts one (lsmt.md §5-§6).

Streaming: the header carries no index fields, data goes out as it arrives, and only the
index (16 bytes per entry) is kept in memory, so ``out`` may be a pipe or a
:class:`~overlaybd_provider.formats.zfile.ZFileWriter`.

How callers' writes map to upstream's entries: consecutive ``add_data`` calls that are
contiguous in LBA form one *run* (one allocated extent of upstream's sparse data file); a run
is cut into pieces of at most 16383 sectors from its start, every piece into chunks of 64
sectors (32 KiB), and the chunks are merged left to right while the sum stays below 16383.
Zero runs (``add_zero``) are cut into pieces only. This yields upstream's bytes exactly for
the same extents.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import BinaryIO

from overlaybd_provider.formats.lsmt_index import (
    FLAGS_SEALED_HEADER,
    FLAGS_SEALED_TRAILER,
    INDEX_ALIGN_ENTRIES,
    INVALID_OFFSET,
    LSMT_HT_SIZE,
    MAX_ENTRY_LENGTH,
    PADDING_ENTRY,
    SECTOR,
    TAG_TARGET,
    IndexEntry,
    LSMTHeader,
)

log = logging.getLogger(__name__)

CHUNK_SECTORS = 64  # lsmt.md §6 step 3: data copied in 32 KiB chunks
_COPY_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class LSMTInfo:
    """Facts about a finished layer."""

    size: int
    index_offset: int
    index_size: int
    valid_entries: int
    data_sectors: int
    header: LSMTHeader
    trailer: LSMTHeader


class LSMTWriter:
    """``add_data``/``add_zero`` in ascending, non-overlapping LBA order, then ``close()``."""

    def __init__(
        self,
        out: BinaryIO,
        *,
        virtual_size: int,
        uuid: str | None,
        parent_uuid: str | None = None,
        user_tag: bytes = b"",
    ):
        self._out = out
        self._fields = dict(virtual_size=virtual_size, uuid=uuid or "", parent_uuid=parent_uuid or "",
                            user_tag=user_tag)
        self._header = LSMTHeader(flags=FLAGS_SEALED_HEADER, **self._fields)
        out.write(self._header.to_bytes())
        self._pos = LSMT_HT_SIZE // SECTOR  # next data sector in the file
        self._index = bytearray()
        self._count = 0
        self._cur: list[int] | None = None  # pending merged entry: offset, length, moffset, zeroed
        self._run_start = -1  # LBA where the current run started
        self._run_zeroed = -1
        self._chunk_start = -1  # LBA of the current incomplete unit (data chunk or zero piece)
        self._lba = 0  # end of the last added range
        self._closed = False
        # a zero virtual_size is tolerated in upper layers (lsmt.md §1): no bound then
        self._max_sector = virtual_size // SECTOR if virtual_size else INVALID_OFFSET

    # -- emission ---------------------------------------------------------------
    def _push(self, offset: int, length: int, moffset: int, zeroed: int, tag: int = 0) -> None:
        c = self._cur
        if c is not None:
            mend = c[2] if c[3] else c[2] + c[1]
            if (
                c[0] + c[1] == offset
                and mend == moffset
                and c[3] == zeroed
                and c[4] == tag
                and c[1] + length < MAX_ENTRY_LENGTH
            ):
                c[1] += length
                return
            self._index += IndexEntry(c[0], c[1], c[2], c[3], c[4]).to_bytes()
            self._count += 1
        self._cur = [offset, length, moffset, zeroed, tag]

    def _flush_chunk(self) -> None:
        """Emit the pending unit of the current run: a data chunk or a zero piece."""
        if self._chunk_start >= 0 and self._chunk_start < self._lba:
            n = self._lba - self._chunk_start
            if self._run_zeroed:
                self._push(self._chunk_start, n, self._pos, 1)
            else:
                self._push(self._chunk_start, n, self._pos - n, 0)
        self._chunk_start = -1

    def _boundary(self, lba: int, step: int) -> int:
        """Next chunk/piece boundary strictly after ``lba`` in the current run."""
        rel = lba - self._run_start
        piece_start = self._run_start + rel // MAX_ENTRY_LENGTH * MAX_ENTRY_LENGTH
        piece_end = piece_start + MAX_ENTRY_LENGTH
        if step >= MAX_ENTRY_LENGTH:
            return piece_end
        return min(piece_start + ((lba - piece_start) // step + 1) * step, piece_end)

    def _start(self, lba: int, nsectors: int, zeroed: int) -> None:
        if self._closed:
            raise ValueError("LSMTWriter is closed")
        if lba < self._lba:
            raise ValueError(f"LBA {lba} is below the end of the previous range ({self._lba}): not ascending")
        if lba + nsectors > self._max_sector:
            raise ValueError(
                f"sectors [{lba}, {lba + nsectors}) lie beyond the device ({self._max_sector} sectors)"
            )
        if lba != self._lba or zeroed != self._run_zeroed or self._run_start < 0:
            self._flush_chunk()
            self._run_start = lba
            self._run_zeroed = zeroed

    # -- public -------------------------------------------------------------------
    def add_data(self, lba: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` (a multiple of 512 bytes) at sector ``lba``."""
        n = memoryview(data).nbytes
        if n % SECTOR:
            raise ValueError(f"data length {n} is not a multiple of {SECTOR}")
        if n == 0:
            return
        self._start(lba, n // SECTOR, 0)
        self._out.write(data)
        self._advance(lba, n // SECTOR)

    def add_mapped(self, lba: int, nsectors: int) -> None:
        """Account for ``nsectors`` data sectors at ``lba`` whose bytes the caller writes itself
        (in the same position of the stream as :meth:`add_data` would): the index comes out
        the same, so a sealer can plan a layer before streaming already compressed data."""
        if nsectors <= 0:
            return
        self._start(lba, nsectors, 0)
        self._advance(lba, nsectors)

    def _advance(self, lba: int, nsectors: int) -> None:
        end = lba + nsectors
        cur = lba
        while cur < end:
            if self._chunk_start < 0:
                self._chunk_start = cur
            boundary = self._boundary(self._chunk_start, CHUNK_SECTORS)
            step = min(boundary, end) - cur
            cur += step
            self._pos += step
            self._lba = cur
            if cur == boundary:
                self._flush_chunk()

    def add_target(self, lba: int, nsectors: int, target_sector: int) -> None:
        """Map ``nsectors`` at ``lba`` to sector ``target_sector`` of the layer's *target*
        (a TurboOCI warp file: tag 1 = read from the source layer, ``LSMTWarpFile::vioctl``);
        nothing is written to the data area. Pieces of at most 16383 sectors, like upstream."""
        if nsectors <= 0:
            return
        self._start(lba, nsectors, 2)
        self._flush_chunk()
        done = 0
        while done < nsectors:
            n = min(MAX_ENTRY_LENGTH, nsectors - done)
            self._push(lba + done, n, target_sector + done, 0, TAG_TARGET)
            done += n
        self._lba = lba + nsectors
        self._run_start = -1  # data after this starts a new run

    def add_zero(self, lba: int, nsectors: int) -> None:
        """Record ``nsectors`` sectors at ``lba`` that read as zeros (masking lower layers)."""
        if nsectors <= 0:
            return
        self._start(lba, nsectors, 1)
        end = lba + nsectors
        cur = lba
        while cur < end:
            if self._chunk_start < 0:
                self._chunk_start = cur
            boundary = self._boundary(self._chunk_start, MAX_ENTRY_LENGTH)
            cur = min(boundary, end)
            self._lba = cur
            if cur == boundary:
                self._flush_chunk()

    def close(self) -> LSMTInfo:
        """Write the index (padded to 256 entries) and the trailer. Never closes ``out``."""
        if self._closed:
            raise ValueError("LSMTWriter already closed")
        self._flush_chunk()
        if self._cur is not None:
            c = self._cur
            self._index += IndexEntry(c[0], c[1], c[2], c[3], c[4]).to_bytes()
            self._count += 1
            self._cur = None
        self._closed = True
        valid = self._count
        pad = -valid % INDEX_ALIGN_ENTRIES
        self._index += PADDING_ENTRY * pad
        index_offset = self._pos * SECTOR
        self._out.write(self._index)
        trailer = LSMTHeader(
            flags=FLAGS_SEALED_TRAILER, index_offset=index_offset, index_size=valid + pad, **self._fields
        )
        self._out.write(trailer.to_bytes())
        size = index_offset + len(self._index) + LSMT_HT_SIZE
        log.debug("LSMT: %d entries (+%d padding), %d data sectors, %d bytes", valid, pad,
                  self._pos - LSMT_HT_SIZE // SECTOR, size)
        self._index = bytearray()
        return LSMTInfo(
            size=size, index_offset=index_offset, index_size=valid + pad, valid_entries=valid,
            data_sectors=self._pos - LSMT_HT_SIZE // SECTOR, header=self._header, trailer=trailer,
        )

    def __enter__(self) -> LSMTWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._closed:
            self.close()


def write_lsmt(
    out: BinaryIO,
    extents: Iterable[tuple[int, int, bool]],
    pread: Callable[[int, int], bytes],
    *,
    virtual_size: int,
    uuid: str | None,
    parent_uuid: str | None = None,
    user_tag: bytes = b"",
) -> LSMTInfo:
    """Write a layer from ``(lba_sector, nsectors, zeroed)`` extents (ascending) whose data is
    read with ``pread(byte_offset, length)`` of the device."""
    w = LSMTWriter(out, virtual_size=virtual_size, uuid=uuid, parent_uuid=parent_uuid, user_tag=user_tag)
    for lba, nsectors, zeroed in extents:
        if zeroed:
            w.add_zero(lba, nsectors)
            continue
        step = _COPY_BYTES // SECTOR
        for s in range(lba, lba + nsectors, step):
            k = min(step, lba + nsectors - s)
            w.add_data(s, pread(s * SECTOR, k * SECTOR))
    return w.close()
