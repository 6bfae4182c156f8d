"""An append-only file of stored ZFile blocks (``compressed || crc``), compressed off the main core.

The ext4 writer hands over raw 4 KiB blocks as it writes them; they are compressed by a forked
worker process (python-lz4 calls on 4 KiB blocks are too short to release the GIL usefully, so
threads do not help) that reads them from a shared-memory ring and appends the stored blocks to
the spool file. The parent only copies the bytes into the ring and later learns every stored
length, in submission order, so the result is the same as compressing inline — which is what
happens when forking is not safe (other threads running) or not available.

Every job (a run of up to ``JOB_BYTES`` raw bytes) owns a fixed region of the spool sized for
its worst case, so jobs can be finished in any order and by either process: when the worker
falls behind, the parent compresses the next job itself instead of waiting. The spool is
sparse and private; only the stored bytes and lengths, in block order, leave this module.
"""

from __future__ import annotations

import bisect
import collections
import logging
import mmap
import os
import select
import struct
import tempfile
import threading
from array import array
from itertools import accumulate, islice

from overlaybd_provider.formats.zfile_codec import BatchCompressor

log = logging.getLogger(__name__)

_JOB = struct.Struct("<QQQ")  # ring offset, bytes, spool offset
_ACK = struct.Struct("<II")  # status (0 ok), block count (or message length)
RING_BYTES = 8 << 20  # 8 jobs in flight; small, so its pages stay hot
JOB_BYTES = 1 << 20
ASSIST_BACKLOG = 2  # worker jobs in flight before the parent compresses a full job itself


