"""Bounded memory: verifying an image with a big layer keeps the verifier's peak RSS (VmHWM) low.

CI uses a 384 MiB layer; ``bench/verify.py --big`` shows the same bound for a 2 GB layer. The
source model keeps metadata and hashes only and the walk reads file data in 8 MiB pieces through
the stack reader, so the peak does not grow with the layer.
"""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from pathlib import Path

import pytest
from support.obdimages import convert, tar_layout
from support.peakrss import run_child

LIMIT_MB = 300
MIB = 1 << 20

CHILD = """
import sys
from overlaybd_provider.verify import VerifyOptions, verify_image
report = verify_image(sys.argv[1], sys.argv[2], VerifyOptions(fsck="auto"))
import json
print(json.dumps({"summary": report.summary_line(), "identical": report.identical,
                  "bytes": report.platforms[0].stats["bytes_hashed"]}))
"""


class _Gen:
    """``size`` bytes alternating text and random MiBs, each MiB made unique by a hash prefix."""

    def __init__(self, size: int, chunk: bytes, text: bytes) -> None:
        self.left, self.k, self.parts = size, 0, (text, chunk)

    def read(self, n: int = -1) -> bytes:
        n = min(MIB if n < 0 else n, self.left)
        out = []
        while n > 0:
            piece = hashlib.sha256(b"%d" % self.k).digest() + self.parts[self.k % 2][32:min(n, MIB)]
            piece = piece[:n]
            out.append(piece)
            n -= len(piece)
            self.left -= len(piece)
            self.k += 1
        return b"".join(out)


def _big_layer(path: Path, total: int) -> None:
    rng = random.Random(5)
    chunk = rng.randbytes(MIB)
    text = b"".join(b"line %d of a text file in a big layer\n" % i for i in range(30000))[:MIB]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        sizes = [96 * MIB, 160 * MIB, total - 256 * MIB]
        for n, size in enumerate(sizes):
            ti = tarfile.TarInfo(f"data/big-{n}.bin")
            ti.size, ti.mtime = size, 1_700_000_000

            tf.addfile(ti, _Gen(size, chunk, text))
        for i in range(2000):
            ti = tarfile.TarInfo(f"small/f{i:05d}")
            data = b"small %d\n" % i
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


@pytest.mark.slow
def test_peak_rss_of_verify_stays_bounded(tmp_path: Path) -> None:
    total = 384 * MIB
    tar = tmp_path / "big.tar"
    _big_layer(tar, total)
    src = tar_layout(tmp_path / "src", "v1", [tar])
    dst = convert(src, f"oci:{tmp_path / 'dst'}:v1")
    tar.unlink()
    result = run_child(CHILD, [src, dst], timeout=1200)
    assert result["identical"], result["summary"]
    assert result["bytes"] > total - MIB
    assert result["peak_rss_mb"] <= LIMIT_MB, result
    print(f"\n[verify] {total / MIB:.0f} MiB layer: peak RSS {result['peak_rss_mb']:.0f} MB")
