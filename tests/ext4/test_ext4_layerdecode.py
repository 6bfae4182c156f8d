"""Layer decompression: the child-process decoder and the in-process one give the same bytes
and the same one-line errors (truncation, corruption, trailing garbage, a failing source)."""

from __future__ import annotations

import gzip
import io
import os
import random

import pytest
import zstandard
from overlaybd_provider.ext4 import layerdecode
from overlaybd_provider.ext4.errors import LayerTarError
from overlaybd_provider.ext4.layerdecode import decompressed

RAW = random.Random(4).randbytes(3 << 20) + b"some text of a layer tar\n" * 200_000


def _gzip_members() -> bytes:
    half = len(RAW) // 2
    return gzip.compress(RAW[:half], 6, mtime=0) + gzip.compress(RAW[half:], 1, mtime=0)


def _zstd_frames() -> bytes:
    cctx = zstandard.ZstdCompressor(level=3)
    return cctx.compress(RAW[:1000]) + cctx.compress(RAW[1000:])


def _decode(data: bytes, worker: bool, chunk: int = 1 << 20) -> tuple[bytes, str]:
    stream, kind = decompressed(io.BytesIO(data), worker=worker)
    try:
        out = bytearray()
        while piece := stream.read(chunk):
            out += piece
        return bytes(out), kind
    finally:
        stream.close()


@pytest.mark.parametrize("worker", [False, True])
@pytest.mark.parametrize("make,kind", [(_gzip_members, "gzip"), (_zstd_frames, "zstd")])
def test_multi_member_streams_decode_fully(worker, make, kind):
    out, got_kind = _decode(make(), worker, chunk=300_001)
    assert got_kind == kind
    assert out == RAW


def test_plain_tar_passes_through():
    out, kind = _decode(RAW[:5000], worker=True)
    assert (out, kind) == (RAW[:5000], "none")


