"""Converter benchmark (issue #7): ``overlaybd apply-layer`` per layer and ``overlaybd convert``
registry → registry, against the limit proxy and the project's targets.

    .venv/bin/python bench/convert.py [--runs N] [--quick] [--big] [--only apply|convert]

Cases (corpus: bench/corpus.py):
  a-mixed     ~300 MB, ~2 300 files, half random / half text          lz4|zstd x 4K|64K
  b-debian    3-layer Debian image, ~510 MB of tar, ~27 000 entries    (time = the 3 layers stacked)
  c-small     100 000 small files
  d-2GB       only with --big: lz4 4K, peak RSS
  registry    a local docker-registry (free port, temp storage): cold convert of b, the same again
              with the SQLite dedup DB (manifest-cache hit), and ``debian-alt`` (shares layers 1-2)
              against converting its last layer alone (``alt-top``, a one-layer image of that
              layer: same download, build and push) and against ``apply-layer`` of that layer on
              the converted lowers (no registry I/O: the floor).
              ``registry cold, stages`` converts b through the engine stages in one process, the
              path of the nightly DAG's stages (bench/stagesrun.py).
  layout      ``overlaybd convert oci:LAYOUT:debian oci:OUT`` (cold).

Every time is the median of ``--runs`` fresh processes (wall time, including the interpreter
start-up, printed below the table); peak RSS is the child's own ``ru_maxrss`` (``os.wait4``).
The machine has 2 cores shared with other work: numbers are noisy, rerun close calls.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import cases
import corpus
import requests
from apply import RSS_LIMIT_MB, add_run_args, measure, start
from measure import CommandFailed, MissingCommand, overlaybd_cli, require_subcommand, sample, startup_seconds
from registry import local_registry, push_layout
from report import MB, Row, format_table

log = logging.getLogger(__name__)

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def apply_section(rows: list[Row], data: corpus.Corpus, work: Path, runs: int, quick: bool,
                  block_sizes: list[int]) -> list | None:
    """The apply-layer matrix; returns the blobs of b-debian lz4 4K (lowers for the shared case)."""
    b_blobs = None
    by_key: dict[tuple[str, str, str], Row] = {}
    for case, layers in (("a-mixed", [data.mixed]), ("b-debian", list(data.debian)), ("c-small", [data.small])):
        for algorithm in ("lz4", "zstd"):
            for bs in block_sizes:
                blobs = measure(rows, case, layers, work, algorithm, bs, runs)
                by_key[(case, algorithm, f"{bs}K")] = rows[-1]
                if case == "b-debian" and algorithm == "lz4" and bs == 4:
                    b_blobs = blobs
    if data.big is not None:
        measure(rows, "d-2GB", [data.big], work, "lz4", 4, 1)
        rows[-1].check(f"peak RSS <= {RSS_LIMIT_MB} MB", (rows[-1].max_rss_mb or 1e9) <= RSS_LIMIT_MB)
    if not quick:
        add_apply_targets(by_key)
    return b_blobs


def add_apply_targets(by_key: dict[tuple[str, str, str], Row]) -> None:
    a = by_key.get(("a-mixed", "lz4", "4K"))
    if a is not None and a.seconds:
        a.check(">=180 MB/s", (a.mb_per_s or 0) >= 180)
        a.check("ours/proxy <=1.5", (a.proxy_ratio or 1e9) <= 1.5)
        ratio = (a.out_ratio or 0) / cases.UPSTREAM_RATIO
        a.check(f"out/tar within 2% of upstream {cases.UPSTREAM_RATIO:.3f} ({ratio - 1:+.1%})", abs(ratio - 1) <= 0.02)
    c = by_key.get(("c-small", "lz4", "4K"))
    if c is not None and c.seconds:
        c.check(">=10 000 files/s", (c.files_per_s or 0) >= 10_000)
    b = by_key.get(("b-debian", "lz4", "4K"))
    if b is not None and b.seconds:
        b.check("<=6 s", b.seconds <= 6)
    for (case, algorithm, bs), row in by_key.items():
        lz4 = by_key.get((case, "lz4", bs))
        if case == "b-debian" and algorithm == "zstd" and row.seconds and lz4 is not None and lz4.seconds \
                and row.bs == lz4.bs:
            row.check(f"<=2x lz4 ({row.seconds / lz4.seconds:.2f}x)", row.seconds <= 2 * lz4.seconds)


def _image_out_bytes(host: str, repo: str, tag: str) -> int | None:
    """Sum of the converted image's layer sizes, from its manifest in the registry."""
    resp = requests.get(f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}, timeout=30)
    if resp.status_code != 200:
        return None
    return sum(layer["size"] for layer in resp.json().get("layers", []))


