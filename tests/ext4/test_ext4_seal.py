"""The compressed block spool and the direct blob sealer write the same bytes as the plain
path (raw spool → LSMTWriter → LayerBlobWriter), with and without the compressor process."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import threading

import pytest
from overlaybd_provider.ext4 import seal
from overlaybd_provider.ext4.blockdev import SECTORS_PER_BLOCK, OverlayBlockDevice
from overlaybd_provider.formats import zfile_spool
from overlaybd_provider.formats.blob import LayerBlobWriter, open_layer
from overlaybd_provider.formats.lsmt_writer import LSMTWriter
from overlaybd_provider.formats.zfile_codec import BatchCompressor
from overlaybd_provider.formats.zfile_header import ALGORITHMS
from overlaybd_provider.formats.zfile_spool import CompressedSpool
from support.procs import children_of

BS = 4096
VSIZE = 1 << 30


def _payload(rng: random.Random, nblocks: int) -> bytes:
    """Half random, half repetitive text: both compressible and incompressible blocks."""
    out = bytearray()
    for _ in range(nblocks):
        out += rng.randbytes(BS) if rng.random() < 0.5 else (b"line %d of text\n" % rng.randrange(99)) * 256
    return bytes(out[: nblocks * BS].ljust(nblocks * BS, b"\0"))


def _in_place(dev: OverlayBlockDevice, n: int, data: bytes, cut: int) -> bytes:
    """``write_blocks_from`` of ``data`` minus its last ``cut`` bytes, handed over in odd-sized
    reads like a tar reader's; returns what the blocks must hold (zero padding included)."""
    nbytes = len(data) - cut
    src = io.BytesIO(data[:nbytes])

    def fill(view: memoryview) -> None:
        got = 0
        while got < len(view):
            got += src.readinto(view[got:got + 5000])

    dev.write_blocks_from(n, nbytes, fill)
    return data[:nbytes] + bytes(cut)


def _fill(dev: OverlayBlockDevice, seed: int, in_place: bool = False) -> dict[int, bytes]:
    """Metadata singles, data runs, overwrites inside runs, runs written over singles.
    ``in_place``: data runs go through ``write_blocks_from`` (the tar reader's path)."""
    rng = random.Random(seed)
    truth: dict[int, bytes] = {}
    for n in (0, 1, 2, 40, 41, 9000):
        block = rng.randbytes(64) * 64
        dev.write_block(n, block)
        truth[n] = block
    nxt = 100
    for _ in range(40):
        count = rng.choice((1, 2, 7, 64, 300))
        data = _payload(rng, count)
        if in_place:
            data = _in_place(dev, nxt, data, rng.choice((0, 100, BS - 1)))
        else:
            dev.write_blocks(nxt, data)
        for i in range(count):
            truth[nxt + i] = data[i * BS:(i + 1) * BS]
        nxt += count + rng.choice((0, 0, 3))
    for n in rng.sample(sorted(truth), 25):  # rewrite blocks inside runs (singles shadow them)
        block = rng.randbytes(BS)
        dev.write_block(n, block)
        truth[n] = block
    data = _payload(rng, 4)  # a run over existing singles falls back to per-block writes
    if in_place:
        data = _in_place(dev, 40, data, 10)
    else:
        dev.write_blocks(40, data)
    for i in range(4):
        truth[40 + i] = data[i * BS:(i + 1) * BS]
    return truth


def _plain_blob(truth: dict[int, bytes], algorithm: str) -> bytes:
    out = io.BytesIO()
    blob = LayerBlobWriter(out, algorithm=algorithm, block_size=BS)
    w = LSMTWriter(blob, virtual_size=VSIZE, uuid=None)
    for n in sorted(truth):
        w.add_data(n * SECTORS_PER_BLOCK, truth[n])
    w.close()
    blob.close()
    return out.getvalue()


