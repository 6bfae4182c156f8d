"""Reproducible benchmark corpus, built once and cached under ``bench/.cache/``.

Layers (uncompressed OCI layer tars, deterministic: sorted entries, fixed mtime, uid/gid 0):

* ``mixed``   (a) ~300 MB, ~2 300 files: half random bytes from a seeded PRNG, half text.
* ``debian``  (b) a 3-layer Debian image, ~510 MB of tar, ~27 000 entries: real bookworm packages
  (``apt-get download`` + ``dpkg-deb -x``) in layers 1-2; layer 3 holds one 150 MB file (the layer-2
  binaries concatenated) and one directory of 20 000 small files. ``debian_alt_top`` is another
  layer 3 built the same way from other seeds: the image ``debian-alt`` shares layers 1-2 only.
* ``flat``    the three (b) layers merged into one ~510 MB layer (bench/apply.py).
* ``small``   (c) 100 000 small files.
* ``big``     (d) ~2 GB mixed layer, only with ``--big`` (peak-RSS check).
* ``layout``  an OCI image layout (gzip layers) with tags ``debian``, ``debian-alt`` and ``alt-top``
  (a one-layer image of ``debian_alt_top``).

``--quick`` builds the same shapes at a tiny scale and makes (b) from synthetic files instead of
Debian packages, so that it needs no network. The Debian package *names* are fixed; their versions
are whatever the machine's apt lists resolve (recorded in ``debian/versions.txt``), so the bytes
of (b) follow Debian's point releases while its shape does not.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from layertar import Layer, LayerWriter, cached, merge_layers
from ocilayout import build_layout

log = logging.getLogger(__name__)

RECIPE_VERSION = 1
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_CACHE = BENCH_DIR / ".cache"
MB = 1_000_000

# Layer 1: a runtime base; layer 2: a compiler toolchain. ~7 000 entries, ~335 MB of tar (bookworm).
DEBIAN_LAYER1 = (
    "libc6 libc-bin coreutils bash dash tar gzip grep sed findutils diffutils perl-base libssl3 "
    "openssl ca-certificates tzdata libpython3.11-minimal libpython3.11-stdlib python3.11-minimal python3.11 "
    "libicu72 libsqlite3-0 libxml2 zlib1g libzstd1 liblzma5 libbz2-1.0 libstdc++6 libgcc-s1 libgnutls30"
)
DEBIAN_LAYER2 = (
    "gcc-12 cpp-12 libgcc-12-dev libc6-dev binutils-x86-64-linux-gnu libbinutils libisl23 libmpc3 "
    "libmpfr6 make libperl5.36 libstdc++-12-dev"
)

WORDS = (
    "the of and to in is for on that with as by this be are from or an it at not which have can "
    "config value error return function module import class self data file path layer image block "
    "index offset size buffer stream write read open close start stop true false none null int str "
    "kernel device driver memory page cache lock thread queue event timer signal process user group "
    "0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024 4096 65536 0x0 0xff # // /* */ { } ( ) ; = == :"
)


@dataclass(frozen=True)
class Corpus:
    mixed: Layer
    debian: tuple[Layer, ...]
    debian_alt_top: Layer
    flat: Layer
    small: Layer
    layout: Path
    big: Layer | None = None


@dataclass(frozen=True)
class Scale:
    """Sizes of every corpus item; ``FULL`` is the benchmark, ``QUICK`` the smoke test."""

    tag: str
    mixed_bytes: int
    mixed_files: int
    small_files: int
    big_file_bytes: int
    dir_files: int
    big_bytes: int
    big_files: int
    synthetic_debian: bool


FULL = Scale("full", 300 * MB, 2300, 100_000, 150 * MB, 20_000, 2000 * MB, 4000, False)
QUICK = Scale("quick", 12 * MB, 120, 3000, 6 * MB, 1500, 64 * MB, 200, True)


# ---------------------------------------------------------------- synthetic content


class TextSource:
    """Source-code-like text: lines of words from a small vocabulary (lz4 ratio ~0.5-0.6)."""

    def __init__(self, seed: int, pool_bytes: int = 4 << 20) -> None:
        rng = random.Random(seed)
        words = WORDS.split()
        lines, size = [], 0
        while size < pool_bytes:
            indent = " " * (4 * rng.randrange(4))
            line = indent + " ".join(rng.choices(words, k=rng.randrange(3, 14))) + "\n"
            lines.append(line)
            size += len(line)
        self.pool = "".join(lines).encode()
        self.rng = rng

    def take(self, n: int) -> bytes:
        if n <= 0:
            return b""
        out = []
        while n > 0:
            start = self.rng.randrange(len(self.pool) - 1)
            piece = self.pool[start : start + min(n, 256 * 1024)]
            out.append(piece)
            n -= len(piece)
        return b"".join(out)


def _sizes(rng: random.Random, count: int, total: int) -> list[int]:
    """``count`` lognormal file sizes scaled to sum to ``total`` (a few big files, many small)."""
    raw = [rng.lognormvariate(0.0, 1.6) for _ in range(count)]
    scale = total / sum(raw)
    sizes = [int(r * scale) for r in raw]
    sizes[0] += total - sum(sizes)
    return sizes


def _chunks(make, size: int, step: int = 1 << 20) -> Iterator[bytes]:
    done = 0
    while done < size:
        n = min(step, size - done)
        yield make(n)
        done += n


def write_mixed_layer(path: Path, *, seed: int, files: int, total_bytes: int) -> Layer:
    """(a)/(d): even-numbered files are random bytes, odd ones text; nested directories."""
    rng = random.Random(seed)
    text = TextSource(seed + 1)
    sizes = _sizes(rng, files, total_bytes)
    w = LayerWriter(path)
    for i, size in enumerate(sizes):
        name = f"data/d{i // 200:02d}/s{(i // 20) % 10}/{'bin' if i % 2 == 0 else 'txt'}{i:05d}"
        make = rng.randbytes if i % 2 == 0 else text.take
        w.add_stream(name, size, _chunks(make, size))
    return w.close()


def add_small_files(w: LayerWriter, prefix: str, count: int, *, seed: int, per_dir: int | None,
                    max_size: int = 2048) -> None:
    """Small text files (0..max_size bytes) with names of varying length, ``per_dir`` per directory."""
    rng = random.Random(seed)
    text = TextSource(seed + 1, pool_bytes=1 << 20)
    for i in range(count):
        stem = hashlib.blake2s(f"{seed}/{i}".encode(), digest_size=8).hexdigest()[: 4 + i % 12]
        sub = f"{prefix}/g{i // per_dir:03d}" if per_dir else prefix
        w.add_bytes(f"{sub}/{stem}-{i:06d}.txt", text.take(rng.randrange(max_size + 1)))


def write_small_layer(path: Path, *, files: int) -> Layer:
    """(c): ``files`` small files in directories of 1 000."""
    w = LayerWriter(path)
    add_small_files(w, "srv/small", files, seed=3, per_dir=1000)
    return w.close()


# ---------------------------------------------------------------- (b) the Debian image


def _fetch_debs(packages: list[str], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_")[0]: p for p in dest.glob("*.deb")}
    missing = [p for p in packages if p not in have]
    if missing:
        if shutil.which("apt-get") is None:
            raise SystemExit("corpus: apt-get is needed to build the Debian image (b); use --quick")
        log.info("corpus: apt-get download %d packages", len(missing))
        proc = subprocess.run(["apt-get", "download", *missing], cwd=dest, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"corpus: apt-get download failed (try `apt-get update`):\n{proc.stderr}")
        have = {p.name.split("_")[0]: p for p in dest.glob("*.deb")}
    return [have[p] for p in packages]


def _unpack_debs(debs: list[Path], root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)


def _elf_files(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.stat().st_size > 4096:
            with p.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    out.append(p)
    return out


def _concat_chunks(sources: list[Path], size: int) -> Iterator[bytes]:
    """``size`` bytes of real binaries, cycling through ``sources`` (the 150 MB file)."""
    done = 0
    while True:
        for src in sources:
            with src.open("rb") as f:
                while chunk := f.read(1 << 20):
                    chunk = chunk[: size - done]
                    done += len(chunk)
                    yield chunk
                    if done >= size:
                        return


def write_top_layer(path: Path, scale: Scale, binaries: list[Path], *, seed: int) -> Layer:
    """Layer 3 of (b): one big file of real binaries plus one directory of many small files."""
    order = list(binaries)
    random.Random(seed).shuffle(order)
    w = LayerWriter(path)
    w.add_stream("opt/app/model.bin", scale.big_file_bytes, _concat_chunks(order, scale.big_file_bytes))
    add_small_files(w, "opt/app/assets", scale.dir_files, seed=seed, per_dir=None, max_size=2048)
    return w.close()


def build_debian(cache: Path, scale: Scale) -> tuple[tuple[Layer, ...], Layer]:
    names = [f"debian-{scale.tag}-{i}.tar" for i in (1, 2, 3)] + [f"debian-{scale.tag}-3alt.tar"]
    done = [cached(cache / n) for n in names]
    if all(done):
        return (done[0], done[1], done[2]), done[3]  # type: ignore[return-value]
    work = cache / f"debian-{scale.tag}-work"
    roots = [work / "l1", work / "l2"]
    if scale.synthetic_debian:
        for i, root in enumerate(roots):
            if root.exists():
                shutil.rmtree(root)
            rng = random.Random(100 + i)
            text = TextSource(200 + i, pool_bytes=1 << 20)
            for j in range(300):
                p = root / f"usr/lib/pkg{j % 17}/f{j:04d}.so"
                p.parent.mkdir(parents=True, exist_ok=True)
                n = rng.randrange(40_000)
                p.write_bytes(b"\x7fELF" + (rng.randbytes(n) if j % 3 == 0 else text.take(n)))
    else:
        pkgs1, pkgs2 = DEBIAN_LAYER1.split(), DEBIAN_LAYER2.split()
        debs = _fetch_debs(pkgs1 + pkgs2, cache.parent / "debs")  # shared by every recipe
        (cache / "debian-versions.txt").write_text("".join(f"{d.name}\n" for d in debs))
        _unpack_debs(debs[: len(pkgs1)], roots[0])
        _unpack_debs(debs[len(pkgs1) :], roots[1])
    layers = []
    for root, name in zip(roots, names[:2], strict=True):
        w = LayerWriter(cache / name)
        w.add_tree(root)
        layers.append(w.close())
    binaries = _elf_files(roots[1])
    layers.append(write_top_layer(cache / names[2], scale, binaries, seed=31))
    alt = write_top_layer(cache / names[3], scale, binaries, seed=32)
    shutil.rmtree(work)
    return tuple(layers), alt


# ---------------------------------------------------------------- entry points


def build_corpus(cache_dir: Path = DEFAULT_CACHE, *, quick: bool = False, big: bool = False) -> Corpus:
    """Builds what is missing and returns the whole corpus (cheap when everything is cached)."""
    scale = QUICK if quick else FULL
    recipe = f"{RECIPE_VERSION} {scale} {DEBIAN_LAYER1} {DEBIAN_LAYER2} {WORDS}".encode()
    cache = cache_dir / f"{scale.tag}-{hashlib.sha256(recipe).hexdigest()[:10]}"
    cache.mkdir(parents=True, exist_ok=True)
    mixed = cached(cache / "mixed.tar") or write_mixed_layer(
        cache / "mixed.tar", seed=1, files=scale.mixed_files, total_bytes=scale.mixed_bytes)
    small = cached(cache / "small.tar") or write_small_layer(cache / "small.tar", files=scale.small_files)
    debian, alt = build_debian(cache, scale)
    flat = merge_layers(cache / "flat.tar", debian)
    layout = build_layout(cache / "layout-2", {"debian": debian, "debian-alt": (debian[0], debian[1], alt),
                                               "alt-top": (alt,)})
    big_layer = None
    if big:
        big_layer = cached(cache / "big.tar") or write_mixed_layer(
            cache / "big.tar", seed=4, files=scale.big_files, total_bytes=scale.big_bytes)
    return Corpus(mixed, debian, alt, flat, small, layout, big_layer)


def add_cache_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the corpus is kept")
    parser.add_argument("--quick", action="store_true", help="tiny corpus, no network (smoke test)")
    parser.add_argument("--big", action="store_true", help="also build the 2 GB layer (d)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_cache_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    corpus = build_corpus(args.cache_dir, quick=args.quick, big=args.big)
    for field, value in asdict(corpus).items():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, dict):
                print(f"{field:15s} {item['path']}  {item['tar_bytes'] / MB:8.1f} MB  {item['entries']:7d} entries")
            elif item is not None:
                print(f"{field:15s} {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
