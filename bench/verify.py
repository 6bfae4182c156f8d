"""``overlaybd verify`` next to ``overlaybd convert`` on the same images (issue #17).

For each image of the corpus (the 3-layer Debian image, the 100 000-file layer and, with --big, the
2 GB layer) the script converts it (``oci:`` → ``oci:``, no dedup, no blob cache), then verifies the
result twice: with e2fsck on the metadata export (the default) and with the structural checks only.
Each verify runs in a fresh interpreter that reports its own peak RSS (VmHWM, see
``tests/support/peakrss.py`` for why not ``ru_maxrss``); the target is <= 300 MB.

    .venv/bin/python bench/verify.py [--big] [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import corpus
from layertar import Layer
from measure import overlaybd_cli, run_once
from ocilayout import build_layout

RSS_LIMIT_MB = 300
MB = 1_000_000

CHILD = r"""
import json, sys
from overlaybd_provider.verify import VerifyOptions, verify_image
report = verify_image(sys.argv[1], sys.argv[2], VerifyOptions(fsck=sys.argv[4]))
p = report.platforms[0]
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
with open(sys.argv[3], "w") as out:
    json.dump({"summary": report.summary_line(), "identical": report.identical, "peak_rss_mb": hwm,
               "paths": p.stats["paths"], "bytes_hashed": p.stats["bytes_hashed"],
               "export_bytes": p.e2fsck.export_bytes if p.e2fsck else 0}, out)
sys.exit(report.exit_code)
"""


@dataclass
class Result:
    case: str
    tar_bytes: int
    entries: int
    convert_s: list[float] = field(default_factory=list)
    verify_s: list[float] = field(default_factory=list)
    verify_cpu_s: list[float] = field(default_factory=list)
    structural_s: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    export_mb: float = 0.0
    summary: str = ""
    identical: bool = True


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "-"


def measure(case: str, layers: tuple[Layer, ...], layout: Path, tag: str, work: Path, runs: int,
            timeout: float) -> Result:
    res = Result(case, sum(la.tar_bytes for la in layers), sum(la.entries for la in layers))
    src = f"oci:{layout}:{tag}"
    for i in range(runs):
        out = work / f"{case}-out"
        shutil.rmtree(out, ignore_errors=True)
        dst = f"oci:{out}:{tag}"
        conv = run_once([*overlaybd_cli(), "convert", src, dst, "--db-url", "none", "--blob-cache", "none"],
                        timeout=timeout)
        res.convert_s.append(conv.seconds)
        for fsck in ("auto", "never"):
            report = work / f"{case}-{i}-{fsck}.json"
            run = run_once([sys.executable, "-c", CHILD, src, dst, str(report), fsck], check=False, timeout=timeout)
            if run.returncode not in (0, 1):
                raise SystemExit(f"verify {case} failed ({run.returncode}):\n{run.stderr[-3000:]}")
            info = json.loads(report.read_text())
            res.peak_rss_mb = max(res.peak_rss_mb, info["peak_rss_mb"])
            res.summary, res.identical = info["summary"], res.identical and info["identical"]
            if fsck == "auto":
                res.verify_s.append(run.seconds)
                res.verify_cpu_s.append(run.cpu_seconds)
                res.export_mb = info["export_bytes"] / MB
            else:
                res.structural_s.append(run.seconds)
        print(f"[verify] {case} run {i + 1}: convert {conv.seconds:.1f}s, verify {res.verify_s[-1]:.1f}s "
              f"(structural only {res.structural_s[-1]:.1f}s), peak RSS {res.peak_rss_mb:.0f} MB", file=sys.stderr)
    return res


def table(results: list[Result]) -> str:
    head = ("case", "tar MB", "entries", "convert s", "verify s", "verify/convert", "verify cpu s",
            "structural-only s", "e2fsck export MB", "peak RSS MB", "result")
    rows = [head]
    for r in results:
        ratio = statistics.median(r.verify_s) / statistics.median(r.convert_s) if r.verify_s and r.convert_s else 0
        ok = "ok" if r.peak_rss_mb <= RSS_LIMIT_MB else "MISS"
        rows.append((r.case, f"{r.tar_bytes / MB:.0f}", str(r.entries), _median(r.convert_s), _median(r.verify_s),
                     f"{ratio:.2f}", _median(r.verify_cpu_s), _median(r.structural_s), f"{r.export_mb:.1f}",
                     f"{r.peak_rss_mb:.0f} ({ok} <= {RSS_LIMIT_MB})",
                     "identical" if r.identical else r.summary))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    corpus.add_cache_args(parser)
    parser.add_argument("--runs", type=int, default=1, help="conversions/verifications per image (median)")
    parser.add_argument("--workdir", type=Path, help="where converted images go (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per command")
    args = parser.parse_args(argv)
    data = corpus.build_corpus(args.cache_dir, quick=args.quick, big=args.big)
    images: dict[str, tuple[Layer, ...]] = {"small": (data.small,)}
    if data.big is not None:
        images["big"] = (data.big,)
    extra = build_layout(data.layout.parent / ("verify-layout-big" if data.big else "verify-layout"), images)
    cases = [("b-debian (3 layers)", data.debian, data.layout, "debian"),
             ("c-100k-files", images["small"], extra, "small")]
    if data.big is not None:
        cases.append(("d-2GB-layer", images["big"], extra, "big"))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-verify-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = [measure(case, layers, layout, tag, work, args.runs, args.timeout)
                   for case, layers, layout, tag in cases]
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    print("(times: wall seconds of fresh processes, median of --runs; verify = structural checks + tree comparison "
          "+ e2fsck -fn on the metadata export; peak RSS = VmHWM of the verify process)")
    return 0 if all(r.identical and r.peak_rss_mb <= RSS_LIMIT_MB for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
