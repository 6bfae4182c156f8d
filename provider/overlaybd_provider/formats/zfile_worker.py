"""The block-compressor process behind :class:`~.zfile_spool.CompressedSpool`.

It is a fresh interpreter (``python -m overlaybd_provider.formats.zfile_worker``) rather than a
``fork()`` of the converter: the converter usually has other threads (uploads, Airflow's task
runner), and forking a threaded process may copy a lock held by another thread. The parent
hands over a shared ring (a memfd), two pipes and the spool file descriptor; each job message
names a ring slice and the spool offset where its stored blocks go, each answer carries the
stored lengths.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys

JOB = struct.Struct("<QQQ")  # ring offset, bytes, spool offset
ACK = struct.Struct("<II")  # status (0 ok, else 1 + errno), block count (or message length)


def read_exact(fd: int, n: int) -> bytes:
    parts = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


def serve(ring: memoryview, compressor, job_r: int, ack_w: int, spool_fd: int) -> int:
    """Compress jobs until the job pipe closes; a failure is reported on the ack pipe."""
    try:
        while True:
            msg = read_exact(job_r, JOB.size)
            if len(msg) < JOB.size:
                return 0
            off, n, pos = JOB.unpack(msg)
            stored, lengths = compressor.compress(ring[off:off + n])
            pwrite_all(spool_fd, stored, pos)
            write_all(ack_w, ACK.pack(0, len(lengths)) + lengths.tobytes())
    except BaseException as exc:  # report, then exit: the parent raises (an OSError with its errno)
        text = f"{type(exc).__name__}: {exc}".encode()
        status = 1 + (exc.errno or 0) if isinstance(exc, OSError) else 1
        try:
            write_all(ack_w, ACK.pack(status, len(text)) + text)
        except OSError:
            pass
        return 1


def main(argv: list[str] | None = None) -> int:
    """``RING_FD RING_BYTES JOB_R ACK_W SPOOL_FD ALGO BLOCK_SIZE LEVEL VERIFY ZSTD_THREADS``."""
    from overlaybd_provider.formats.zfile_codec import BatchCompressor
    from overlaybd_provider.malloc import keep_large_buffers

    keep_large_buffers()

    ring_fd, ring_bytes, job_r, ack_w, spool_fd, algo, block_size, level, verify, zstd_threads = (
        int(a) for a in (sys.argv[1:] if argv is None else argv))
    ring = mmap.mmap(ring_fd, ring_bytes)
    os.close(ring_fd)
    compressor = BatchCompressor(algo, block_size, level=level, verify=bool(verify), zstd_threads=zstd_threads)
    return serve(memoryview(ring), compressor, job_r, ack_w, spool_fd)


if __name__ == "__main__":
    sys.exit(main())
