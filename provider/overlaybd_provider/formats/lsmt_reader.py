"""Read one sealed LSMT layer (lsmt.md §3, §5, §7) from any random-access source."""

from __future__ import annotations

import logging
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from typing import BinaryIO

from overlaybd_provider.formats.errors import BadIndexError, BadMagicError, TruncatedError
from overlaybd_provider.formats.lsmt_index import (
    ENTRY_SIZE,
    FLAG_DATA,
    FLAG_HEADER,
    FLAG_SEALED,
    LSMT_HT_SIZE,
    MAX_INDEX_ENTRIES,
    SECTOR,
    IndexEntry,
    LSMTHeader,
    is_lsmt_header,
    iter_entries,
    sector_span,
)
from overlaybd_provider.formats.source import ByteSource, as_source

log = logging.getLogger(__name__)


class LSMTReader:
    """One sealed layer: header, trailer and the validated index, kept as compact arrays.

    ``source`` is a file object or anything with ``size``, ``name`` and
    ``read(offset, length)`` (e.g. a :class:`~overlaybd_provider.formats.zfile.ZFileReader`).
    """

    def __init__(self, source: BinaryIO | ByteSource, name: str | None = None, *, warp: bool = False):
        self.warp = warp  # keep entry tags (a TurboOCI warp file: tag 1 = data in the target)
        src = as_source(source, name=name)
        self.source = src
        self.name = name or src.name
        size = src.size
        if size < 2 * LSMT_HT_SIZE:
            raise TruncatedError(f"{self.name}: truncated LSMT: {size} bytes, at least 8192 expected")
        raw = src.read(0, LSMT_HT_SIZE)
        if not is_lsmt_header(raw):
            raise BadMagicError(f"{self.name}: not an LSMT layer: wrong magic or flags at offset 0")
        self.header = LSMTHeader.from_bytes(raw)
        trailer_offset = size - LSMT_HT_SIZE
        self.trailer = t = LSMTHeader.from_bytes(src.read(trailer_offset, LSMT_HT_SIZE))
        need = FLAG_DATA | FLAG_SEALED
        if not t.magic_ok or t.flags & FLAG_HEADER or (t.flags & need) != need:
            raise BadMagicError(
                f"{self.name}: LSMT trailer has wrong magic or flags (0x{t.flags:X}) at offset {trailer_offset}"
            )
        if t.index_size > MAX_INDEX_ENTRIES:
            raise BadIndexError(f"{self.name}: LSMT index_size {t.index_size} exceeds {MAX_INDEX_ENTRIES}")
        if t.index_offset < LSMT_HT_SIZE or t.index_offset + t.index_size * ENTRY_SIZE > trailer_offset:
            raise TruncatedError(
                f"{self.name}: truncated LSMT: index of {t.index_size} entries at offset {t.index_offset} "
                f"overruns the trailer at offset {trailer_offset}"
            )
        self.virtual_size = t.virtual_size or self.header.virtual_size
        self.uuid = t.uuid
        self.parent_uuid = t.parent_uuid
        self._load_index(src.read(t.index_offset, t.index_size * ENTRY_SIZE), t.index_offset)

    def _load_index(self, buf: bytes, index_offset: int) -> None:
        offsets, ends, moffsets = array("Q"), array("Q"), array("Q")
        zeroed, tags = bytearray(), bytearray()
        warp = self.warp
        min_tag = 0
        if warp:  # open_warpfile_ro rebases tags on the smallest one (do_load_index, warp_file_tag 3)
            min_tag = min((t for *_, t in iter_entries(buf, tags=True)), default=0)
        data_end = index_offset // SECTOR
        prev_end = 0
        mapped = 0
        for i, (off, length, moff, z, tag) in enumerate(iter_entries(buf, tags=True)):
            where = f"{self.name}: LSMT index entry {i} (offset {off}, length {length}, moffset {moff}) at byte {index_offset + i * ENTRY_SIZE}"
            if length == 0:
                raise BadIndexError(f"{where}: zero length")
            if off < prev_end:
                raise BadIndexError(f"{where}: overlaps or is out of order (previous entry ends at sector {prev_end})")
            tag = tag - min_tag if warp else 0
            if tag > 1:
                raise BadIndexError(f"{where}: warp-file tag {tag + min_tag} (only meta and target exist)")
            tags.append(tag)
            # target entries (tag 1) are checked against the target by formats.warp
            if not tag and (moff < 8 or (moff > data_end if z else moff + length > data_end)):
                raise BadIndexError(f"{where}: moffset out of the data area [8, {data_end})")
            prev_end = off + length
            offsets.append(off)
            ends.append(prev_end)
            moffsets.append(moff)
            zeroed.append(z)
            if not z:
                mapped += length
        # the validated index as parallel arrays, in sectors (read-only for users)
        self.offsets, self.ends, self.moffsets, self.zeroed_flags = offsets, ends, moffsets, zeroed
        self.tags = tags
        self.mapped_sectors = mapped
        log.debug("%s: %d index entries, %d mapped sectors", self.name, len(offsets), mapped)

    # -- index access -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def entry_count(self) -> int:
        return len(self.offsets)

    @property
    def zeroed_count(self) -> int:
        return sum(self.zeroed_flags)

    def entry(self, i: int) -> IndexEntry:
        return IndexEntry(
            self.offsets[i], self.ends[i] - self.offsets[i], self.moffsets[i], self.zeroed_flags[i]
        )

    def entries(self) -> Iterator[IndexEntry]:
        """Valid entries in LBA order (padding removed, tags reset to 0)."""
        for i in range(len(self.offsets)):
            yield self.entry(i)

    def first_entry_at_or_after(self, sector: int) -> int:
        """Index of the first entry whose end lies beyond ``sector``."""
        i = bisect_right(self.offsets, sector) - 1
        if i < 0 or self.ends[i] <= sector:
            i += 1
        return i

    def source_for(self, tag: int) -> ByteSource:
        """Where entries with ``tag`` keep their data (plain layers: always this file)."""
        return self.source

    def read_entry_data(self, i: int, sector: int, nsectors: int) -> bytes:
        """``nsectors`` sectors of entry ``i`` starting at LBA ``sector`` (data entries only)."""
        moff = self.moffsets[i] + (sector - self.offsets[i])
        return self.source.read(moff * SECTOR, nsectors * SECTOR)

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of this layer alone (holes and zeroed entries read as zeros); the same as a
        one-layer ``LayerStack`` (which this module must not import: stack imports it)."""
        s0, s1 = sector_span(offset, length, self.virtual_size)
        if length == 0:
            return b""
        out = bytearray((s1 - s0) * SECTOR)
        offsets, ends, zeroed = self.offsets, self.ends, self.zeroed_flags
        i = self.first_entry_at_or_after(s0)
        while i < len(offsets) and offsets[i] < s1:
            if not zeroed[i]:
                s, e = max(s0, offsets[i]), min(s1, ends[i])
                lo = (s - s0) * SECTOR
                out[lo:lo + (e - s) * SECTOR] = self.read_entry_data(i, s, e - s)
            i += 1
        start = offset - s0 * SECTOR
        return bytes(out[start:start + length])
