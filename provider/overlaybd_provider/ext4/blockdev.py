"""The storage seam of the ext4 writer: a block device over a lower stack plus a new upper layer.

Reads fall through to the lower stack (zeros where nothing is mapped); writes go to the upper
store, which is exactly the content of the new layer. Written blocks live in an unlinked spool
file (not in memory) so a 2 GB layer keeps memory bounded; the index is a dict for scattered
metadata blocks plus a run list for the contiguous file data that makes up the bulk.
"""

from __future__ import annotations

import bisect
import logging
import os
import tempfile
from array import array
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO, Protocol

from overlaybd_provider.ext4.errors import Ext4Error
from overlaybd_provider.ext4.layout import BLOCK_SIZE
from overlaybd_provider.formats.zfile_worker import pwrite_all

if TYPE_CHECKING:
    from overlaybd_provider.formats.zfile_codec import BatchCompressor
    from overlaybd_provider.formats.zfile_spool import CompressedSpool

log = logging.getLogger(__name__)

ZERO_BLOCK = bytes(BLOCK_SIZE)
SECTORS_PER_BLOCK = BLOCK_SIZE // 512
_SEAL_CHUNK_BLOCKS = 256  # 1 MiB per add_data call
_PEND_LIMIT = 8 << 20
_IOV_MAX = 512


class LowerStack(Protocol):
    """What the device needs from ``formats.lsmt.LayerStack``."""

    virtual_size: int

    def read(self, offset: int, length: int) -> bytes: ...


class SectorSink(Protocol):
    """What ``seal`` needs from ``formats.lsmt.LSMTWriter``."""

    def add_data(self, lba_sector: int, data: bytes) -> None: ...


class RawImage:
    """A raw (sparse) image file used as a lower stack, e.g. an ``overlaybd export`` result."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self.virtual_size = os.fstat(self._fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        return data if len(data) == length else data + bytes(length - len(data))

    def close(self) -> None:
        os.close(self._fd)


class RawImageSink:
    """Writes sealed sectors in place into a raw image file (tests, ``--raw`` debugging)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def add_data(self, lba_sector: int, data: bytes) -> None:
        os.pwrite(self._f.fileno(), data, lba_sector * 512)