@pytest.mark.parametrize("algorithm", ["lz4", "zstd"])
@pytest.mark.parametrize("worker,in_place", [(False, False), (True, False), (False, True), (True, True)])
def test_sealed_blob_matches_plain_path(tmp_path, algorithm, worker, in_place, monkeypatch):
    monkeypatch.setenv("OVERLAYBD_SPOOL_WORKER", "1" if worker else "0")
    monkeypatch.setattr(zfile_spool, "RING_BYTES", 3 * 1024 * 1024 + 8192)  # force ring wrap-arounds
    monkeypatch.setattr(zfile_spool, "JOB_BYTES", 256 * 1024)
    monkeypatch.setattr(seal, "_COPY_BYTES", 5000)  # spans split across many gather buffers
    comp = BatchCompressor(ALGORITHMS[algorithm], BS)
    dev = OverlayBlockDevice(None, block_count=VSIZE // BS, spool_dir=str(tmp_path), compressor=comp)
    try:
        truth = _fill(dev, 7, in_place)
        for n in (0, 41, 100, 150, 101 + 64, 9000, 5):  # reads see the last write (or zeros)
            assert dev.read_block(n) == truth.get(n, bytes(BS)), n
        assert dev.blocks_written == len(truth)
        path = tmp_path / "out.blob"
        with open(path, "w+b") as out:
            info, blocks = seal.seal_blob(dev, out, virtual_size=VSIZE, uuid=None, parent_uuid=None,
                                          algorithm=algorithm)
    finally:
        dev.close()
    data = path.read_bytes()
    assert blocks == len(truth)
    assert data == _plain_blob(truth, algorithm)
    assert info.size == len(data) and info.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    with open_layer(path) as lf:
        for n in (0, 40, 41, 100, 9000):
            assert lf.lsmt.read(n * BS, BS) == truth[n]


def test_spool_worker_equals_inline(tmp_path, monkeypatch):
    monkeypatch.setattr(zfile_spool, "RING_BYTES", 1024 * 1024)
    monkeypatch.setattr(zfile_spool, "JOB_BYTES", 64 * 1024)
    rng = random.Random(3)
    chunks = [_payload(rng, rng.choice((1, 3, 16, 40, 200))) for _ in range(60)]
    spools = [CompressedSpool(BatchCompressor(ALGORITHMS["lz4"], BS), spool_dir=str(tmp_path), worker=w)
              for w in (False, True)]
    try:
        for sp in spools:
            firsts = [sp.append(c) for c in chunks]
            sp.sync()
            assert firsts[-1] + len(chunks[-1]) // BS == sp.blocks == len(sp.lengths)
        inline, forked = spools
        assert inline.lengths == forked.lengths  # the layout of the (sparse) spool may differ
        for sp in spools:
            spans = sp.spans(0, sp.blocks)
            assert sum(n for _, n in spans) == sum(sp.lengths)
        stored = [b"".join(os.pread(sp.fd, n, off) for off, n in sp.spans(0, sp.blocks)) for sp in spools]
        assert stored[0] == stored[1]
        assert len(forked.spans(0, forked.blocks)) > 1
        mid = forked.blocks // 2  # a span lookup starting inside a job
        assert b"".join(os.pread(forked.fd, n, off) for off, n in forked.spans(mid, 5)) == \
            b"".join(os.pread(inline.fd, n, off) for off, n in inline.spans(mid, 5))
    finally:
        for sp in spools:
            sp.close()


def test_spool_worker_runs_beside_other_threads(tmp_path, monkeypatch):
    """The compressor is a separate interpreter even while other threads run (uploads, Airflow's
    task runner): the default picks it on a multi-core machine, and its output equals inline."""
    monkeypatch.delenv("OVERLAYBD_SPOOL_WORKER", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(zfile_spool, "WORKER_AFTER_BYTES", BS * 100)
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, daemon=True)
    busy.start()
    data = _payload(random.Random(5), 600)
    try:
        spool = CompressedSpool(BatchCompressor(ALGORITHMS["zstd"], BS), spool_dir=str(tmp_path))
        try:
            spool.append(data[:BS * 10])
            assert not spool._pid, "a small spool started a worker"
            spool.append(data[BS * 10:])
            assert spool._pid, "no worker process although the machine has two cores"
            assert any("zfile_worker" in cmd for _, cmd in children_of(os.getpid()))
            spool.sync()
            stored = b"".join(os.pread(spool.fd, n, off) for off, n in spool.spans(0, spool.blocks))
        finally:
            spool.close()
    finally:
        stop.set()
    want, _ = BatchCompressor(ALGORITHMS["zstd"], BS).compress(data)
    assert stored == want


def test_spool_worker_death_is_an_error(tmp_path):
    spool = CompressedSpool(BatchCompressor(ALGORITHMS["lz4"], BS), spool_dir=str(tmp_path), worker=True)
    try:
        spool._proc.kill()
        spool._proc.wait()
        with pytest.raises(OSError, match="block compressor process died"):
            for _ in range(64):  # more than the ring holds: the parent must wait for answers
                spool.append(_payload(random.Random(1), 256))
            spool.sync()
    finally:
        with contextlib.suppress(OSError):
            spool.close()

