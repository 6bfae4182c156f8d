"""gzip.meta: our checkpoints are upstream's, both indexes serve random reads, bad input is one line."""

from __future__ import annotations

import gzip
import io
import random
from pathlib import Path

import pytest
from overlaybd_provider.formats.errors import ChecksumError, FormatError, TruncatedError
from overlaybd_provider.formats.gzcheckpoint import CheckpointingGunzip, GzipSourceError, NotTurboCapable
from overlaybd_provider.formats.gzindex import (
    HEADER_SIZE,
    SPAN,
    WINSIZE,
    GzIndex,
    GzIndexWriter,
    GzipRandomAccess,
)
from overlaybd_provider.formats.source import FileRange


def build_index(src: Path, span: int = SPAN) -> tuple[bytes, bytes, CheckpointingGunzip]:
    """(gzip.meta bytes, the uncompressed stream, the reader) of ``src`` in one pass."""
    w = GzIndexWriter(span=span)
    out = bytearray()
    with open(src, "rb") as f:
        g = CheckpointingGunzip(f, w, name=src.name, span=span)
        while chunk := g.read(1 << 20):
            out += chunk
    meta = io.BytesIO()
    w.finish(meta, gzip_file_size=g.compressed_size, uncompressed_size=g.uncompressed_size)
    w.close()
    return meta.getvalue(), bytes(out), g


def index_of(data: bytes, name: str = "gzip.meta") -> GzIndex:
    return GzIndex(FileRange(io.BytesIO(data), name=name))


@pytest.mark.parametrize("which", ["upstream-turbo/L1.tar.gz", "upstream-features/feat1.tar.gz"])
def test_checkpoints_equal_upstreams(fixtures_dir: Path, which: str) -> None:
    """Same entries (de_pos, en_pos, bits) as turboOCI-apply's gzip.meta for the same layer, and
    the header facts upstream's GzFile::init checks."""
    src = fixtures_dir / which
    ref_member = {"upstream-turbo/L1.tar.gz": ("upstream-turbo/simple-ext4/layer-1.turbo.tar.gz"),
                  "upstream-features/feat1.tar.gz": ("upstream-turbo/features-ext4/layer-1.turbo.tar.gz")}[which]
    ref_blob = fixtures_dir / ref_member
    if not ref_blob.is_file():
        pytest.skip(f"{ref_member} is not available")
    import tarfile

    with tarfile.open(ref_blob) as tf:
        ref = tf.extractfile("gzip.meta").read()  # type: ignore[union-attr]
    ours, plain, g = build_index(src)
    assert plain == gzip.decompress(src.read_bytes())
    a, b = index_of(ours, "ours"), index_of(ref, "upstream")
    assert a.info.entries == b.info.entries > 1
    assert list(a.de) == list(b.de) and list(a.en) == list(b.en) and bytes(a.bits) == bytes(b.bits)
    assert (a.info.span, a.info.gzip_file_size, a.info.uncompressed_size) == \
        (b.info.span, b.info.gzip_file_size, b.info.uncompressed_size) == (SPAN, src.stat().st_size, len(plain))
    for i in range(a.info.entries):
        assert a.window(i) == b.window(i)
    assert g.digest == "sha256:" + __import__("hashlib").sha256(src.read_bytes()).hexdigest()
    # our windows are deflated by pinned zlib-ng: within 1% of upstream's zlib -6
    assert len(ours) <= len(ref) * 1.01
    print(f"\n{which}: gzip.meta ours {len(ours)} bytes, upstream {len(ref)} bytes, {a.info.entries} entries")


def test_random_reads_through_both_indexes(fixtures_dir: Path) -> None:
    """Reads at random offsets/lengths (across checkpoints, ending past the stream: zeros, as
    upstream's LSMT pads short target reads) through our index equal the plain tar."""
    src = fixtures_dir / "upstream-features/feat1.tar.gz"
    ours, plain, _ = build_index(src)
    idx = index_of(ours)
    assert any(idx.bits), "feat1 has checkpoints inside a byte (inflatePrime path)"
    f = src.open("rb")
    ra = GzipRandomAccess(FileRange(f, name=str(src)), idx)
    rnd = random.Random(7)
    probes = [(int(idx.de[i]) - 5, 4096) for i in range(1, idx.info.entries, 9)]
    probes += [(rnd.randrange(len(plain)), rnd.randrange(1, 3 << 20)) for _ in range(40)]
    probes += [(len(plain) - 100, 600), (0, 1), (len(plain) - 1, 1)]
    for off, n in probes:
        want = plain[off:off + n]
        assert ra.read(off, n) == want + bytes(n - len(want)), (off, n)
    # sequential reads continue the same inflater (export reads extents in order)
    seq = b"".join(ra.read(o, 1 << 20) for o in range(0, 8 << 20, 1 << 20))
    assert seq == plain[:8 << 20]
    f.close()


def test_small_span_and_deterministic(tmp_path: Path) -> None:
    """A layer with many blocks at a small span: every window is the 32 KiB before its point,
    and two builds are byte-identical."""
    rnd = random.Random(3)
    words = [bytes(rnd.choice(b"abcdefghij ") for _ in range(rnd.randrange(2, 9))) for _ in range(500)]
    text = b" ".join(rnd.choice(words) for _ in range(900_000))
    src = tmp_path / "t.gz"
    src.write_bytes(gzip.compress(text, 6, mtime=0))
    one, plain, _ = build_index(src, span=1 << 17)
    two, _, _ = build_index(src, span=1 << 17)
    assert one == two and plain == text
    idx = index_of(one)
    assert idx.info.entries >= len(text) // (1 << 17) // 2
    for i in range(idx.info.entries):
        de = idx.de[i]
        want = (bytes(WINSIZE) + text[:de])[-WINSIZE:]
        assert idx.window(i) == want


def test_bad_sources_are_one_line_errors(fixtures_dir: Path, tmp_path: Path) -> None:
    good = (fixtures_dir / "upstream-turbo/L1.tar.gz").read_bytes()
    cases = {
        "truncated": (good[: len(good) // 2], GzipSourceError, "truncated"),
        "bad-crc": (good[:-5] + bytes([good[-5] ^ 1]) + good[-4:], GzipSourceError, "incorrect data check"),
        "garbage": (good + b"JUNKJUNK", GzipSourceError, "trailing data"),
        "two-members": (good + gzip.compress(b"x" * 1000, mtime=0), NotTurboCapable, "more than one member"),
        # a proper header, then deflate block type 3 (invalid): random bytes were "truncated" 6 % of the time
        "not-gzip": (b"\x1f\x8b\x08" + bytes(7) + b"\xff" * 4000, GzipSourceError, "corrupt gzip data"),
    }
    for name, (data, exc, text) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(exc, match=text):
            build_index(p)


def test_damaged_index_is_refused(fixtures_dir: Path) -> None:
    ours, _, _ = build_index(fixtures_dir / "upstream-turbo/L1.tar.gz")
    flipped = bytearray(ours)
    flipped[40] ^= 1
    with pytest.raises(ChecksumError):
        index_of(bytes(flipped))
    with pytest.raises(TruncatedError):
        index_of(ours[:-1])
    with pytest.raises(FormatError):
        index_of(b"notanindex" + ours[10:])
    assert len(ours) > HEADER_SIZE
    src = fixtures_dir / "upstream-turbo/L2.tar"  # the wrong source for this index
    with src.open("rb") as f, pytest.raises(FormatError, match="gzip index is for a"):
        GzipRandomAccess(FileRange(f, name=str(src)), index_of(ours))
