"""Seal an upper layer spooled as compressed 4 KiB blocks straight into a layer blob.

With 4 KiB ZFile blocks, the ZFile of a sealed LSMT is one stored block per LSMT block: the
4096-byte LSMT header, every data block in LBA order, the index (padded to 256 entries, so
whole blocks) and the 4096-byte trailer. :class:`~ext4.blockdev.OverlayBlockDevice` already
compressed the file data while the tar was read, so sealing only compresses the scattered
metadata blocks, plans the LSMT index (:meth:`LSMTWriter.add_mapped`), and then knows every
stored length before writing a byte: the tar prefix (which carries the payload size), the
final ZFile header, the blocks, the jump table and trailer are written front to back in one
sequential pass that also computes the blob digest — no back-patching, no read-back. The bytes
are identical to ``LSMTWriter`` → ``LayerBlobWriter`` on the same device.
"""

from __future__ import annotations

import hashlib
import logging
import os
from array import array
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from overlaybd_provider.ext4.blockdev import SECTORS_PER_BLOCK, OverlayBlockDevice
from overlaybd_provider.ext4.layout import BLOCK_SIZE
from overlaybd_provider.formats.blob import BlobInfo
from overlaybd_provider.formats.lsmt_writer import LSMTWriter
from overlaybd_provider.formats.tarwrap import tar_prefix, tar_suffix
from overlaybd_provider.formats.zfile_header import ALGORITHMS, ZFILE_HEADER_SIZE
from overlaybd_provider.formats.zfile_writer import finish_zfile

log = logging.getLogger(__name__)

_META_BATCH = 256  # raw metadata blocks per compress call
_COPY_BYTES = 4 << 20  # z-spool bytes per read when streaming the blob


class _Collect:
    """A write-only sink that keeps what the LSMT writer emits itself (header, index, trailer)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _zranges(dev: OverlayBlockDevice, lsmt: LSMTWriter) -> list[list[int]]:
    """Plan the LSMT index and give every upper block a stored z-slot; returns z-slot ranges
    ``[first, count]`` in LBA order (adjacent ones merged). Raw (metadata) blocks are
    compressed here and appended to the z-spool."""
    comp = dev.compressor
    assert comp is not None
    ranges: list[list[int]] = []
    batch: list[bytes] = []
    batched = 0  # blocks in batch
    next_new = dev.zslot_count()

    def add(first: int, count: int) -> None:
        if ranges and ranges[-1][0] + ranges[-1][1] == first:
            ranges[-1][1] += count
        else:
            ranges.append([first, count])

    def flush() -> None:
        nonlocal batched
        if batch:
            dev.store_raw(b"".join(batch))
            batch.clear()
            batched = 0

    for blk, cnt, compressed, slot in dev.pieces():
        lsmt.add_mapped(blk * SECTORS_PER_BLOCK, cnt * SECTORS_PER_BLOCK)
        if compressed:
            add(slot, cnt)
            continue
        k = 0
        while k < cnt:  # consecutive slots (metadata written in block order): one read per batch
            take = min(cnt - k, _META_BATCH - batched)
            batch.append(dev.read_raw_slots(slot + k, take))
            batched += take
            k += take
            if batched >= _META_BATCH:
                flush()
        add(next_new, cnt)
        next_new += cnt
    flush()
    dev.zsync()
    return ranges


def seal_blob(dev: OverlayBlockDevice, out: BinaryIO, *, virtual_size: int, uuid: str | None,
              parent_uuid: str | None, algorithm: str) -> tuple[BlobInfo, int]:
    """Write the layer blob of ``dev`` (compressed spool) to ``out`` at its current position;
    returns the blob facts and the number of blocks sealed."""
    comp = dev.compressor
    if comp is None or comp.block_size != BLOCK_SIZE:
        raise ValueError("seal_blob needs a device spooling 4 KiB compressed blocks")
    sink = _Collect()
    lsmt = LSMTWriter(sink, virtual_size=virtual_size, uuid=uuid, parent_uuid=parent_uuid)  # type: ignore[arg-type]
    lsmt_head = sink.take()
    ranges = _zranges(dev, lsmt)
    lsmt.close()
    lsmt_tail = sink.take()
    head_stored, head_lengths = comp.compress(lsmt_head)
    tail_stored, tail_lengths = comp.compress(lsmt_tail)

    lengths = array("I", head_lengths)
    blocks = 0
    spans: list[list[int]] = []  # z-spool byte spans, adjacent ones merged
    for first, count in ranges:
        lengths.extend(dev.zslot_lengths(first, count))
        blocks += count
        for off, length in dev.zspans(first, count):
            if spans and spans[-1][0] + spans[-1][1] == off:
                spans[-1][1] += length
            else:
                spans.append([off, length])
    lengths.extend(tail_lengths)
    stored_total = len(head_stored) + sum(s[1] for s in spans) + len(tail_stored)
    raw_size = len(lsmt_head) + blocks * BLOCK_SIZE + len(lsmt_tail)
    zheader, table, trailer, zinfo = finish_zfile(
        lengths, raw_size, index_offset=ZFILE_HEADER_SIZE + stored_total, algorithm=algorithm,
        block_size=BLOCK_SIZE, algo=ALGORITHMS[algorithm], level=0, verify=1 if comp.verify else 0)

    h = hashlib.sha256()
    written = 0

    def emit(data: bytes | memoryview) -> None:
        nonlocal written
        h.update(data)
        out.write(data)
        written += len(data)

    for part in (tar_prefix(zinfo.size), zheader, head_stored):
        emit(part)
    # the bulk: spans are gathered into one buffer (one read each, however small) and each full
    # buffer is hashed on a helper thread while the other is filled and written (both release
    # the GIL), so the pass costs about max(hash, write) rather than the sum
    bufs = [memoryview(bytearray(_COPY_BYTES)), memoryview(bytearray(_COPY_BYTES))]
    fd = dev.zspool_fd()
    with ThreadPoolExecutor(1, thread_name_prefix="seal-hash") as pool:
        pending = None
        k = fill = 0

        def flush() -> None:
            nonlocal pending, k, fill, written
            if pending is not None:
                pending.result()
            view = bufs[k][:fill]
            pending = pool.submit(h.update, view)
            out.write(view)
            written += fill
            k ^= 1
            fill = 0

        for off, length in spans:
            while length:
                n = os.preadv(fd, [bufs[k][fill:fill + min(length, _COPY_BYTES - fill)]], off)
                if n <= 0:
                    raise OSError(f"short read from the block spool at offset {off}")
                fill += n
                off += n
                length -= n
                if fill == _COPY_BYTES:
                    flush()
        if fill:
            flush()
        if pending is not None:
            pending.result()
    for part in (tail_stored, table, trailer, tar_suffix(zinfo.size)):
        emit(part)
    log.debug("sealed %d blocks into a %d-byte blob (%d z-spool spans)", blocks, written, len(spans))
    return BlobInfo(digest=f"sha256:{h.hexdigest()}", size=written, zfile=zinfo), blocks