def convert_section(rows: list[Row], data: corpus.Corpus, work: Path, runs: int, quick: bool,
                    convert_args: list[str], db_flag: str, b_blobs: list | None) -> None:
    """Registry → registry: cold, manifest-cache hit, shared-all-but-last vs last alone; layout → layout."""
    names = ("registry cold", "registry cache hit", "registry shared-all-but-last", "registry last layer alone",
             "registry cold, stages")
    try:
        require_subcommand("convert", db_flag)
    except MissingCommand as exc:
        for name in names:
            rows.append(Row(case=name, algo="lz4", bs="4K", note=cases.failure_note(exc)))
        return
    cli = [*overlaybd_cli(), "convert"]
    image_tar = sum(layer.tar_bytes for layer in data.debian)
    image_entries = sum(layer.entries for layer in data.debian)
    with local_registry(work) as host:
        push_layout(data.layout, "debian", f"{host}/bench/src:debian")
        push_layout(data.layout, "debian-alt", f"{host}/bench/src:debian-alt")
        push_layout(data.layout, "alt-top", f"{host}/bench/src:alt-top")
        src, src_alt, src_top = (f"{host}/bench/src:{tag}" for tag in ("debian", "debian-alt", "alt-top"))

        def db(i: int) -> str:
            return f"sqlite:///{work / f'dedup-{i}.sqlite'}"

        def dst(i: int, tag: str) -> str:
            return f"{host}/bench/out{i}:{tag}"

        def convert(source: str, i: int, tag: str) -> list[str]:
            return [*cli, source, dst(i, tag), db_flag, db(i), *convert_args]

        measured = []
        try:
            cold = sample(lambda i: [convert(src, i, "debian")], runs)
            hit = sample(lambda i: [convert(src, i, "debian")], runs)
            shared = sample(lambda i: [convert(src_alt, i, "debian-alt")], runs)
            top_alone = sample(lambda i: [convert(src_top, i, "alt-top")], runs)
            staged = sample(lambda i: [[sys.executable, str(Path(__file__).with_name("stagesrun.py")), src,
                                        f"{host}/bench/staged{i}:debian", f"sqlite:///{work / f'staged-{i}.sqlite'}"]],
                            runs)
            measured = [cold, hit, shared, top_alone, staged]
        except CommandFailed as exc:
            rows.extend(Row(case=name, algo="lz4", bs="4K", note=cases.failure_note(exc)) for name in names)
        if measured:
            cold, hit, shared, top_alone, staged = measured
            rows.append(Row("registry cold", "lz4", "4K", runs, cold.seconds, image_tar, image_entries,
                            cold.max_rss_mb, _image_out_bytes(host, "bench/out0", "debian"),
                            cpu_seconds=cold.cpu_seconds))
            rows.append(Row("registry cold, stages", "lz4", "4K", runs, staged.seconds, image_tar, image_entries,
                            staged.max_rss_mb, _image_out_bytes(host, "bench/staged0", "debian"),
                            cpu_seconds=staged.cpu_seconds, note="the nightly DAG's stage path (bench/stagesrun.py)"))
            row = Row("registry cache hit", "lz4", "4K", runs, hit.seconds, max_rss_mb=hit.max_rss_mb,
                      cpu_seconds=hit.cpu_seconds)
            if not quick:
                row.check("<=2 s", hit.seconds <= 2)
            rows.append(row)
            top = data.debian_alt_top
            row = Row("registry shared-all-but-last", "lz4", "4K", runs, shared.seconds, top.tar_bytes, top.entries,
                      shared.max_rss_mb, cpu_seconds=shared.cpu_seconds)
            rows.append(row)
            alone = Row("registry last layer alone", "lz4", "4K", runs, top_alone.seconds, top.tar_bytes, top.entries,
                        top_alone.max_rss_mb, _image_out_bytes(host, "bench/out0", "alt-top"),
                        cpu_seconds=top_alone.cpu_seconds, note="one-layer image of that layer, cold")
            rows.append(alone)
            if not quick and shared.seconds and top_alone.seconds:
                row.check(f"within 20% of last layer alone ({shared.seconds / top_alone.seconds - 1:+.0%})",
                          shared.seconds <= 1.2 * top_alone.seconds)
            alone_row(rows, data, work, runs, b_blobs)
    layout_row(rows, data, work, runs, cli, image_tar, image_entries)


