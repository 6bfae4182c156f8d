"""A 2 GB gzip layer becomes a TurboOCIv1 meta layer in bounded memory (peak RSS <= 300 MB).

The layer (2.1 GiB of tar: one 1.5 GiB file and 2 000 files of 320 KiB, seeded pseudo-random
data with text runs) is written by a child through ISA-L; a fresh interpreter builds the meta
layer and reports its own ``VmHWM`` (:mod:`support.peakrss`: ``ru_maxrss`` of a pytest
child is inflated by the parent's peak). The result is also opened by our reader, which
checks a few of the big file's blocks against the source.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.peakrss import run_child

GIB = 1 << 30

WRITE = r'''
import random, sys, tarfile
from isal import igzip
path = sys.argv[1]
rnd = random.Random(5)
pool = rnd.randbytes(8 << 20)
text = b" ".join(rnd.choice([b"alpha", b"beta", b"gamma", b"delta", b"0x1f", b"{}"]) for _ in range(400_000))

class Gen:
    def __init__(self, size, seed):
        self.left, self.k = size, seed
    def read(self, n=-1):
        n = self.left if n < 0 else min(n, self.left)
        out = bytearray()
        while len(out) < n:
            self.k += 1
            part = text if self.k % 3 == 0 else pool[(self.k * 7919) % (7 << 20):][: 1 << 20]
            out += part[: n - len(out)]
        self.left -= n
        return bytes(out)

with igzip.open(path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
    def add(name, size, seed):
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime = size, 1_700_000_000
        tf.addfile(ti, Gen(size, seed))
    add("data/huge.bin", 3 * (1 << 29), 1)
    for i in range(2000):
        add(f"data/small/{i:05d}", 320 << 10, 10 + i)
print("{}")
'''

BUILD = r'''
import json, sys, time
from overlaybd_provider.ext4.turbo import apply_turbo_layer
t0 = time.monotonic()
res = apply_turbo_layer([], sys.argv[1], sys.argv[2])
print(json.dumps({"seconds": time.monotonic() - t0, "size": res.size, "tar": res.source_tar_size,
                  "spans": res.gzip_spans, "target_blocks": res.target_blocks}))
'''


@pytest.mark.slow
def test_two_gib_layer_peak_rss(tmp_path: Path) -> None:
    src, meta = tmp_path / "big.tar.gz", tmp_path / "big.turbo.tar.gz"
    run_child(WRITE, [str(src)], timeout=900)
    res = run_child(BUILD, [str(src), str(meta)], timeout=1200)
    print(f"\n2 GiB layer ({src.stat().st_size / GIB:.2f} GiB gzip): TurboOCI build {res['seconds']:.1f}s, "
          f"peak RSS {res['peak_rss_mb']:.0f} MB, meta {res['size']} B, {res['spans']} gzip spans")
    assert res["tar"] > 2 * GIB
    assert res["target_blocks"] * 4096 >= 2 * GIB
    assert res["spans"] >= 1500
    assert res["peak_rss_mb"] <= 300

    # the meta reads the big file's data straight from the source
    import gzip

    from overlaybd_provider.formats.stack import LayerStack
    from overlaybd_provider.formats.turbo import open_layer_spec

    with open_layer_spec(f"turbo:{meta},{src}") as layer:
        stack = LayerStack([layer.lsmt], check_chain=False)
        ext = [e for e in stack.mapped_extents() if e.tag == 1]
        longest = max(ext, key=lambda e: e.length)
        with gzip.open(src) as g:
            g.seek(longest.source_offset + longest.length - 8192)
            want = g.read(8192)
        assert stack.read(longest.offset + longest.length - 8192, 8192) == want
