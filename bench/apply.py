"""Apply throughput (issue #3): ``overlaybd apply-layer`` on a ~510 MB realistic layer and on
100 000 small files — MB/s of tar input, files/s, peak RSS, output size, against the limit proxy.

    .venv/bin/python bench/apply.py [--runs N] [--algorithm lz4|zstd] [--bs KB] [--quick] [--big]

The realistic layer is the 3-layer Debian image of bench/corpus.py merged into one layer.
Each figure is the median of ``--runs`` fresh ``overlaybd`` processes (wall time, including the
interpreter start-up, printed separately). The machine has 2 cores shared with other work:
expect some noise, rerun before trusting a close call.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import cases
import corpus
import measure as measure_mod
from measure import CommandFailed, MissingCommand, startup_seconds
from report import Row, format_table

RSS_LIMIT_MB = 300
log = logging.getLogger(__name__)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    corpus.add_cache_args(parser)
    parser.add_argument("--runs", type=int, default=3, help="runs per case (median); --quick forces 1")
    parser.add_argument("--workdir", type=Path, default=None, help="where outputs go (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="kill one command after this many seconds (default 1800; 120 with --quick)")


def start(args: argparse.Namespace) -> tuple[int, corpus.Corpus] | None:
    """The shared start of a bench: logging, timeouts, a working ``overlaybd apply-layer`` and the
    corpus. Returns (runs per case, corpus), or None (said why on stderr) when nothing can run."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    measure_mod.DEFAULT_TIMEOUT = args.timeout or (120.0 if args.quick else measure_mod.DEFAULT_TIMEOUT)
    try:
        cases.check_apply_layer()
    except MissingCommand as exc:
        print(f"bench: {exc}; nothing to measure", file=sys.stderr)
        return None
    return (1 if args.quick else args.runs), corpus.build_corpus(args.cache_dir, quick=args.quick, big=args.big)


def measure(rows: list[Row], case: str, layers, workdir: Path, algorithm: str, bs_kb: int, runs: int):
    """Appends the row of one case (or a FAILED row saying why); returns the blobs or None."""
    try:
        row, blobs = cases.run_stack(case, layers, workdir, algorithm=algorithm, bs_kb=bs_kb, repeat=runs)
    except (CommandFailed, MissingCommand) as exc:
        rows.append(cases.failed_row(case, algorithm, bs_kb, exc))
        log.info("bench: %s %s %dK: %s", case, algorithm, bs_kb, rows[-1].note)
        return None
    rows.append(row)
    log.info("bench: %s %s %s: %.2f s, %.1f MB/s, %.0f files/s, peak RSS %.0f MB, proxy %.2f s",
             case, algorithm, row.bs, row.seconds, row.mb_per_s or 0, row.files_per_s or 0, row.max_rss_mb or 0,
             row.proxy_seconds or 0)
    return blobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(parser)
    parser.add_argument("--algorithm", choices=("lz4", "zstd"), default="lz4")
    parser.add_argument("--bs", type=int, default=4, help="block size in KiB")
    args = parser.parse_args(argv)
    started = start(args)
    if started is None:
        return 3
    runs, data = started
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-apply-", dir=args.workdir) as tmp:
        work = Path(tmp)
        measure(rows, "realistic-1layer", [data.flat], work, args.algorithm, args.bs, runs)
        measure(rows, "c-100k-files", [data.small], work, args.algorithm, args.bs, runs)
        if data.big is not None:
            measure(rows, "d-2GB", [data.big], work, args.algorithm, args.bs, 1)
            rows[-1].check(f"peak RSS <= {RSS_LIMIT_MB} MB", (rows[-1].max_rss_mb or 1e9) <= RSS_LIMIT_MB)
    print(format_table(rows))
    print(f"(interpreter + import start-up of `overlaybd`: {startup_seconds():.2f} s, included in every time)")
    return 1 if any(r.note.startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