@pytest.mark.parametrize("worker", [False, True])
@pytest.mark.parametrize("damage,match", [
    (lambda b: b[:len(b) // 2], "gzip stream is truncated"),
    (lambda b: b[:5000] + bytes(b ^ 0x5A for b in b[5000:9000]) + b[9000:], "corrupt gzip data"),
    (lambda b: b + b"garbage after the last member", "corrupt gzip data"),
])
def test_bad_gzip_is_one_line_error(worker, damage, match):
    with pytest.raises(LayerTarError, match=match) as info:
        _decode(damage(_gzip_members()), worker)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("worker", [False, True])
def test_truncated_zstd(worker):
    data = _zstd_frames()
    with pytest.raises(LayerTarError, match="zstd stream is truncated"):
        _decode(data[:-100], worker)


class _FailingSource(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._data.tell() > 200_000:
            raise ConnectionError("registry connection reset")
        return self._data.read(min(size, 65536) if size and size > 0 else 65536)


def test_failing_source_reaches_the_reader():
    stream, _ = decompressed(_FailingSource(_gzip_members()), worker=True)
    with pytest.raises(ConnectionError, match="connection reset"):
        while stream.read(1 << 20):
            pass
    stream.close()


def test_closing_early_stops_the_child():
    stream, _ = decompressed(io.BytesIO(_gzip_members()), worker=True)
    assert stream.read(1000) == RAW[:1000]
    proc = stream._proc  # type: ignore[attr-defined]
    stream.close()
    assert proc.poll() is not None


def test_worker_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("OVERLAYBD_DECODE_WORKER", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    small = tmp_path / "small.tar.gz"
    small.write_bytes(gzip.compress(b"x" * 1000))
    big = tmp_path / "big.tar.gz"
    big.write_bytes(random.Random(1).randbytes(layerdecode.WORKER_MIN_BYTES + 10))
    with open(small, "rb") as f:
        assert not layerdecode._use_worker(f)
    with open(big, "rb") as f:
        assert layerdecode._use_worker(f)
    assert layerdecode._use_worker(io.BytesIO(b"a network stream"))
    monkeypatch.setenv("OVERLAYBD_DECODE_WORKER", "0")
    with open(big, "rb") as f:
        assert not layerdecode._use_worker(f)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    monkeypatch.delenv("OVERLAYBD_DECODE_WORKER")
    assert not layerdecode._use_worker(io.BytesIO(b""))


def test_converter_processes_keep_large_buffers():
    """The CLI (and every worker) raises glibc's mmap/trim thresholds once: 1-4 MiB buffers are
    then reused instead of page-faulted in again (docstring of overlaybd_provider.malloc)."""
    import subprocess
    import sys

    code = ("from overlaybd_provider import malloc; import sys; "
            "sys.exit(0 if malloc.keep_large_buffers() and malloc.keep_large_buffers() else 1)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_killed_converter_leaves_no_worker_behind(tmp_path):
    """SIGKILL of the converter mid-layer (an OOM kill, a killed Airflow task): its compressor
    and decoder processes see their pipes close and exit on their own."""
    import signal
    import subprocess
    import tarfile
    import time

    from support.paths import overlaybd_cli
    from support.procs import alive, children_of

    src = tmp_path / "layer.tar.gz"
    with gzip.open(src, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tf:
        rng = random.Random(9)
        for i in range(12):
            data = rng.randbytes(8 << 20)
            info = tarfile.TarInfo(f"f{i}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    proc = subprocess.Popen([*overlaybd_cli(), "apply-layer", str(src), str(tmp_path / "out.blob")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        children: set[int] = set()
        deadline = time.monotonic() + 60
        while len(children) < 2 and proc.poll() is None and time.monotonic() < deadline:
            children |= {pid for pid, cmd in children_of(proc.pid) if "layerdecode" in cmd or "zfile_worker" in cmd}
            time.sleep(0.02)
        assert len(children) == 2, "the decoder and compressor processes did not both start"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(pid) for pid in children):
            time.sleep(0.05)
        assert not any(alive(pid) for pid in children)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (tmp_path / "out.blob").exists()



_BOMB_PROBE = r"""
import sys
from overlaybd_provider.ext4.layerdecode import content_digest, decompressed

def hwm(pid="self"):  # VmHWM: this process image's own peak (ru_maxrss would count the forking parent)
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) // 1024
    except (OSError, StopIteration):
        return 0

stream, kind = decompressed(open(sys.argv[1], "rb"), worker=sys.argv[2] == "1", digest=True)
child = getattr(getattr(stream, "_proc", None), "pid", None)
total = peak = 0
while piece := stream.read(1 << 20):
    total += len(piece)
    if child:
        peak = max(peak, hwm(child))
digest = content_digest(stream)
stream.close()
print(kind, total, digest, max(peak, hwm()), int(bool(child)))
"""


@pytest.mark.parametrize("worker", [False, True], ids=["in-process", "child"])
@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_decompression_bomb_decodes_in_bounded_memory(tmp_path, kind, worker):
    """768 MiB of zeros compress to well under 1 MiB: read whole-chunk-at-a-time (as before) one
    read of the source expanded to the full 768 MiB in memory. Every step is bounded now."""
    import hashlib
    import subprocess
    import sys

    size = 768 << 20
    path = tmp_path / f"bomb.{kind}"
    zeros = bytes(8 << 20)
    if kind == "gzip":
        with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
            for _ in range(size // len(zeros)):
                f.write(zeros)
    else:
        with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as f:
            for _ in range(size // len(zeros)):
                f.write(zeros)
    assert path.stat().st_size < 1 << 20
    out = subprocess.run([sys.executable, "-c", _BOMB_PROBE, str(path), "1" if worker else "0"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[:3] == [kind, str(size), "sha256:" + hashlib.sha256(bytes(size)).hexdigest()]
    assert int(out[3]) < 160, f"peak RSS {out[3]} MiB decoding a {size >> 20} MiB bomb"
    assert out[4] == ("1" if worker else "0")  # the child decoder was measured when there was one


@pytest.mark.parametrize("make,kind", [(_gzip_members, "gzip"), (_zstd_frames, "zstd")])
def test_a_regular_file_is_read_by_the_child_itself(tmp_path, make, kind):
    """No feeder thread in the converter: the child reads the source file from the stream's
    position (here past a prefix), head bytes included; digest and errors as through the pipe."""
    import hashlib

    prefix = b"not part of the layer" * 500
    path = tmp_path / "layer.blob"
    path.write_bytes(prefix + make())
    with open(path, "rb") as f:
        f.seek(len(prefix))
        stream, got = decompressed(f, worker=True, digest=True)
        assert isinstance(stream, layerdecode._ProcessDecoder) and stream._feeder is None
        out = bytearray()
        while piece := stream.read(300_001):
            out += piece
        stream.close()
    assert got == kind and bytes(out) == RAW
    assert layerdecode.content_digest(stream) == "sha256:" + hashlib.sha256(RAW).hexdigest()
    path.write_bytes(prefix + make()[:-5000])
    with open(path, "rb") as f:
        f.seek(len(prefix))
        stream, _ = decompressed(f, worker=True)
        with pytest.raises(LayerTarError, match=f"{kind} stream is truncated"):
            while stream.read(1 << 20):
                pass
        stream.close()


def test_a_wrapped_file_is_still_read_through_its_wrapper(tmp_path):
    """A file object that checks what passes through it (a digest, say) is never bypassed: only a
    plain open() file is handed to the child."""

    class Counting(io.BufferedReader):
        seen = 0

        def read(self, n=-1):
            data = super().read(n)
            Counting.seen += len(data)
            return data

    path = tmp_path / "layer.gz"
    data = _gzip_members()
    path.write_bytes(data)
    with Counting(io.FileIO(path, "rb")) as f:
        stream, kind = decompressed(f, worker=True)
        assert stream._feeder is not None
        out = bytearray()
        while piece := stream.read(1 << 20):
            out += piece
        stream.close()
    assert kind == "gzip" and bytes(out) == RAW and Counting.seen == len(data)


@pytest.mark.parametrize("make,kind", [(_gzip_members, "gzip"), (_zstd_frames, "zstd")])
def test_a_decode_started_ahead_spools_the_same_stream(tmp_path, make, kind, monkeypatch):
    """``start_decode``: the child reads the file and spools the tar while nobody reads it; the
    build reads the same bytes and digest later, errors are the same one line, and closing the
    stream removes the spool."""
    import hashlib
    import time

    monkeypatch.setenv("OVERLAYBD_DECODE_WORKER", "1")
    path = tmp_path / "layer.blob"
    path.write_bytes(make())
    job = layerdecode.start_decode(path, digest=True, spool_dir=str(tmp_path))
    assert job is not None and job.kind == kind
    (spool_dir,) = tmp_path.glob("layerdecode-*")
    deadline = time.monotonic() + 30
    while (spool_dir / "tar").stat().st_size < len(RAW) and time.monotonic() < deadline:
        time.sleep(0.01)  # nothing reads it: the child runs ahead on its own
    assert (spool_dir / "tar").stat().st_size == len(RAW)
    with open(path, "rb") as src:
        stream, got = decompressed(src, digest=True, job=job)
        out = bytearray()
        while piece := stream.read(300_001):
            out += piece
        assert src.tell() == 0  # the build's own handle was not read
    assert (got, bytes(out)) == (kind, RAW)
    assert layerdecode.content_digest(stream) == "sha256:" + hashlib.sha256(RAW).hexdigest()
    stream.close()
    assert not spool_dir.exists()
    path.write_bytes(make()[:-5000])
    job = layerdecode.start_decode(path, digest=True, spool_dir=str(tmp_path))
    with pytest.raises(LayerTarError, match=f"{kind} stream is truncated"):
        while job.read(1 << 20):
            pass
    job.close()
    plain = tmp_path / "plain.tar"
    plain.write_bytes(RAW)
    assert layerdecode.start_decode(plain, digest=True, spool_dir=str(tmp_path)) is None  # nothing to decode
    monkeypatch.setenv("OVERLAYBD_DECODE_WORKER", "0")
    assert layerdecode.start_decode(path, digest=True, spool_dir=str(tmp_path)) is None
