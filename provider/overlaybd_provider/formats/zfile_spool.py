"""An append-only file of stored ZFile blocks (``compressed || crc``), compressed off the main core.

The ext4 writer hands over raw 4 KiB blocks as it writes them; they are compressed by a worker
process (python-lz4 calls on 4 KiB blocks are too short to release the GIL usefully, so threads
do not help) that reads them from a shared-memory ring and appends the stored blocks to the
spool file. The worker is a fresh interpreter (:mod:`.zfile_worker`), not a ``fork()``, so it is
safe in threaded callers (uploads in flight, Airflow's task runner). The parent only copies the
bytes into the ring and later learns every stored length, in submission order, so the result
is the same as compressing inline — which is what happens on a single core.

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
import subprocess
import tempfile
from array import array
from collections.abc import Callable, Iterator
from itertools import accumulate, islice

from overlaybd_provider.formats.zfile_codec import BatchCompressor
from overlaybd_provider.formats.zfile_worker import ACK as _ACK
from overlaybd_provider.formats.zfile_worker import JOB as _JOB
from overlaybd_provider.formats.zfile_worker import pwrite_all as _pwrite_all
from overlaybd_provider.formats.zfile_worker import read_exact as _read_exact
from overlaybd_provider.formats.zfile_worker import write_all as _write_all
from overlaybd_provider.workers import env_choice, module_process, spare_core

log = logging.getLogger(__name__)

RING_BYTES = 8 << 20  # 8 jobs in flight; small, so its pages stay hot
JOB_BYTES = 1 << 20
ASSIST_BACKLOG = RING_BYTES // JOB_BYTES - 1  # the parent compresses a full job itself only when
# the ring is full (the worker is behind): before that its time goes to the tar and ext4 work,
# which is the longer of the two on every layer but one big file
WORKER_AFTER_BYTES = 8 << 20  # an automatic worker starts once this much was appended: small
# layers finish inline before a fresh interpreter would even be ready


_ZEROS = memoryview(bytes(64 << 10))


def region_bytes(nblocks: int, block_size: int) -> int:
    """Worst-case stored size of ``nblocks`` blocks (LZ4 and zstd bounds + CRC, rounded up)."""
    return nblocks * (block_size + block_size // 8 + 64)


class CompressedSpool:
    """Append raw whole blocks; stored block ``i`` lives at ``offsets[i]`` with ``lengths[i]``
    bytes once :meth:`sync` has returned."""

    def __init__(self, compressor: BatchCompressor, *, spool_dir: str | None = None,
                 worker: bool | None = None, expect_bytes: int | None = None) -> None:
        """``expect_bytes``: how much raw data the caller expects to append (e.g. the size of the
        layer file); an automatic worker starts at once when it is at least ``WORKER_AFTER_BYTES``,
        so the fresh interpreter gets ready while the caller is still setting up."""
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
        if worker is None:
            worker = env_choice("OVERLAYBD_SPOOL_WORKER")
        self._auto = worker is None and spare_core()
        self._appended = 0  # raw bytes, for the automatic start
        if self._auto and expect_bytes is not None and expect_bytes >= WORKER_AFTER_BYTES:
            self._auto, worker = False, True
        if worker:
            self._start_worker()

    # -- worker -------------------------------------------------------------------------
    def _start_worker(self) -> None:
        if hasattr(os, "memfd_create"):
            ring_fd = os.memfd_create("overlaybd-ring", os.MFD_CLOEXEC)
        else:  # pragma: no cover - non-Linux POSIX: an unlinked file works the same
            with tempfile.TemporaryFile(prefix="overlaybd-ring-") as f:
                ring_fd = os.dup(f.fileno())
        job_r, job_w = os.pipe()
        ack_r, ack_w = os.pipe()
        try:
            os.ftruncate(ring_fd, RING_BYTES)
            self._ring = mmap.mmap(ring_fd, RING_BYTES)
            c = self.compressor
            args = [ring_fd, RING_BYTES, job_r, ack_w, self.fd, c.algo, c.block_size, c.level, int(c.verify),
                    c.zstd_threads]
            self._proc = module_process("overlaybd_provider.formats.zfile_worker", args,
                                        pass_fds=(ring_fd, job_r, ack_w, self.fd), stdin=subprocess.DEVNULL)
        except BaseException:
            for fd in (job_w, ack_r):
                os.close(fd)
            raise
        finally:
            for fd in (ring_fd, job_r, ack_w):
                os.close(fd)
        self._pid, self._job_w, self._ack_r = self._proc.pid, job_w, ack_r
        # worker jobs in order: ring offset, bytes, first block, spool offset
        self._inflight: collections.deque[tuple[int, int, int, int]] = collections.deque()
        self._open_off = 0  # job being filled in the ring (not sent yet)
        self._open_len = 0

    def _new_job(self, nbytes: int) -> tuple[int, int]:
        """(first block, spool offset) of the next job of ``nbytes`` raw bytes."""
        nblocks = -(-nbytes // self.block_size)
        first, base = self.blocks, self._region_end
        self.blocks += nblocks
        self._region_end += region_bytes(nblocks, self.block_size)
        return first, base

    def _send_open(self, *, here: bool = False) -> None:
        """Hand the open job to the worker, or compress it here when the worker is behind (or
        ``here``: the caller would only wait for the worker otherwise)."""
        if not self._open_len:
            return
        first, base = self._new_job(self._open_len)
        if (here and self._inflight) or (len(self._inflight) >= ASSIST_BACKLOG and not self._acks_ready()):
            # the worker is behind: do this one here (its ring bytes are free again at once)
            with memoryview(self._ring) as ring, ring[self._open_off:self._open_off + self._open_len] as job:
                stored, lengths = self.compressor.compress(job)
            _pwrite_all(self.fd, stored, base)
            self._finish(first, base, lengths)
        else:
            try:
                _write_all(self._job_w, _JOB.pack(self._open_off, self._open_len, base))
            except BrokenPipeError:
                raise self._died() from None
            self._inflight.append((self._open_off, self._open_len, first, base))
            self._open_off += self._open_len
        self._open_len = 0

    def _died(self) -> OSError:
        try:
            code = self._proc.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        return OSError(f"the block compressor process died (exit status {code})")

    def _acks_ready(self) -> bool:
        return bool(select.select([self._ack_r], [], [], 0)[0])

    def _recv_one(self) -> None:
        _off, _n, first, base = self._inflight.popleft()
        head = _read_exact(self._ack_r, _ACK.size)
        if len(head) < _ACK.size:
            raise self._died()
        status, count = _ACK.unpack(head)
        if status:
            text = _read_exact(self._ack_r, count).decode(errors="replace")
            message = f"block compressor failed: {text}"
            raise OSError(status - 1, message) if status > 1 else OSError(message)
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

    def _use_worker(self, nbytes: int) -> bool:
        """Start the automatic worker once enough was appended; True when the ring is in use."""
        if self._auto and not self._pid:
            self._appended += nbytes
            if self._appended >= WORKER_AFTER_BYTES:
                self._auto = False
                self._start_worker()
        return bool(self._pid)

    def _compress_inline(self, data: bytes | bytearray | memoryview) -> int:
        first, base = self._new_job(len(data))
        stored, lengths = self.compressor.compress(data)
        _pwrite_all(self.fd, stored, base)
        self._finish(first, base, lengths)
        return first

    def _ring_pieces(self, total: int) -> Iterator[tuple[int, memoryview]]:
        """``(position, ring view)`` for each piece of ``total`` bytes; the caller fills each view
        before asking for the next, and a full job is sent to the worker as soon as it is filled."""
        with memoryview(self._ring) as ring:
            for pos in range(0, total, JOB_BYTES):
                n = min(JOB_BYTES, total - pos)
                off = self._reserve(n)
                if off != self._open_off + self._open_len:
                    raise AssertionError("ring reservation out of order")
                with ring[off:off + n] as view:
                    yield pos, view
                self._open_len += n
                if self._open_len >= JOB_BYTES:
                    self._send_open()

    def append(self, data: bytes | bytearray | memoryview, *, may_start: bool = True) -> int:
        """Queue whole raw blocks; returns the index of the first one. ``may_start=False``: do
        not start the automatic worker for this (the seal's metadata: too late to pay off)."""
        mv = memoryview(data).cast("B")
        if not (self._use_worker(len(mv)) if may_start else self._pid):
            return self._compress_inline(mv)
        first = self.blocks + -(-self._open_len // self.block_size)
        pieces = self._ring_pieces(len(mv))
        try:
            for pos, view in pieces:
                view[:] = mv[pos:pos + len(view)]
        finally:
            pieces.close()  # releases the ring views at once, also on an error
        return first

    def append_from(self, nbytes: int, fill: Callable[[memoryview], None]) -> int:
        """Like :meth:`append` for ``nbytes`` of data (zero-padded to whole blocks) that
        ``fill(view)`` writes in place, piece by piece in order, straight into the shared ring:
        file data goes from the tar reader to the compressor without an intermediate buffer."""
        total = -(-nbytes // self.block_size) * self.block_size
        if not self._use_worker(total):
            buf = bytearray(total)
            fill(memoryview(buf)[:nbytes])
            return self._compress_inline(buf)
        first = self.blocks + -(-self._open_len // self.block_size)
        pieces = self._ring_pieces(total)
        try:
            for pos, view in pieces:
                data = min(len(view), nbytes - pos)
                with view[:data] as part:
                    fill(part)
                if data < len(view):
                    view[data:] = bytes(len(view) - data)
        finally:
            pieces.close()  # releases the ring views at once, also when ``fill`` raised
        return first

    def append_padded(self, data: bytes | memoryview) -> int:
        """Like :meth:`append_from` for data already in memory (a small file still in the tar
        reader's buffer): one copy into the ring plus the zero padding of its last block."""
        n = len(data)
        bs = self.block_size
        total = -(-n // bs) * bs
        if total > JOB_BYTES:
            mv = memoryview(data)
            return self.append_from(n, lambda view: view.__setitem__(slice(None), mv[:len(view)]))
        if not self._use_worker(total):
            buf = bytearray(total)
            buf[:n] = data
            return self._compress_inline(buf)
        first = self.blocks + self._open_len // bs
        off = self._reserve(total)
        if off != self._open_off + self._open_len:
            raise AssertionError("ring reservation out of order")
        ring = self._ring
        ring[off:off + n] = data
        if total > n:
            ring[off + n:off + total] = _ZEROS[:total - n]
        self._open_len += total
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
            self._send_open(here=True)  # the last, partial job: done here while the worker drains
            while self._inflight:
                self._recv_one()

    def close(self) -> None:
        """Stop the worker and free the ring and the spool; safe after any error, never masks it."""
        try:
            if self._pid:
                self._pid = 0
                os.close(self._job_w)
                os.close(self._ack_r)
                self._proc.kill()  # every job was answered (or is abandoned): no need to wait for it
                self._proc.wait()
                ring, self._ring = self._ring, None
                try:
                    ring.close()
                except BufferError:
                    # a view of the ring outlives an error being raised (held by its traceback):
                    # the mapping goes when that view does; the error itself is what matters
                    log.debug("ring still exported at close; unmapped when the last view goes")
        finally:
            self._file.close()
