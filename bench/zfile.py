"""ZFile throughput: our writer/reader vs the same library compressing the data as one stream.

Usage: ``python bench/zfile.py [--mib 256] [--threads N]``. Each case runs in a fresh child
process (so ``ru_maxrss`` is that case's peak) over the same deterministic input: "mixed" =
1 MiB chunks alternating random bytes and text (Python stdlib sources), "text" = text only,
written once to a temp file and streamed from there. Random data cannot be stored in 64 KiB
blocks (overlaybd's 64 KiB read buffer, zfile.md §5), so 64 KiB is also measured on text. "stream" rows are the practical limit: the library's own streaming
API (lz4.frame / zstd streaming) over the same chunks, no per-block work at all.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

CHUNK = 1 << 20


class NullSink:
    """A seekable sink that only counts bytes (measures compression, not disk)."""

    def __init__(self) -> None:
        self.pos = self.size = 0

    def write(self, data) -> int:
        self.pos += len(data)
        self.size = max(self.size, self.pos)
        return len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.size + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True


def make_input(path: Path, mib: int, *, text_only: bool = False) -> None:
    text = bytearray()
    for src in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        text += src.read_bytes()
        if len(text) >= 16 * CHUNK:
            break
    rng = random.Random(0)
    with open(path, "wb") as f:
        for i in range(mib):
            if i % 2 == 0 and not text_only:
                f.write(rng.randbytes(CHUNK))
            else:
                off = (i * CHUNK // 2) % (len(text) - CHUNK)
                f.write(text[off : off + CHUNK])


def chunks(path: Path):
    with open(path, "rb") as f:
        while data := f.read(CHUNK):
            yield data


def case(path: Path, kind: str, algorithm: str, block_size: int, threads: int | None, zpath: Path) -> dict:
    from overlaybd_provider.formats.zfile import ZFileReader, ZFileWriter

    size = path.stat().st_size
    t = time.perf_counter()
    cpu = time.process_time()
    if kind == "compress":
        with open(zpath, "w+b") as out:
            w = ZFileWriter(out, algorithm=algorithm, block_size=block_size, threads=threads)
            for data in chunks(path):
                w.write(data)
            info = w.close()
        result = {"ratio": round(info.size / size, 4)}
    elif kind == "decompress":
        with open(zpath, "rb") as f:
            z = ZFileReader(f)
            for pos in range(0, z.size, CHUNK):
                z.read(pos, CHUNK)
        result = {}
    elif kind == "stream-compress":
        n = 0
        if algorithm == "lz4":
            import lz4.frame

            c = lz4.frame.LZ4FrameCompressor()
            n += len(c.begin())
            for data in chunks(path):
                n += len(c.compress(data))
            n += len(c.flush())
        else:
            import zstandard

            c = zstandard.ZstdCompressor(level=3).compressobj()
            for data in chunks(path):
                n += len(c.compress(data))
            n += len(c.flush())
        result = {"ratio": round(n / size, 4)}
    else:
        raise ValueError(kind)
    seconds = time.perf_counter() - t
    cpu = time.process_time() - cpu
    result.update(mb_s=round(size / seconds / 1e6, 1), cpu_mb_s=round(size / cpu / 1e6, 1), seconds=round(seconds, 3))
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--case", nargs=4, metavar=("INPUT", "KIND", "ALGO", "BS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        inp, kind, algo, bs = args.case
        print(json.dumps(case(Path(inp), kind, algo, int(bs), args.threads, Path(inp + f".{algo}.{bs}.zfile"))))
        return
    with tempfile.TemporaryDirectory(prefix="zfile-bench-") as tmp:
        mixed = Path(tmp) / "mixed.bin"
        text = Path(tmp) / "text.bin"
        make_input(mixed, args.mib)
        make_input(text, args.mib, text_only=True)
        load = os.getloadavg()[0]
        print(f"input: {args.mib} MiB; cpus={os.cpu_count()}; threads={args.threads or 'default'}; "
              f"load average at start {load:.2f}")
        print("MB/s = wall clock; cpu MB/s = per CPU-second of all threads (robust on a busy machine)")
        print(f"{'case':<40} {'MB/s':>8} {'cpu MB/s':>9} {'ratio':>7} {'peak RSS MiB':>13}")
        plan = []
        for algo in ("lz4", "zstd"):
            for inp, bs in ((mixed, 4096), (mixed, 32768), (mixed, 65536), (text, 65536)):
                plan += [(inp, "compress", algo, bs), (inp, "decompress", algo, bs)]
            plan += [(mixed, "stream-compress", algo, 0), (text, "stream-compress", algo, 0)]
        refused: set[tuple[Path, str, int]] = set()
        for inp, kind, algo, bs in plan:
            label = f"{kind} {algo} " + (f"{bs // 1024} KiB" if bs else "one stream") + f" {inp.stem}"
            if (inp, algo, bs) in refused:
                continue
            cmd = [sys.executable, __file__, "--case", str(inp), kind, algo, str(bs)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                last = (out.stderr.strip().splitlines() or ["?"])[-1]
                if "BlockTooLarge" in last:
                    refused.add((inp, algo, bs))
                    print(f"{label:<40} refused: a random block stores > 65536 bytes (use 32 KiB)")
                else:
                    print(f"{label:<40} failed: {last}")
                continue
            r = json.loads(out.stdout)
            print(f"{label:<40} {r['mb_s']:>8} {r['cpu_mb_s']:>9} {r.get('ratio', ''):>7} {r['peak_rss_mib']:>13}")

if __name__ == "__main__":
    main()