def region_bytes(nblocks: int, block_size: int) -> int:
    """Worst-case stored size of ``nblocks`` blocks (LZ4 and zstd bounds + CRC, rounded up)."""
    return nblocks * (block_size + block_size // 8 + 64)


def _read_exact(fd: int, n: int) -> bytes:
    parts = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


class CompressedSpool:
    """Append raw whole blocks; stored block ``i`` lives at ``offsets[i]`` with ``lengths[i]``
    bytes once :meth:`sync` has returned."""

    def __init__(self, compressor: BatchCompressor, *, spool_dir: str | None = None,
                 worker: bool | None = None) -> None:
        self.compressor = compressor
        self.block_size = compressor.block_size
        self._file = tempfile.TemporaryFile(dir=spool_dir, prefix="ext4-upper-z-")  # noqa: SIM115
        self.fd = self._file.fileno()
        self.offsets = array("Q")  # of every finished stored block, in block order
        self.lengths = array("I")
        self.blocks = 0  # blocks appended (compressed or still in flight)
        self._job_first = array("Q")  # first block of every finished job (for span lookups)
        self._region_end = 0  # spool offset where the next job's region starts
        self._done: dict[int, tuple[int, array]] = {}  # finished out of order: first block -> (base, lengths)
        self._recorded = 0  # blocks whose offsets are in ``offsets``
        self._pid = 0
        if worker is None and os.environ.get("OVERLAYBD_SPOOL_WORKER") in ("0", "1"):
            worker = os.environ["OVERLAYBD_SPOOL_WORKER"] == "1"
        if worker is None:
            worker = hasattr(os, "fork") and threading.active_count() == 1 and (os.cpu_count() or 1) > 1
        if worker:
            self._start_worker()

    # -- worker -------------------------------------------------------------------------
    def _start_worker(self) -> None:
        self._ring = mmap.mmap(-1, RING_BYTES)  # anonymous MAP_SHARED: visible to the child
        job_r, job_w = os.pipe()
        ack_r, ack_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns
            code = 1
            try:
                os.close(job_w)
                os.close(ack_r)
                code = self._worker_loop(job_r, ack_w)
            finally:
                os._exit(code)
        os.close(job_r)
        os.close(ack_w)
        self._pid, self._job_w, self._ack_r = pid, job_w, ack_r
        # worker jobs in order: ring offset, bytes, first block, spool offset
        self._inflight: collections.deque[tuple[int, int, int, int]] = collections.deque()
        self._open_off = 0  # job being filled in the ring (not sent yet)
        self._open_len = 0
        self._open_first = 0

    def _worker_loop(self, job_r: int, ack_w: int) -> int:
        ring = memoryview(self._ring)
        try:
            while True:
                msg = _read_exact(job_r, _JOB.size)
                if len(msg) < _JOB.size:
                    return 0
                off, n, pos = _JOB.unpack(msg)
                stored, lengths = self.compressor.compress(ring[off:off + n])
                _pwrite_all(self.fd, stored, pos)
                _write_all(ack_w, _ACK.pack(0, len(lengths)) + lengths.tobytes())
        except BaseException as exc:  # report, then exit: the parent raises
            text = f"{type(exc).__name__}: {exc}".encode()
            try:
                _write_all(ack_w, _ACK.pack(1, len(text)) + text)
            except OSError:
                pass
            return 1

    def _new_job(self, nbytes: int) -> tuple[int, int]:
        """(first block, spool offset) of the next job of ``nbytes`` raw bytes."""
        nblocks = -(-nbytes // self.block_size)
        first, base = self.blocks, self._region_end
        self.blocks += nblocks
        self._region_end += region_bytes(nblocks, self.block_size)
        return first, base

    def _send_open(self) -> None:
        if not self._open_len:
            return
        first, base = self._new_job(self._open_len)
        if len(self._inflight) >= ASSIST_BACKLOG and not self._acks_ready():
            # the worker is behind: do this one here (its ring bytes are free again at once)
            stored, lengths = self.compressor.compress(memoryview(self._ring)[self._open_off:self._open_off + self._open_len])
            _pwrite_all(self.fd, stored, base)
            self._finish(first, base, lengths)
        else:
            _write_all(self._job_w, _JOB.pack(self._open_off, self._open_len, base))
            self._inflight.append((self._open_off, self._open_len, first, base))
            self._open_off += self._open_len
        self._open_len = 0

    def _acks_ready(self) -> bool:
        return bool(select.select([self._ack_r], [], [], 0)[0])

    def _recv_one(self) -> None:
        _off, _n, first, base = self._inflight.popleft()
        head = _read_exact(self._ack_r, _ACK.size)
        if len(head) < _ACK.size:
            raise OSError("the block compressor process died")
        status, count = _ACK.unpack(head)
        if status:
            raise OSError(f"block compressor failed: {_read_exact(self._ack_r, count).decode(errors='replace')}")
        lengths = array("I")
        lengths.frombytes(_read_exact(self._ack_r, 4 * count))
        self._finish(first, base, lengths)

    def _reserve(self, n: int) -> int:
        """Ring offset where ``n`` bytes can be written, extending the open job when possible."""
        while True:
            end = self._open_off + self._open_len
            if not self._inflight:
                if end + n <= RING_BYTES:
                    return end
                if not self._open_len:
                    self._open_off = 0
                    return 0
            else:
                tail = self._inflight[0][0]
                if end >= tail:
                    if end + n <= RING_BYTES:
                        return end
                    if n < tail and not self._open_len:
                        self._open_off = 0
                        return 0
                elif end + n < tail:
                    return end
            if self._open_len:
                self._send_open()
            else:
                self._recv_one()

    # -- public -------------------------------------------------------------------------
    def _finish(self, first: int, base: int, lengths: array) -> None:
        """Record a finished job; offsets are kept in block order, so later jobs wait here."""
        self._done[first] = (base, lengths)
        while self._recorded in self._done:
            base, lengths = self._done.pop(self._recorded)
            self._job_first.append(self._recorded)
            self.offsets.extend(islice(accumulate(lengths, initial=base), len(lengths)))
            self.lengths.extend(lengths)
            self._recorded += len(lengths)

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Queue whole raw blocks; returns the index of the first one."""
        mv = memoryview(data).cast("B")
        if not self._pid:
            first, base = self._new_job(len(mv))
            stored, lengths = self.compressor.compress(mv)
            _pwrite_all(self.fd, stored, base)
            self._finish(first, base, lengths)
            return first
        first = self.blocks + -(-self._open_len // self.block_size)
        for pos in range(0, len(mv), JOB_BYTES):
            piece = mv[pos:pos + JOB_BYTES]
            off = self._reserve(len(piece))
            self._ring[off:off + len(piece)] = piece
            if off != self._open_off + self._open_len:
                raise AssertionError("ring reservation out of order")
            self._open_len += len(piece)
            if self._open_len >= JOB_BYTES:
                self._send_open()
        return first

    @property
    def queued(self) -> int:
        """Blocks appended so far (the next append's first block index)."""
        return self.blocks + (self._open_len // self.block_size if self._pid else 0)

    def spans(self, first: int, count: int) -> list[tuple[int, int]]:
        """Spool byte spans holding stored blocks ``first .. first + count - 1`` (after sync)."""
        out = []
        end = first + count
        j = bisect.bisect_right(self._job_first, first) - 1
        while first < end:
            job_end = self._job_first[j + 1] if j + 1 < len(self._job_first) else self._recorded
            last = min(end, job_end) - 1
            out.append((self.offsets[first], self.offsets[last] + self.lengths[last] - self.offsets[first]))
            first = last + 1
            j += 1
        return out

    def sync(self) -> None:
        """Wait until every appended block is compressed and on the spool."""
        if self._pid:
            self._send_open()
            while self._inflight:
                self._recv_one()

    def close(self) -> None:
        if self._pid:
            os.close(self._job_w)
            os.close(self._ack_r)
            os.waitpid(self._pid, 0)
            self._pid = 0
            self._ring.close()
        self._file.close()
