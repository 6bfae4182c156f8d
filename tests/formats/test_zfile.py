"""ZFile writer/reader: property round-trips, exact header/trailer flags, the 64 KiB limit."""

from __future__ import annotations

import io
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from overlaybd_provider.formats.errors import BlockTooLargeError
from overlaybd_provider.formats.zfile import ZFileReader, ZFileWriter
from overlaybd_provider.formats.zfile_header import ZFileHeader

BLOCK_SIZES = (4096, 8192, 16384, 32768, 65536)


class PipeOut:
    """A write-only, non-seekable output (like a socket or an upload stream)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data) -> int:
        self.buf += data
        return len(data)

    def seekable(self) -> bool:
        return False


@st.composite
def layer_like(draw) -> bytes:
    """Compressible mixes (pieces repeated, zero runs, some random) up to ~300 KB."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["zeros", "repeat", "random"]))
        n = draw(st.integers(0, 70_000))
        if kind == "zeros":
            parts.append(bytes(n))
        elif kind == "repeat":
            piece = draw(st.binary(min_size=1, max_size=300))
            parts.append((piece * (n // len(piece) + 1))[:n])
        else:
            parts.append(random.Random(draw(st.integers(0, 2**32))).randbytes(min(n, 20_000)))
    return b"".join(parts)


def compress(data: bytes, cuts: list[int], **kw) -> tuple[bytes, object]:
    out = io.BytesIO()
    w = ZFileWriter(out, **kw)
    prev = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        w.write(data[prev:cut])
        prev = max(prev, cut)
    info = w.close()
    return out.getvalue(), info


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=layer_like(),
    block_size=st.sampled_from(BLOCK_SIZES),
    algorithm=st.sampled_from(["lz4", "zstd"]),
    cuts=st.lists(st.integers(0, 10**6), max_size=5),
    reads=st.lists(st.tuples(st.integers(0, 400_000), st.integers(0, 100_000)), max_size=6),
)
def test_round_trip(data: bytes, block_size: int, algorithm: str, cuts: list[int], reads) -> None:
    try:
        blob, info = compress(data, cuts, algorithm=algorithm, block_size=block_size)
    except BlockTooLargeError:
        assert block_size == 65536  # only an incompressible 64 KiB block can overflow
        return
    z = ZFileReader(io.BytesIO(blob), name="mem")
    assert z.size == len(data) == info.original_file_size
    assert z.index_size == -(-len(data) // block_size) == info.index_size
    assert (z.header.flags, z.load_trailer().flags) == (0x1B, 0x16)
    assert z.header.raw[40:96] == z.trailer.raw[40:96]
    assert len(blob) == info.size == info.index_offset + 4 * info.index_size + 512
    assert z.read(0, len(data) + 10) == data
    for off, n in reads:
        assert z.read(off, n) == data[off : off + n]


@pytest.mark.parametrize("algorithm", ["lz4", "zstd"])
@pytest.mark.parametrize("block_size", BLOCK_SIZES[:4])
def test_random_data_threads_deterministic(algorithm: str, block_size: int) -> None:
    data = random.Random(block_size).randbytes(3 << 20) + bytes(1 << 20) + b"tail"
    one, _ = compress(data, [], algorithm=algorithm, block_size=block_size, threads=1)
    two, _ = compress(data, [5, 1 << 20, 3 << 20], algorithm=algorithm, block_size=block_size, threads=2)
    assert one == two
    assert ZFileReader(io.BytesIO(two)).read(0, len(data)) == data


def test_streaming_without_header_overwrite() -> None:
    data = b"overlaybd " * 100_000
    with pytest.raises(ValueError, match="seekable"):
        ZFileWriter(PipeOut())
    pipe = PipeOut()
    w = ZFileWriter(pipe, overwrite_header=False)
    w.write(data)
    info = w.close()
    z = ZFileReader(io.BytesIO(bytes(pipe.buf)))
    assert z.header.flags == 0x13 and z.header.index_offset == 0
    assert z.trailer is not None and z.trailer.flags == 0x16 and info.header.flags == 0x13
    assert z.read(0, len(data)) == data


def test_header_fields_and_digest() -> None:
    blob, _info = compress(b"x" * 10000, [], algorithm="zstd", block_size=8192)
    h = ZFileHeader.from_bytes(blob[:512])
    assert h.magic_ok and h.digest_ok() and h.size == 96
    assert (h.algo, h.block_size, h.verify, h.level, h.dict_size) == (2, 8192, 1, 0, 0)
    assert blob[96:512] == bytes(416)
    assert h.index_size == 2 and h.original_file_size == 10000


def test_empty_input() -> None:
    blob, _info = compress(b"", [])
    z = ZFileReader(io.BytesIO(blob))
    assert z.size == 0 and z.index_size == 0 and z.read(0, 10) == b""
    assert len(blob) == 1024


@pytest.mark.parametrize("algorithm", ["lz4", "zstd"])
def test_random_64k_blocks_refused(algorithm: str) -> None:
    w = ZFileWriter(io.BytesIO(), algorithm=algorithm, block_size=65536, threads=1)
    with pytest.raises(BlockTooLargeError, match=r"block 0 .*65536.*--bs 32"):
        w.write(os.urandom(65536))
        w.close()


def test_bad_options() -> None:
    with pytest.raises(ValueError):
        ZFileWriter(io.BytesIO(), block_size=3000)
    with pytest.raises(ValueError):
        ZFileWriter(io.BytesIO(), algorithm="gzip")


def test_block_encoding_matches_spec() -> None:
    """lz4: raw block of LZ4_compress_default; zstd: one level-3 frame with content size; CRC salt."""
    import lz4.block
    import zstandard
    from overlaybd_provider.formats.crc import crc32c_raw

    data = (b"spec zfile.md section 5 " * 400)[:9000] + random.Random(1).randbytes(3000)
    for algorithm, encode in (
        ("lz4", lambda b: lz4.block.compress(b, store_size=False)),
        ("zstd", zstandard.ZstdCompressor(level=3).compress),
    ):
        blob, info = compress(data, [], algorithm=algorithm, block_size=4096)
        pos = 512
        for i in range(info.index_size):
            want = encode(data[i * 4096 : (i + 1) * 4096])
            assert blob[pos : pos + len(want)] == want
            assert int.from_bytes(blob[pos + len(want) : pos + len(want) + 4], "little") == crc32c_raw(want, 100007)
            pos += len(want) + 4
        assert pos == info.index_offset