def alone_row(rows: list[Row], data: corpus.Corpus, work: Path, runs: int, b_blobs: list | None) -> None:
    """``apply-layer`` of debian-alt's last layer on the converted lowers: the local floor (no
    download, no gzip, no push) under both registry rows above."""
    if not b_blobs:
        rows.append(Row("last layer alone (apply-layer)", "lz4", "4K", note="FAILED: no b-debian lz4 4K blobs"))
        return
    top = data.debian_alt_top
    out = work / "alone.blob"
    try:
        alone = sample(lambda _: [cases.apply_cmd(top, out, b_blobs[:2], "lz4", 4)], runs,
                       before=lambda _: out.unlink(missing_ok=True))
    except CommandFailed as exc:
        rows.append(Row("last layer alone (apply-layer)", "lz4", "4K", note=cases.failure_note(exc)))
        return
    rows.append(Row("last layer alone (apply-layer)", "lz4", "4K", runs, alone.seconds, top.tar_bytes, top.entries,
                    alone.max_rss_mb, out.stat().st_size, cpu_seconds=alone.cpu_seconds,
                    note="plain tar on local lowers: no registry I/O"))


def layout_row(rows: list[Row], data: corpus.Corpus, work: Path, runs: int, cli: list[str], image_tar: int,
               image_entries: int) -> None:
    out = work / "layout-out"

    def clean(_: int) -> None:
        if out.exists():
            shutil.rmtree(out)

    try:
        result = sample(lambda _: [[*cli, f"oci:{data.layout}:debian", f"oci:{out}:debian", "--db-url", "none"]], runs,
                        before=clean)
    except CommandFailed as exc:
        rows.append(Row("layout cold (oci: → oci:)", "lz4", "4K", note=cases.failure_note(exc)))
        return
    blobs = sum(p.stat().st_size for p in (out / "blobs").rglob("*") if p.is_file()) if out.exists() else None
    rows.append(Row("layout cold (oci: → oci:)", "lz4", "4K", runs, result.seconds, image_tar, image_entries,
                    result.max_rss_mb, blobs, cpu_seconds=result.cpu_seconds, note="out = all blobs of the output layout"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(parser)
    parser.add_argument("--only", choices=("apply", "convert"), default=None)
    parser.add_argument("--bs", default="4,64", help="block sizes in KiB for the apply matrix (comma list)")
    parser.add_argument("--convert-arg", action="append", default=None,
                        help="extra argument for `overlaybd convert` (repeat; default: --plain-http)")
    parser.add_argument("--db-flag", default="--db-url", help="option of `overlaybd convert` taking the DB URL")
    args = parser.parse_args(argv)
    convert_args = ["--plain-http"] if args.convert_arg is None else args.convert_arg
    started = start(args)
    if started is None:
        return 3
    runs, data = started
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-convert-", dir=args.workdir) as tmp:
        work = Path(tmp)
        b_blobs = None
        if args.only != "convert":
            sizes = [int(s) for s in args.bs.split(",")]
            b_blobs = apply_section(rows, data, work, runs, args.quick, sizes)
        if args.only != "apply":
            if b_blobs is None:
                _, b_blobs = cases.run_stack("b-debian", list(data.debian), work, algorithm="lz4", bs_kb=4, repeat=1)
            convert_section(rows, data, work, runs, args.quick, convert_args, args.db_flag, b_blobs)
    print(format_table(rows))
    print(f"(interpreter + import start-up of `overlaybd`: {startup_seconds():.2f} s, included in every time; "
          f"MB = {MB:,} bytes; upstream lz4 4K out/tar = {cases.UPSTREAM_RATIO:.3f})")
    if args.quick:
        print("(--quick: tiny corpus, 1 run; the targets apply to the full corpus and are not checked)")
    return 1 if any(r.note.startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
