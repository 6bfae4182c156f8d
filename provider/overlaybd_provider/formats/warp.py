"""Read a TurboOCIv1 *warp file*: a sealed LSMT whose entries say where their data lives.

``LSMT::open_warpfile_ro(fsmeta, target)`` (overlaybd ``lsmt/file.cpp``) keeps the entry tags
that plain layers reset: tag 0 (``SegmentType::fsMeta``) reads from the fs meta file itself at
``moffset``, tag 1 (``remoteData``) from the *target* — the uncompressed source layer tar — at
``moffset`` sectors. A short target read is padded with zeros there; here every target entry
must lie inside the target (checked when the layer is opened), so a damaged meta fails early
with one line instead of reading zeros.
"""

from __future__ import annotations

from typing import BinaryIO

from overlaybd_provider.formats.errors import BadIndexError
from overlaybd_provider.formats.lsmt_index import SECTOR, TAG_TARGET
from overlaybd_provider.formats.lsmt_reader import LSMTReader
from overlaybd_provider.formats.source import ByteSource


class _ZeroPadded:
    """A target whose last sector may run past its end (tar sizes are 512-aligned; gzip
    targets pad themselves): reads beyond the end are zeros, as in ``LSMTReadOnlyFile::pread``."""

    def __init__(self, inner: ByteSource) -> None:
        self.inner = inner
        self.name = inner.name
        self.size = -(-inner.size // SECTOR) * SECTOR

    def read(self, offset: int, length: int) -> bytes:
        have = max(0, min(length, self.inner.size - offset))
        data = self.inner.read(offset, have) if have else b""
        return data + bytes(length - have) if have < length else data


class WarpLayer(LSMTReader):
    """An LSMT layer plus its target; ``read``/export take tag-1 data from ``target``."""

    def __init__(self, meta: BinaryIO | ByteSource, target: ByteSource, name: str | None = None) -> None:
        super().__init__(meta, name, warp=True)
        self.target = _ZeroPadded(target)
        limit = self.target.size // SECTOR
        self.target_sectors = 0
        for i, tag in enumerate(self.tags):
            if tag != TAG_TARGET:
                continue
            length = self.ends[i] - self.offsets[i]
            if self.moffsets[i] + length > limit:
                raise BadIndexError(
                    f"{self.name}: warp entry {i} (offset {self.offsets[i]}, length {length}) reads target "
                    f"sectors up to {self.moffsets[i] + length}, but the target {target.name} has {limit}")
            self.target_sectors += length
        self.meta_sectors = self.mapped_sectors - self.target_sectors

    def source_for(self, tag: int) -> ByteSource:
        return self.target if tag == TAG_TARGET else self.source

    def read_entry_data(self, i: int, sector: int, nsectors: int) -> bytes:
        moff = self.moffsets[i] + (sector - self.offsets[i])
        return self.source_for(self.tags[i]).read(moff * SECTOR, nsectors * SECTOR)