class OverlayBlockDevice:
    """Block device = lower stack (read-only) + upper store (everything written).

    With ``compressor`` (a 4 KiB ZFile :class:`BatchCompressor`), fresh contiguous ranges
    (file data, the bulk of a layer) are compressed as they arrive and spooled as stored ZFile
    blocks: a 4 KiB-block ZFile of a sealed LSMT maps every LSMT block (header, data, index) to
    exactly one ZFile block, so a data block's stored bytes do not depend on where it ends up,
    and :mod:`ext4.seal` can write the blob without a second pass over the raw data.
    """

    def __init__(self, lower: LowerStack | None, *, block_count: int | None = None,
                 spool_dir: str | None = None, compressor: BatchCompressor | None = None,
                 turbo: bool = False, expect_bytes: int | None = None) -> None:
        self.lower = lower
        self.turbo = turbo  # TurboOCI build: regular file data is mapped to the source (map_target)
        if block_count is None:
            block_count = (lower.virtual_size // BLOCK_SIZE) if lower is not None else 0
        self.block_count = block_count
        self._spool = tempfile.TemporaryFile(dir=spool_dir, prefix="ext4-upper-")  # noqa: SIM115 - closed by close()
        self._fd = self._spool.fileno()
        self._next_slot = 0  # spool position, in blocks
        self._single: dict[int, int] = {}  # block -> spool slot
        self._run_start: list[int] = []  # sorted block numbers
        self._run_len: list[int] = []
        self._run_slot: list[int] = []
        self.blocks_read_lower = 0
        # consecutive fresh writes are gathered here and written with one pwrite
        self._pend: list[bytes | memoryview] = []
        self._pend_bytes = 0
        self._pend_slot = 0
        # fresh single blocks (metadata: mkfs and every flush write it in block order) gathered
        # here from spool slot _sbuf_slot on, and written with one pwritev
        self._sbuf: list[bytes] = []
        self._sbuf_slot = 0
        # blocks _clear_lo .. _clear_hi - 1 are known to hold nothing of the upper store: fresh
        # file data lands there one range after the other, so most overlap checks end at once
        self._clear_lo = 0
        self._clear_hi = 0
        self._full_checks = 0  # overlap checks that searched since the window was last measured
        # compressed runs (``compressor`` set): run slots index stored blocks in the z-spool
        self.compressor = compressor
        # TurboOCI: runs whose data stays in the source layer ("target"), as parallel lists of
        # first block, block count, target byte offset (512-aligned) and mapped sectors
        self._tgt_start: list[int] = []
        self._tgt_len: list[int] = []
        self._tgt_off: list[int] = []
        self._tgt_sect: list[int] = []
        self._zs: CompressedSpool | None = None
        self._shadowed = 0  # singles written over blocks of compressed runs
        self._discard: list[tuple[int, int]] = []  # blocks left out of the seal (discard)
        if compressor is not None:
            from overlaybd_provider.formats.zfile_spool import CompressedSpool

            if compressor.block_size != BLOCK_SIZE:
                raise ValueError("the spool compressor must use 4 KiB blocks")
            self._zs = CompressedSpool(compressor, spool_dir=spool_dir, expect_bytes=expect_bytes)

    # -- reads -----------------------------------------------------------------------------
    def _flush_pending(self) -> None:
        if self._sbuf:
            self._flush_singles()
        if not self._pend:
            return
        if self.compressor is not None:
            self._compress_pending()
            return
        pos = self._pend_slot * BLOCK_SIZE
        for i in range(0, len(self._pend), _IOV_MAX):
            bufs = self._pend[i:i + _IOV_MAX]
            self._pwrite_all(bufs, pos)
            pos += sum(len(b) for b in bufs)
        self._pend.clear()
        self._pend_bytes = 0

    def _flush_singles(self) -> None:
        self._pwrite_all(self._sbuf, self._sbuf_slot * BLOCK_SIZE)
        self._sbuf.clear()

    def _pwrite_all(self, bufs: list[bytes | memoryview], pos: int) -> None:
        want = sum(len(b) for b in bufs)
        done = os.pwritev(self._fd, bufs, pos)
        if done != want:  # short write (rare): finish it plainly
            pwrite_all(self._fd, b"".join(bytes(b) for b in bufs)[done:], pos + done)

    def _compress_pending(self) -> None:
        assert self._zs is not None
        for data in self._pend:
            self._zs.append(data)
        self._pend.clear()
        self._pend_bytes = 0

    def store_raw(self, data: bytes) -> int:
        """Queue whole raw blocks for the z-spool; returns the z-slot of the first one."""
        assert self._zs is not None
        self._flush_pending()
        return self._zs.append(data, may_start=False)  # the seal's metadata: a worker would start too late

    def zslot_count(self) -> int:
        assert self._zs is not None
        return self._zs.queued

    def zspool_fd(self) -> int:
        assert self._zs is not None
        return self._zs.fd

    def zsync(self) -> None:
        """Wait until every queued block is compressed (before the z-slot lookups below)."""
        assert self._zs is not None
        self._flush_pending()
        self._zs.sync()

    def zspans(self, first: int, count: int) -> list[tuple[int, int]]:
        """(offset, length) spans in the z-spool of stored blocks ``first .. first + count - 1``."""
        assert self._zs is not None
        return self._zs.spans(first, count)

    def zslot_lengths(self, first: int, count: int) -> array:
        assert self._zs is not None
        return self._zs.lengths[first:first + count]

    def _read_compressed(self, zslot: int) -> bytes:
        from overlaybd_provider.formats.zfile_codec import BlockDecompressor

        assert self.compressor is not None
        self.zsync()
        ((off, length),) = self.zspans(zslot, 1)
        stored = os.pread(self.zspool_fd(), length, off)
        body = stored[:-4] if self.compressor.verify else stored
        return BlockDecompressor(self.compressor.algo, BLOCK_SIZE).decompress(body, BLOCK_SIZE)

    def _run_zslot(self, n: int) -> int | None:
        i = bisect.bisect_right(self._run_start, n) - 1
        if i >= 0 and n < self._run_start[i] + self._run_len[i]:
            return self._run_slot[i] + n - self._run_start[i]
        return None

    def _upper_slot(self, n: int) -> int | None:
        """Raw-spool slot of block ``n`` (None: not upper, or inside a compressed run)."""
        if self._pend or self._sbuf:
            self._flush_pending()
        slot = self._single.get(n)
        if slot is not None or self.compressor is not None:
            return slot
        return self._run_zslot(n)

    def _target_run(self, n: int) -> int:
        """Index of the target run holding block ``n``, or -1."""
        i = bisect.bisect_right(self._tgt_start, n) - 1
        return i if i >= 0 and n < self._tgt_start[i] + self._tgt_len[i] else -1

    def read_block(self, n: int) -> bytes:
        slot = self._upper_slot(n)
        if slot is not None:
            return os.pread(self._fd, BLOCK_SIZE, slot * BLOCK_SIZE)
        if self._tgt_start and self._target_run(n) >= 0:
            raise Ext4Error(f"block {n} holds file data of the TurboOCI source layer, which the "
                            "writer does not read back")
        if self.compressor is not None:
            zslot = self._run_zslot(n)
            if zslot is not None:
                return self._read_compressed(zslot)
        if self.lower is None:
            return ZERO_BLOCK
        self.blocks_read_lower += 1
        return self.lower.read(n * BLOCK_SIZE, BLOCK_SIZE)

    def in_upper(self, n: int) -> bool:
        return (self._upper_slot(n) is not None or (self.compressor is not None and self._run_zslot(n) is not None)
                or (bool(self._tgt_start) and self._target_run(n) >= 0))

    # -- writes ----------------------------------------------------------------------------
    def _check_range(self, n: int, count: int) -> None:
        if n < 0 or n + count > self.block_count:
            raise ValueError(f"block {n}+{count} outside device of {self.block_count} blocks")

    def write_block(self, n: int, data: bytes) -> None:
        if len(data) != BLOCK_SIZE:
            raise ValueError("write_block needs exactly one block")
        self._check_range(n, 1)
        if type(data) is not bytes:
            data = bytes(data)  # it may be held below, and a caller may reuse its buffer
        slot = self._single.get(n)
        if slot is None:
            if self._pend:
                self._flush_pending()  # pending runs take the slots before a new single's
            if self.compressor is None:
                slot = self._run_zslot(n)  # inside a raw run: written in place
        if slot is None:
            slot = self._next_slot
            self._next_slot += 1
            self._single[n] = slot
            self._claim(n, 1)
            if self.compressor is not None and self._run_zslot(n) is not None:
                self._shadowed += 1  # a single now hides this block of a compressed run
            held = self._sbuf
            if held and self._sbuf_slot + len(held) != slot:
                self._flush_singles()
            if not held:
                self._sbuf_slot = slot
            held.append(data)
            if len(held) >= _IOV_MAX:
                self._flush_singles()
            return
        i = slot - self._sbuf_slot
        if self._sbuf and 0 <= i < len(self._sbuf):
            self._sbuf[i] = data  # still held: replace it
            return
        os.pwrite(self._fd, data, slot * BLOCK_SIZE)

    def write_blocks(self, n: int, data: bytes | memoryview) -> None:
        """Write a contiguous range; fresh ranges become one run entry appended to the spool."""
        count, rem = divmod(len(data), BLOCK_SIZE)
        if rem:
            raise ValueError("write_blocks needs whole blocks")
        if count == 0:
            return
        self._check_range(n, count)
        if self._overlaps_upper(n, count):
            mv = memoryview(data)
            for i in range(count):
                self.write_block(n + i, bytes(mv[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE]))
            return
        if self._zs is not None:
            slot = self._zs.append(data)  # copied to the compressor now: nothing pending
        else:
            slot = self._next_slot
            self._next_slot += count
            if not self._pend:
                self._pend_slot = slot
            self._pend.append(data)
            self._pend_bytes += len(data)
            if self._pend_bytes >= _PEND_LIMIT:
                self._flush_pending()
        self._add_run(n, count, slot)

    def write_blocks_from(self, n: int, nbytes: int, fill: Callable[[memoryview], None]) -> None:
        """Write ``nbytes`` (zero-padded to whole blocks) at block ``n``; ``fill(view)`` puts the
        bytes in place, piece by piece in order. With the compressing spool they land straight
        in its shared ring (no intermediate buffer); otherwise this is :meth:`write_blocks`."""
        count = -(-nbytes // BLOCK_SIZE)
        if count == 0:
            return
        self._check_range(n, count)
        if self._zs is None or self._overlaps_upper(n, count):
            buf = bytearray(count * BLOCK_SIZE)
            with memoryview(buf) as whole, whole[:nbytes] as part:
                fill(part)
            self.write_blocks(n, buf)
            return
        self._add_run(n, count, self._zs.append_from(nbytes, fill))

    def write_padded(self, n: int, data: bytes | memoryview) -> None:
        """Write ``data`` (zero-padded to whole blocks) at block ``n``: :meth:`write_blocks_from`
        for bytes already in memory, with one copy into the compressor's ring."""
        count = -(-len(data) // BLOCK_SIZE)
        if count == 0:
            return
        self._check_range(n, count)
        if self._zs is None or self._overlaps_upper(n, count):
            buf = bytearray(count * BLOCK_SIZE)
            buf[:len(data)] = data
            self.write_blocks(n, buf)
            return
        self._add_run(n, count, self._zs.append_padded(data))

    def _add_run(self, n: int, count: int, slot: int) -> None:
        """Record fresh blocks ``n .. n+count-1`` at spool slot ``slot`` (merged with the run before)."""
        self._claim(n, count)
        starts = self._run_start
        if starts:
            last = len(starts) - 1
            end = starts[last] + self._run_len[last]
            if n >= end:  # past every run (file data, written in block order): no search
                if end == n and self._run_slot[last] + self._run_len[last] == slot:
                    self._run_len[last] += count
                else:
                    starts.append(n)
                    self._run_len.append(count)
                    self._run_slot.append(slot)
                return
        i = bisect.bisect_left(starts, n)
        if (i > 0 and self._run_start[i - 1] + self._run_len[i - 1] == n
                and self._run_slot[i - 1] + self._run_len[i - 1] == slot):
            self._run_len[i - 1] += count
            return
        self._run_start.insert(i, n)
        self._run_len.insert(i, count)
        self._run_slot.insert(i, slot)

    def map_target(self, n: int, count: int, target_offset: int, nbytes: int) -> None:
        """TurboOCI: blocks ``n .. n+count-1`` hold ``nbytes`` that stay in the source layer at
        byte ``target_offset`` of its uncompressed tar. Like ``UnTar::extract_regfile_meta_only``
        the mapping covers the data rounded up to 512 bytes; the rest of the last block is left
        unmapped (beyond the file's size, never read)."""
        sectors = -(-nbytes // 512)
        if target_offset % 512 or not 0 < sectors <= count * SECTORS_PER_BLOCK \
                or sectors <= (count - 1) * SECTORS_PER_BLOCK:
            raise ValueError(f"bad target mapping: {count} blocks for {nbytes} bytes at {target_offset}")
        self._check_range(n, count)
        if self.compressor is not None:
            raise ValueError("a TurboOCI device spools raw metadata blocks (no compressor)")
        if self._overlaps_upper(n, count):
            # blocks are freed only at flush, so fresh file data never lands on upper blocks
            raise Ext4Error(f"internal: target mapping of blocks {n}+{count} overlaps blocks already written")
        i = bisect.bisect_left(self._tgt_start, n)
        if (i > 0 and self._tgt_start[i - 1] + self._tgt_len[i - 1] == n
                and self._tgt_sect[i - 1] == self._tgt_len[i - 1] * SECTORS_PER_BLOCK
                and self._tgt_off[i - 1] + self._tgt_sect[i - 1] * 512 == target_offset):
            self._tgt_len[i - 1] += count  # the next extent of the same file data
            self._tgt_sect[i - 1] += sectors
        else:
            self._tgt_start.insert(i, n)
            self._tgt_len.insert(i, count)
            self._tgt_off.insert(i, target_offset)
            self._tgt_sect.insert(i, sectors)
        self._claim(n, count)

    @property
    def target_blocks(self) -> int:
        return sum(self._tgt_len)

    def _claim(self, n: int, count: int) -> None:
        """Blocks ``n .. n+count-1`` now hold upper data: narrow the clear window to the larger
        clear part left (fresh file data fills it from below, one range after the other)."""
        lo, hi = self._clear_lo, self._clear_hi
        end = n + count
        if end <= lo or n >= hi:
            return
        if n - lo > hi - end:
            self._clear_hi = n
        else:
            self._clear_lo = min(end, hi)

    def _overlaps_upper(self, n: int, count: int) -> bool:
        """Whether any of blocks ``n .. n+count-1`` already holds upper data."""
        end = n + count
        if self._clear_lo <= n and end <= self._clear_hi:
            return False
        if self._tgt_start:
            i = bisect.bisect_right(self._tgt_start, end - 1) - 1
            if i >= 0 and self._tgt_start[i] + self._tgt_len[i] > n:
                return True
        i = bisect.bisect_right(self._run_start, end - 1) - 1
        if i >= 0 and self._run_start[i] + self._run_len[i] > n:
            return True
        if len(self._single) < count:
            if any(map(range(n, end).__contains__, self._single)):
                return True
        elif not self._single.keys().isdisjoint(range(n, end)):  # C-level membership loop
            return True
        self._full_checks += 1
        if self._full_checks * 16 >= len(self._single):  # the scan below costs ~16 checks' worth
            self._full_checks = 0
            self._measure_clear(n, end)
        return False

    def _measure_clear(self, n: int, end: int) -> None:
        """Make the clear window ``n ..`` the next upper block at or after ``end`` (blocks
        ``n .. end-1`` are known clear)."""
        nxt = self.block_count
        if self._single:
            nxt = min(filter(end.__le__, self._single), default=nxt)
        for starts in (self._run_start, self._tgt_start):
            i = bisect.bisect_left(starts, end)
            if i < len(starts):
                nxt = min(nxt, starts[i])
        self._clear_lo, self._clear_hi = n, max(nxt, end)

    # -- output ----------------------------------------------------------------------------
    @property
    def blocks_written(self) -> int:
        return len(self._single) + sum(self._run_len) - self._shadowed

    def discard(self, ranges: list[tuple[int, int]]) -> None:
        """Leave blocks out of the sealed layer: sorted, disjoint ``(first, count)`` ranges of
        blocks the filesystem no longer uses (a flattened layer: data a later tar deleted or
        rewrote). Without a lower layer an unmapped block reads as zeros, which is all a free
        block may hold; with one it would show the lower's bytes, so this refuses."""
        if self.lower is not None:
            raise ValueError("discard needs a device without a lower layer")
        self._discard = list(ranges)

    def pieces(self) -> Iterator[tuple[int, int, bool, int]]:
        """(block, count, compressed, slot) pieces of the upper store in ascending block order;
        ``slot`` is a raw-spool slot, or a z-slot when ``compressed``. Singles written over a
        compressed run split it; :meth:`discard`-ed blocks are left out."""
        ranges = self._discard
        if not ranges:
            yield from self._all_pieces()
            return
        i, n = 0, len(ranges)
        for blk, cnt, comp, slot in self._all_pieces():
            end = blk + cnt
            while i < n and ranges[i][0] + ranges[i][1] <= blk:
                i += 1
            cur, j = blk, i
            while j < n and ranges[j][0] < end:
                first, count = ranges[j]
                if first > cur:
                    yield cur, first - cur, comp, slot + (cur - blk)
                cur = max(cur, first + count)
                if first + count > end:
                    break
                j += 1
            if cur < end:
                yield cur, end - cur, comp, slot + (cur - blk)

    def _all_pieces(self) -> Iterator[tuple[int, int, bool, int]]:
        self._flush_pending()
        singles = sorted(self._single.items())
        zrun = self.compressor is not None
        i = 0
        ns = len(singles)

        def group(i: int, limit: int) -> int:
            """How many singles from ``i`` on are consecutive blocks in consecutive slots, all
            before block ``limit`` (mkfs and the flush write metadata in block order: one piece)."""
            j = i + 1
            blk, slot = singles[i]
            while j < ns and singles[j][0] == blk + (j - i) and singles[j][1] == slot + (j - i) \
                    and singles[j][0] < limit:
                j += 1
            return j - i

        for start, length, rslot in zip(self._run_start, self._run_len, self._run_slot, strict=True):
            while i < ns and singles[i][0] < start:
                k = group(i, start)
                yield singles[i][0], k, False, singles[i][1]
                i += k
            cur, end = start, start + length
            while i < ns and singles[i][0] < end:
                b = singles[i][0]
                if b > cur:
                    yield cur, b - cur, zrun, rslot + cur - start
                k = group(i, end)
                yield b, k, False, singles[i][1]
                cur = b + k
                i += k
            if cur < end:
                yield cur, end - cur, zrun, rslot + cur - start
        while i < ns:
            k = group(i, self.block_count)
            yield singles[i][0], k, False, singles[i][1]
            i += k

    def turbo_pieces(self) -> Iterator[tuple[int, int, int, int]]:
        """TurboOCI seal order: ``(block, count, slot, -1)`` for blocks stored in the meta layer
        and ``(block, count, target_offset, sectors)`` for file data in the target, ascending.
        A block written after its target mapping (never expected) wins over it."""
        stored = self._pieces()
        pend = next(stored, None)
        covered = 0  # end of the last stored piece emitted
        for ts, tl, toff, tsect in zip(self._tgt_start, self._tgt_len, self._tgt_off, self._tgt_sect, strict=True):
            end = ts + tl
            cur = max(ts, covered)

            def part(a: int, b: int, ts: int = ts, toff: int = toff, tsect: int = tsect) -> tuple[int, int, int, int]:
                rel = a - ts
                return a, b - a, toff + rel * BLOCK_SIZE, min((b - a) * SECTORS_PER_BLOCK, tsect - rel * SECTORS_PER_BLOCK)

            while pend is not None and pend[0] < end:
                blk, cnt, slot = pend
                if blk > cur:
                    yield part(cur, blk)
                yield blk, cnt, slot, -1
                covered = max(covered, blk + cnt)
                cur = max(cur, covered)
                pend = next(stored, None)
            if cur < end:
                yield part(cur, end)
        while pend is not None:
            yield pend[0], pend[1], pend[2], -1
            pend = next(stored, None)

    def _pieces(self) -> Iterator[tuple[int, int, int]]:
        """(block, count, raw slot) pieces (uncompressed stores only)."""
        if self.compressor is not None:
            raise ValueError("this device spools compressed blocks: seal it with ext4.seal")
        for blk, cnt, _z, slot in self.pieces():
            yield blk, cnt, slot

    def read_raw_slots(self, slot: int, count: int) -> bytes:
        if self._sbuf:
            self._flush_singles()
        return os.pread(self._fd, count * BLOCK_SIZE, slot * BLOCK_SIZE)

    def extents(self) -> Iterator[tuple[int, int]]:
        """Merged (first block, count) ranges held by the upper layer."""
        cur: list[int] | None = None
        for blk, cnt, _z, _slot in self.pieces():
            if cur is not None and cur[0] + cur[1] == blk:
                cur[1] += cnt
                continue
            if cur is not None:
                yield cur[0], cur[1]
            cur = [blk, cnt]
        if cur is not None:
            yield cur[0], cur[1]

    def seal(self, writer: SectorSink) -> int:
        """Stream every written block to ``writer.add_data`` in ascending LBA; returns blocks."""
        total = 0
        pend_blk, pend_n, pend = -1, 0, []
        for blk, cnt, slot in self._pieces():
            done = 0
            while done < cnt:
                take = min(cnt - done, _SEAL_CHUNK_BLOCKS)
                data = os.pread(self._fd, take * BLOCK_SIZE, (slot + done) * BLOCK_SIZE)
                b = blk + done
                if pend and pend_blk + pend_n == b and pend_n < _SEAL_CHUNK_BLOCKS:
                    pend.append(data)
                    pend_n += take
                else:
                    if pend:
                        writer.add_data(pend_blk * SECTORS_PER_BLOCK, b"".join(pend))
                    pend_blk, pend_n, pend = b, take, [data]
                done += take
                total += take
        if pend:
            writer.add_data(pend_blk * SECTORS_PER_BLOCK, b"".join(pend))
        return total

    def close(self) -> None:
        try:
            self._spool.close()
        finally:
            if self._zs is not None:
                self._zs.close()
