"""TurboOCIv1 meta layers (issue #14): ours beside upstream's for the same gzip layers.

    .venv/bin/python bench/turbo.py [--quick] [--runs N] [--engine]

Takes the gzip layers of the corpus's OCI layout (tag ``debian``: the 3-layer Debian image, as a
registry serves it), builds the TurboOCIv1 meta layer of each with ``overlaybd apply-layer
--turbo-oci`` (each on the meta layers below it) and, when the oracle is present
(``$OVERLAYBD_SHARED/oracle/bin/oracle-turbo.sh``), with upstream's tools, then prints per layer
the meta blob sizes (ours / upstream, target <= 1.05x in total), wall times and our peak RSS.
Both builds run here, back to back (2 shared cores: rerun close calls).

``--engine`` adds the issue's headline comparison, same run, same gzip layers: our whole
registry→registry conversion (``overlaybd convert --turbo-oci`` from a local docker-registry into
another repository of it: download, build, push of the meta blobs, mount of the source layers, config
and manifest) against upstream's *local* TurboOCI build of the layer files (``oracle-turbo.sh``, no
registry at all), alternating, N runs each, medians; meta bytes and our peak RSS beside them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import corpus
from measure import CommandFailed, overlaybd_cli, run_once

log = logging.getLogger(__name__)
SIZE_TARGET = 1.05


def gzip_layers(layout: Path, tag: str = "debian") -> list[Path]:
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    manifest = json.loads((layout / "blobs/sha256" / desc["digest"].split(":", 1)[1]).read_text())
    return [layout / "blobs/sha256" / layer["digest"].split(":", 1)[1] for layer in manifest["layers"]]


def ours(sources: list[Path], out: Path, runs: int) -> tuple[list[int], list[float], float]:
    sizes: list[int] = []
    times: list[list[float]] = [[] for _ in sources]
    rss = 0.0
    for _ in range(runs):
        metas: list[Path] = []
        sizes = []
        for i, src in enumerate(sources):
            meta = out / f"ours-{i + 1}.turbo.tar.gz"
            cmd = [*overlaybd_cli(), "apply-layer", "--turbo-oci"]
            for m, s in zip(metas, sources, strict=False):
                cmd += ["--lower", f"turbo:{m},{s}"]
            run = run_once([*cmd, str(src), str(meta)])
            times[i].append(run.seconds)
            rss = max(rss, run.max_rss_mb)
            metas.append(meta)
            sizes.append(meta.stat().st_size)
    return sizes, [statistics.median(t) for t in times], rss


def upstream(sources: list[Path], out: Path) -> tuple[list[int], float] | None:
    shared = Path(os.environ.get("OVERLAYBD_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    script = shared / "oracle/bin/oracle-turbo.sh"
    if not script.is_file():
        print(f"bench: no oracle at {script}: upstream column left empty", file=sys.stderr)
        return None
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(script), *map(str, sources), str(out / "upstream")], capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"bench: oracle-turbo.sh failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return [(out / "upstream" / f"layer-{i + 1}.turbo.tar.gz").stat().st_size for i in range(len(sources))], seconds


def engine_vs_upstream(layout: Path, sources: list[Path], out: Path, runs: int) -> bool:
    """Our registry→registry TurboOCI conversion vs upstream's local build, alternating; True when
    the time target (<= 0.5x upstream, best runs) and the size target (<= 1.05x) are met. Wall
    time is at the mercy of other load on a shared machine, so the CPU seconds (user + system of
    the process and its children) are printed too."""
    from registry import local_registry, push_layout

    shared = Path(os.environ.get("OVERLAYBD_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    script = shared / "oracle/bin/oracle-turbo.sh"
    ours_runs, theirs_runs = [], []
    meta = theirs_meta = 0
    with local_registry(out) as host:
        push_layout(layout, "debian", f"{host}/bench/src:debian")
        for n in range(runs):
            report = out / f"report-{n}.json"
            cmd = [*overlaybd_cli(), "convert", "--turbo-oci", "--plain-http", "--db-url", "none",
                   "--blob-cache", "none", "--output-json", str(report), f"{host}/bench/src:debian",
                   f"{host}/bench/turbo-{n}:debian"]
            ours_runs.append(run_once(cmd))
            doc = json.loads(report.read_text())
            meta = sum(layer["size"] for layer in doc["manifests"][0]["layers"])
            if script.is_file():
                theirs_runs.append(run_once(["bash", str(script), *map(str, sources), str(out / f"up-{n}")]))
                theirs_meta = sum((out / f"up-{n}" / f"layer-{i + 1}.turbo.tar.gz").stat().st_size
                                  for i in range(len(sources)))

    def line(what: str, rs: list) -> str:
        walls = [r.seconds for r in rs]
        return (f"{what}: best {min(walls):.2f} s, median {statistics.median(walls):.2f} s "
                f"({', '.join(f'{x:.2f}' for x in walls)}); CPU {statistics.median(r.cpu_seconds for r in rs):.2f} s")

    tar_bytes = sum(corpus_tar_sizes(sources))
    print(f"\nengine: {len(sources)} gzip layers, {sum(s.stat().st_size for s in sources)} B gzip, "
          f"{tar_bytes} B uncompressed; runs {runs}; load {os.getloadavg()[0]:.2f} after")
    print(line("ours registry→registry convert --turbo-oci", ours_runs)
          + f"; meta {meta} B, peak RSS {max(r.max_rss_mb for r in ours_runs):.0f} MB")
    if not theirs_runs:
        print("upstream: no oracle (oracle-turbo.sh): comparison skipped")
        return True
    print(line("upstream local oracle-turbo.sh           ", theirs_runs) + f"; meta {theirs_meta} B")
    best = min(r.seconds for r in ours_runs) / min(r.seconds for r in theirs_runs)
    med = statistics.median(r.seconds for r in ours_runs) / statistics.median(r.seconds for r in theirs_runs)
    m_ratio = meta / theirs_meta
    print(f"time ratio best {best:.2f}x, median {med:.2f}x (target <= 0.5x: {'met' if best <= 0.5 else 'MISSED'}); "
          f"meta ratio {m_ratio:.3f}x (target <= {SIZE_TARGET}x: {'met' if m_ratio <= SIZE_TARGET else 'MISSED'})")
    return best <= 0.5 and m_ratio <= SIZE_TARGET


def both_vs_separate(layout: Path, out: Path) -> None:
    """``--turbo-oci-destination`` (one download, one parse per layer) against a native-only plus a
    TurboOCI-only conversion of the same image, registry→registry, one run each."""
    from registry import local_registry, push_layout

    with local_registry(out) as host:
        push_layout(layout, "debian", f"{host}/bench/src:debian")
        base = [*overlaybd_cli(), "convert", "--plain-http", "--db-url", "none", "--blob-cache", "none"]
        src = f"{host}/bench/src:debian"
        native = run_once([*base, src, f"{host}/bench/n1:v1"])
        turbo = run_once([*base, "--turbo-oci", src, f"{host}/bench/t1:v1"])
        both = run_once([*base, "--turbo-oci-destination", f"{host}/bench/t2:v1", src, f"{host}/bench/n2:v1"])
    print(f"\nboth: native {native.seconds:.2f} s + turbo {turbo.seconds:.2f} s = "
          f"{native.seconds + turbo.seconds:.2f} s separately; --turbo-oci-destination {both.seconds:.2f} s "
          f"(peak RSS {both.max_rss_mb:.0f} MB); load {os.getloadavg()[0]:.2f}")


def big_layer_rss(data: corpus.Corpus, out: Path) -> float:
    """Peak RSS (MB) of our registry→registry TurboOCI conversion of the corpus's 2 GB layer as one
    gzip layer (the issue's bound: <= 300 MB)."""
    from ocilayout import build_layout
    from registry import local_registry, push_layout

    assert data.big is not None
    layout = build_layout(data.big.path.with_name("layout-big"), {"big": (data.big,)})
    with local_registry(out) as host:
        push_layout(layout, "big", f"{host}/bench/big:v1")
        run = run_once([*overlaybd_cli(), "convert", "--turbo-oci", "--plain-http", "--db-url", "none",
                        "--blob-cache", "none", f"{host}/bench/big:v1", f"{host}/bench/big-turbo:v1"])
    gz = sum(p.stat().st_size for p in (layout / "blobs/sha256").iterdir())
    print(f"\n2 GB layer ({data.big.path.stat().st_size} B tar, ~{gz} B gzip): registry→registry convert --turbo-oci "
          f"{run.seconds:.2f} s, peak RSS {run.max_rss_mb:.0f} MB (target <= 300 MB: "
          f"{'met' if run.max_rss_mb <= 300 else 'MISSED'}); load {os.getloadavg()[0]:.2f}")
    return run.max_rss_mb


def corpus_tar_sizes(sources: list[Path]) -> list[int]:
    """Uncompressed sizes of the gzip layers (ISIZE trailer; < 4 GiB each)."""
    import struct

    sizes = []
    for src in sources:
        with open(src, "rb") as f:
            f.seek(-4, os.SEEK_END)
            sizes.append(struct.unpack("<I", f.read(4))[0])
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    corpus.add_cache_args(parser)
    parser.add_argument("--runs", type=int, default=3, help="runs of our build (median time)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--engine", action="store_true",
                        help="also time our registry→registry conversion against upstream's local build")
    parser.add_argument("--engine-only", action="store_true", help="only the --engine comparison")
    parser.add_argument("--both", action="store_true",
                        help="also: output both from one pass vs a native and a TurboOCI run")
    parser.add_argument("--big-rss", action="store_true",
                        help="only: peak RSS of our registry→registry conversion of the 2 GB layer (gzip)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = corpus.build_corpus(args.cache_dir, quick=args.quick, big=args.big or args.big_rss)
    if args.big_rss:
        with tempfile.TemporaryDirectory(prefix="bench-turbo-", dir=args.workdir) as tmp:
            return 0 if big_layer_rss(data, Path(tmp)) <= 300 else 1
    sources = gzip_layers(data.layout)
    if args.engine_only:
        with tempfile.TemporaryDirectory(prefix="bench-turbo-", dir=args.workdir) as tmp:
            return 0 if engine_vs_upstream(data.layout, sources, Path(tmp), 1 if args.quick else args.runs) else 1
    with tempfile.TemporaryDirectory(prefix="bench-turbo-", dir=args.workdir) as tmp:
        out = Path(tmp)
        try:
            mine, mine_s, rss = ours(sources, out, 1 if args.quick else args.runs)
        except CommandFailed as exc:
            print(f"bench: our build failed: {exc}", file=sys.stderr)
            return 1
        theirs = upstream(sources, out)
    print(f"{'layer':<6} {'source B':>12} {'ours B':>10} {'upstream B':>11} {'ratio':>6} {'ours s':>7}")
    for i, src in enumerate(sources):
        up = theirs[0][i] if theirs else None
        ratio = f"{mine[i] / up:.3f}" if up else "-"
        print(f"{i + 1:<6} {src.stat().st_size:>12} {mine[i]:>10} {up or '-':>11} {ratio:>6} {mine_s[i]:>7.2f}")
    line = f"total  {sum(s.stat().st_size for s in sources):>12} {sum(mine):>10}"
    ok = True
    if theirs:
        total = sum(mine) / sum(theirs[0])
        ok = total <= SIZE_TARGET
        line += f" {sum(theirs[0]):>11} {total:>6.3f} {sum(mine_s):>7.2f}   (upstream build {theirs[1]:.2f} s)"
    print(line)
    print(f"our peak RSS {rss:.0f} MB; size target <= {SIZE_TARGET}x upstream: {'met' if ok else 'MISSED'}")
    if args.engine:
        with tempfile.TemporaryDirectory(prefix="bench-turbo-", dir=args.workdir) as tmp:
            ok = engine_vs_upstream(data.layout, sources, Path(tmp), 1 if args.quick else args.runs) and ok
    if args.both:
        with tempfile.TemporaryDirectory(prefix="bench-turbo-", dir=args.workdir) as tmp:
            both_vs_separate(data.layout, Path(tmp))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
